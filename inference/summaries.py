"""Summaries of posteriors tabulated on a shared grid: pure functions on arrays (jax.numpy, jit-friendly).

``pdf`` is (N, G), normalised per row with the trapezoid rule on ``grid`` (G,), e.g. log10 M200c [Msun/h]; every
summary is in the grid's units.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

QUANTILES = (0.025, 0.16, 0.5, 0.84, 0.975)


def cdf(grid: jax.Array, pdf: jax.Array) -> jax.Array:
    """Cumulative trapezoid integral, (N, G), from 0 at grid[0] to 1 at grid[-1] (renormalised)."""
    dx = jnp.diff(grid)
    steps = 0.5 * (pdf[:, 1:] + pdf[:, :-1]) * dx
    c = jnp.concatenate([jnp.zeros_like(pdf[:, :1]), jnp.cumsum(steps, axis=1)], axis=1)
    return c / jnp.maximum(c[:, -1:], 1e-30)


def quantiles(grid: jax.Array, pdf: jax.Array, qs: tuple[float, ...] = QUANTILES) -> jax.Array:
    """Quantiles (N, Q) by inverting the piecewise-linear CDF."""
    c = cdf(grid, pdf)

    def one(row: jax.Array) -> jax.Array:
        return jnp.interp(jnp.asarray(qs, dtype=row.dtype), row, grid)

    # CDF rows are non-decreasing; flat stretches (zero density) are handled by interp picking the first point
    return jax.vmap(one)(c)


def mean_std(grid: jax.Array, pdf: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior mean and standard deviation (trapezoid rule)."""
    norm = jnp.trapezoid(pdf, grid, axis=1)
    mean = jnp.trapezoid(pdf * grid, grid, axis=1) / norm
    var = jnp.trapezoid(pdf * (grid[None, :] - mean[:, None]) ** 2, grid, axis=1) / norm
    return mean, jnp.sqrt(jnp.maximum(var, 0.0))


def mode(grid: jax.Array, pdf: jax.Array) -> jax.Array:
    """The maximum, refined by a parabola through the highest grid point and its neighbours (uniform grid)."""
    g = grid.shape[0]
    i = jnp.clip(jnp.argmax(pdf, axis=1), 1, g - 2)
    rows = jnp.arange(pdf.shape[0])
    y0, y1, y2 = pdf[rows, i - 1], pdf[rows, i], pdf[rows, i + 1]
    denom = y0 - 2 * y1 + y2
    shift = jnp.where(denom < 0, 0.5 * (y0 - y2) / jnp.where(denom < 0, denom, -1.0), 0.0)
    step = grid[1] - grid[0]
    at_edge = (jnp.argmax(pdf, axis=1) == 0) | (jnp.argmax(pdf, axis=1) == g - 1)
    return jnp.where(at_edge, grid[jnp.argmax(pdf, axis=1)], grid[i] + jnp.clip(shift, -0.5, 0.5) * step)


def pit(grid: jax.Array, pdf: jax.Array, truth: jax.Array) -> jax.Array:
    """Probability integral transform: the posterior CDF at the true value, (N,)."""
    c = cdf(grid, pdf)
    return jax.vmap(lambda row, t: jnp.interp(t, grid, row))(c, truth)

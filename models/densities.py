"""Log densities of the network outputs, in standardised target units (pure functions, jit-friendly).

The MDN density is TensorFlow Probability's ``MixtureSameFamily(Categorical, Normal)`` on its JAX substrate;
the flow's is :func:`models.flow.flow_log_prob`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from tensorflow_probability.substrates import jax as tfp

from models.networks import MixtureParams
from models.spec import ModelSpec

tfd = tfp.distributions


def mixture(p: MixtureParams) -> tfd.Distribution:
    """The MDN's predictive distribution per row, a TFP ``MixtureSameFamily``."""
    return tfd.MixtureSameFamily(tfd.Categorical(logits=p.logits), tfd.Normal(loc=p.means, scale=p.scales))


def log_prob(spec: ModelSpec, out: Any, y: jax.Array) -> jax.Array:
    """log q(y | x) per row for network output ``out`` and standardised targets ``y`` (B,)."""
    if spec.kind == "mdn":
        return mixture(out).log_prob(y)
    if spec.kind == "flow":
        from models.flow import flow_log_prob

        return flow_log_prob(out, y, bound=spec.bound)
    raise ValueError(f"a '{spec.kind}' model has no density")


def log_prob_grid(spec: ModelSpec, out: Any, grid: jax.Array) -> jax.Array:
    """log q(grid_j | x_i) for every row and grid point: (B, G), standardised units."""
    if spec.kind == "mdn":
        z = (grid[None, :, None] - out.means[:, None, :]) / out.scales[:, None, :]
        comp = -0.5 * z * z - jnp.log(out.scales[:, None, :]) - 0.5 * jnp.log(2 * jnp.pi)
        logw = jax.nn.log_softmax(out.logits, axis=-1)[:, None, :]
        return jax.nn.logsumexp(comp + logw, axis=-1)
    if spec.kind == "flow":
        from models.flow import flow_log_prob_grid

        return flow_log_prob_grid(out, grid, bound=spec.bound)
    raise ValueError(f"a '{spec.kind}' model has no density")

"""Posteriors on a log10 M200c grid with the interim-prior correction.

The network was trained on NLL, so it learned q(M | x) ∝ p_train(M) p(x | M), the posterior under the training
set's own mass distribution. For a target prior:

    p(M | x) ∝ q(M | x) p_target(M) / p_train(M)            (normalised on the grid)

Edge rule: p_train (a KDE of the training labels) falls towards zero at the edges of the training range, where
the ratio would blow up on noise. It is floored at ``P_TRAIN_FLOOR`` (1e-3) times its maximum before dividing, so
the correction is at most a factor 1000 and adds no NaN or inf; everything is computed in log space and each row is
shifted by its maximum before exponentiating.

Rows that are not posteriors are never passed off as ones (:func:`posterior_flags`, bits of
:data:`inference.diagnostics.FLAGS`): a network log density that is NaN or +inf anywhere on the grid (a bug or a
corrupt model) gives a NaN pdf and NaN summaries, flag ``INVALID_OUTPUT``; a corrected log density that is -inf
everywhere (no probability on the grid) gives a flat pdf, flag ``NO_SUPPORT``.

Units: log10 M200c in dex of Msun/h; densities per dex.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from inference import summaries
from inference.diagnostics import FLAGS
from inference.priors import TargetPrior, resolve
from models.model import TrainedModel, grid_density
from models.set_batches import SetData
from models.set_model import TrainedSetModel, set_grid_density
from pipeline.snapshot import Snapshot

P_TRAIN_FLOOR = 1e-3
#: points of the posterior grid, spanning the training range of log10 M200c (~2 dex: 0.008 dex spacing, a tenth
#: of the narrowest posterior widths). The grid evaluation of the flow's spline dominates the catalogs' cost; 512
#: points took twice as long, and on 3000 default-run clusters the quantiles, mean and std moved by < 0.005 dex
#: (the mode of a flat or two-peaked posterior can jump between near-equal peaks either way)
GRID_POINTS = 256
#: summaries of the corrected posterior, in catalog order
SUMMARY_NAMES = ("mode", "median", "mean", "std", "p16", "p84", "p025", "p975")
#: summaries of the uncorrected network posterior (under the training set's own mass distribution)
UNCORRECTED_NAMES = ("uncorrected_mode", "uncorrected_mean")
#: every summary and the name it has in catalogs (columns) and in `clustermass query --json` (keys)
SUMMARY_COLUMNS = {name: f"log10_m200c_{name}" for name in SUMMARY_NAMES + UNCORRECTED_NAMES}


def default_grid(model: DensityModel, n: int = GRID_POINTS) -> np.ndarray:
    """``n`` points spanning the training range of log10 M200c (the interim prior's support)."""
    g = np.asarray(model.training_prior.grid)
    return np.linspace(g[0], g[-1], n)


def p_train_on(model: DensityModel, grid: np.ndarray) -> np.ndarray:
    return model.training_prior(np.asarray(grid))


def log_prior_ratio(p_train: np.ndarray, prior: TargetPrior) -> np.ndarray:
    """log p_target - log max(p_train, floor * max p_train), on the grid (G,)."""
    p = np.asarray(p_train, dtype=np.float64)
    floor = P_TRAIN_FLOOR * float(np.max(p)) if np.max(p) > 0 else 1e-300
    return np.asarray(prior.log_density, dtype=np.float64) - np.log(np.maximum(p, floor))


def _invalid(log_p: jax.Array) -> jax.Array:
    """Rows (B,) holding a NaN or +inf log density: not a density at all."""
    return jnp.any(jnp.isnan(log_p) | (log_p == jnp.inf), axis=1)


@jax.jit
def normalise(log_p: jax.Array, grid: jax.Array) -> jax.Array:
    """exp(log_p) normalised per row on the grid. A row holding NaN or +inf is NaN throughout; a row that is -inf
    everywhere (no probability on the grid) is flat (:func:`posterior_flags` flags both)."""
    invalid = _invalid(log_p)[:, None]
    top = jnp.max(jnp.where(invalid, 0.0, log_p), axis=1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    p = jnp.exp(jnp.where(jnp.isfinite(log_p), log_p - top, -jnp.inf))
    norm = jnp.trapezoid(p, grid, axis=1)[:, None]
    flat = jnp.ones_like(p) / (grid[-1] - grid[0])
    return jnp.where(invalid, jnp.nan, jnp.where(norm > 0, p / jnp.where(norm > 0, norm, 1.0), flat))


@jax.jit
def posterior_flags(log_q: jax.Array, log_p: jax.Array) -> jax.Array:
    """Flag bits (B,) int32 of rows that are not posteriors: ``INVALID_OUTPUT`` where the network's log density
    ``log_q`` (B, G) is NaN or +inf anywhere, else ``NO_SUPPORT`` where the corrected ``log_p`` is -inf everywhere."""
    invalid = _invalid(log_q) | _invalid(log_p)
    empty = jnp.all(log_p == -jnp.inf, axis=1) & ~invalid
    return (jnp.where(invalid, FLAGS["INVALID_OUTPUT"], 0) | jnp.where(empty, FLAGS["NO_SUPPORT"], 0)).astype(
        jnp.int32)


@partial(jax.jit, static_argnames=())
def posterior_block(log_q: jax.Array, log_ratio: jax.Array, grid: jax.Array) -> dict[str, jax.Array]:
    """Corrected and uncorrected posteriors of a block and their summaries.

    ``log_q``: (B, G) network log densities; ``log_ratio``: (G,) from :func:`log_prior_ratio`.
    Returns ``pdf`` (B, G) corrected, ``raw_pdf`` (B, G) uncorrected, the corrected summaries
    (:data:`SUMMARY_NAMES`; the mode is the highest density inside the central 95% interval),
    ``uncorrected_mode``, ``uncorrected_mean`` and ``flags`` (:func:`posterior_flags`); every pdf and summary of an
    ``INVALID_OUTPUT`` row is NaN.
    """
    log_p = log_q + log_ratio[None, :]
    flags = posterior_flags(log_q, log_p)
    pdf = normalise(log_p, grid)
    raw = normalise(log_q, grid)
    q = summaries.quantiles(grid, pdf, (0.025, 0.16, 0.5, 0.84, 0.975))
    mean, std = summaries.mean_std(grid, pdf)
    raw_mean, _ = summaries.mean_std(grid, raw)
    # the mode is the highest density inside the central 95% interval, so it always lies within it (a density
    # piled against the grid's edge could otherwise peak outside its own interval)
    inside = (grid[None, :] >= q[:, :1]) & (grid[None, :] <= q[:, 4:5])
    values = {
        "mode": jnp.clip(summaries.mode(grid, jnp.where(inside, pdf, 0.0)), q[:, 0], q[:, 4]),
        "median": q[:, 2],
        "mean": mean,
        "std": std,
        "p16": q[:, 1],
        "p84": q[:, 3],
        "p025": q[:, 0],
        "p975": q[:, 4],
        "uncorrected_mode": summaries.mode(grid, raw),
        "uncorrected_mean": raw_mean,
    }
    invalid = (flags & FLAGS["INVALID_OUTPUT"]) != 0  # a mode of NaN would otherwise read as the grid's first point
    return {"pdf": pdf, "raw_pdf": raw, "flags": flags,
            **{name: jnp.where(invalid, jnp.nan, value) for name, value in values.items()}}


@dataclass(frozen=True)
class PosteriorBlock:
    """Rows ``start:start + len`` of the posteriors: ``pdf`` (b, G) and summaries (b,), numpy float32; ``flags``
    (b,) int32, the rows that are not posteriors (:func:`posterior_flags`); ``raw_pdf`` (b, G), the uncorrected
    posterior, when asked for."""

    start: int
    pdf: np.ndarray
    values: dict[str, np.ndarray]
    flags: np.ndarray
    raw_pdf: np.ndarray | None = None


def _workers() -> int:
    """Blocks evaluated at once: XLA runs each block's fused loops on one core, so blocks go side by side, one per
    core this process may use (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


#: a density model of either family: summary features (:class:`models.model.TrainedModel`) or member sets
#: (:class:`models.set_model.TrainedSetModel`)
DensityModel = TrainedModel | TrainedSetModel
#: what a density model reads: feature rows (N, F) of a feature model, the member sets of a set model
#: (:func:`models.set_model.set_data`)
ModelInputs = np.ndarray | SetData


def model_density(model: DensityModel, grid: np.ndarray) -> Any:
    """The block-wise ``log q(grid | inputs)`` per dex of either model family (:func:`models.model.grid_density`,
    :func:`models.set_model.set_grid_density`)."""
    if isinstance(model, TrainedSetModel):
        return set_grid_density(model, grid)
    return grid_density(model, grid)


def iter_posteriors(model: DensityModel, x: ModelInputs, grid: np.ndarray, prior: TargetPrior, *,
                    chunk: int = 1024, with_raw: bool = False) -> Iterator[PosteriorBlock]:
    """Posteriors of the inputs ``x`` under ``prior``, block by block, in order: raw feature rows (N, F) of a
    feature model, or the member sets (:class:`~models.set_batches.SetData`) of a set model.

    Every network of the predictive mixture runs once per row (:func:`model_density`); blocks of ``chunk`` rows
    (feature rows: the last padded, so one shape compiles; sets are padded in size buckets by the set model) are
    evaluated on a few threads at once (one per usable core). Each block's numbers do not depend on how many run at
    once. Memory: a few blocks. With ``with_raw`` each block also carries the uncorrected posterior.
    """
    ratio = jnp.asarray(log_prior_ratio(p_train_on(model, grid), prior), dtype=jnp.float32)
    g = jnp.asarray(grid, dtype=jnp.float32)
    density = model_density(model, grid)
    n = len(x)

    def block(start: int) -> PosteriorBlock:
        xb = x[start:start + chunk]
        xb = xb if isinstance(xb, SetData) else np.asarray(xb)
        rows = len(xb)
        if rows < chunk and n > chunk and not isinstance(xb, SetData):
            xb = np.pad(xb, ((0, chunk - rows), (0, 0)))
        out = posterior_block(density(xb), ratio, g)
        values = {k: np.asarray(v[:rows], dtype=np.float32) for k, v in out.items()
                  if k not in ("pdf", "raw_pdf", "flags")}
        raw = np.asarray(out["raw_pdf"][:rows], dtype=np.float32) if with_raw else None
        return PosteriorBlock(start, np.asarray(out["pdf"][:rows], dtype=np.float32), values,
                              np.asarray(out["flags"][:rows], dtype=np.int32), raw)

    starts = range(0, n, chunk)
    workers = min(_workers(), len(starts))
    if workers <= 1:
        yield from map(block, starts)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[PosteriorBlock]] = deque()
        for start in starts:
            pending.append(pool.submit(block, start))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def posteriors(model: DensityModel, x: ModelInputs, grid: np.ndarray, prior: TargetPrior, *,
               chunk: int = 1024) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All posteriors in memory: pdf (N, G) and summaries (N,) — for modest N; use :func:`iter_posteriors` else."""
    pdf, values, _ = posteriors_with_raw(model, x, grid, prior, chunk=chunk)
    return pdf, values


def posteriors_with_raw(model: DensityModel, x: ModelInputs, grid: np.ndarray, prior: TargetPrior, *,
                        chunk: int = 1024) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """:func:`posteriors` and the uncorrected pdf (N, G), from one pass of the network."""
    pdfs, vals, raws = [], [], []
    for block in iter_posteriors(model, x, grid, prior, chunk=chunk, with_raw=True):
        pdfs.append(block.pdf)
        vals.append(block.values)
        raws.append(block.raw_pdf)
    if not pdfs:
        empty = np.empty((0, len(grid)), np.float32)
        return empty, {}, empty
    return (np.concatenate(pdfs), {k: np.concatenate([v[k] for v in vals]) for k in vals[0]},
            np.concatenate(raws))


@dataclass(frozen=True)
class PosteriorSetup:
    """What turns a model's output into corrected posteriors: its grid [log10 Msun/h] and the target prior.

    Made by :func:`prepare`; the one entry point used by catalogs, validation and ``clustermass query``.
    """

    model: DensityModel
    grid: np.ndarray
    target: TargetPrior

    @property
    def p_train(self) -> np.ndarray:
        """The interim prior (the training set's KDE) on the grid, per dex."""
        return p_train_on(self.model, self.grid)

    def blocks(self, x: ModelInputs, *, chunk: int = 1024) -> Iterator[PosteriorBlock]:
        """Posteriors of raw feature rows ``x`` (N, F), block by block (see :func:`iter_posteriors`)."""
        return iter_posteriors(self.model, x, self.grid, self.target, chunk=chunk)

    def evaluate_with_raw(self, x: ModelInputs, *, chunk: int = 1024
                          ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """:meth:`evaluate` and the uncorrected pdf (N, G), from one pass of the network."""
        return posteriors_with_raw(self.model, x, self.grid, self.target, chunk=chunk)

    def evaluate(self, x: ModelInputs, *, chunk: int = 1024) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """All posteriors of ``x`` in memory: pdf (N, G) and summaries (N,) (see :func:`posteriors`)."""
        return posteriors(self.model, x, self.grid, self.target, chunk=chunk)


def prepare(model: DensityModel, prior: str, *, snapshot: Snapshot | None) -> PosteriorSetup:
    """The posterior set-up of ``model`` under the target prior named ``prior``.

    ``prior``: ``flat``, ``tinker08`` (needs ``snapshot``: redshift and cosmology), ``training`` (no correction)
    or a two-column table file (:func:`inference.priors.resolve`). The grid is :func:`default_grid`.
    """
    grid = default_grid(model)
    return PosteriorSetup(model, grid, resolve(prior, grid, p_train=p_train_on(model, grid), snapshot=snapshot))


def summary_columns(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Summaries by their catalog/JSON names (:data:`SUMMARY_COLUMNS`), in catalog order."""
    return {column: values[name] for name, column in SUMMARY_COLUMNS.items()}

"""A trained model: the networks of an ensemble plus everything needed to use them on raw features.

``train_model(...) -> (TrainedModel, histories)`` splits the data by host (no host in both training and validation),
standardises features and target with training-split statistics only, estimates the interim prior p_train, and
trains ``train.ensemble`` members from different seeds and data orders.

Predictions are in log10 M200c [Msun/h]: :func:`log_prob_grid` gives log q(M | x) on a grid for every observation
(the equal-weight mixture over the networks of :func:`weight_sets`: ensemble members, dropout masks or weight draws).

Epistemic uncertainty, ``TrainSpec.epistemic``: ``"ensemble"`` (default, 3 members: they capture epistemic
uncertainty better than MC dropout at equal cost in benchmarks, Lakshminarayanan et al. 2017; Ovadia et al. 2019,
need no change to the network and keep each member's aleatoric density exact), ``"mc_dropout"`` (``dropout > 0``,
``mc_samples`` passes) or ``"bayes_by_backprop"`` (one mean-field Gaussian variational network,
:mod:`models.bayes`, ``weight_draws`` draws at prediction). The README compares the three.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from models import densities
from models.bayes import fit_bayes_by_backprop, predictive_members
from models.networks import Network
from models.prior import TrainingPrior
from models.spec import History, ModelSpec, Standardizer, TrainSpec
from models.training import fit

TARGET = "log10_m200c_true"
TARGET_UNIT = "dex(Msun/h)"


@dataclass(frozen=True)
class TrainedModel:
    spec: ModelSpec
    train: TrainSpec
    feature_names: tuple[str, ...]
    x_scaler: Standardizer
    y_scaler: Standardizer
    members: tuple[Any, ...]
    training_prior: TrainingPrior
    data_digest: str
    split: dict[str, int]

    @property
    def y_mean(self) -> float:
        return self.y_scaler.mean[0]

    @property
    def y_std(self) -> float:
        return self.y_scaler.std[0]


def host_split(cluster_id: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: a random ``fraction`` of hosts, every line of sight of a host together."""
    hosts = np.unique(cluster_id)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5A,)))
    n_val = max(1, round(fraction * len(hosts)))
    val_hosts = rng.choice(hosts, size=n_val, replace=False)
    return np.isin(cluster_id, val_hosts)


def data_digest(x: np.ndarray, y: np.ndarray, cluster_id: np.ndarray, names: Sequence[str]) -> str:
    """SHA-256 of the training data (features, labels, hosts, feature names)."""
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32),
                np.ascontiguousarray(cluster_id, np.int64)):
        h.update(arr.tobytes())
    h.update("\x00".join(names).encode())
    return h.hexdigest()


def train_model(
    x: np.ndarray,
    y: np.ndarray,
    cluster_id: np.ndarray,
    *,
    feature_names: Sequence[str],
    spec: ModelSpec,
    train: TrainSpec,
    progress: Callable[[int, int, float, float], None] | None = None,
) -> tuple[TrainedModel, list[History]]:
    """Train an ensemble on raw features ``x`` (N, F), labels ``y`` = log10 M200c (N,), hosts ``cluster_id`` (N,).

    ``progress(member, epoch, train_loss, val_loss)`` is called after every epoch.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cluster_id = np.asarray(cluster_id)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or y.shape != cluster_id.shape or x.shape[1] != len(feature_names):
        raise ValueError(f"train_model: expected x (N, {len(feature_names)}), y (N,), cluster_id (N,); got "
                         f"{x.shape}, {y.shape}, {cluster_id.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        bad = sorted({feature_names[j] for j in np.flatnonzero(~np.isfinite(x).all(axis=0))})
        raise ValueError(f"train_model: expected finite features and labels; non-finite values in {bad or ['y']}")
    val = host_split(cluster_id, train.validation_fraction, train.seed)
    tr = ~val
    x_scaler = Standardizer.fit(x[tr])
    y_scaler = Standardizer.fit(y[tr])
    xs, ys = x_scaler.transform(x), y_scaler.transform(y)
    members, histories = [], []
    for k in range(train.ensemble):
        cb = None if progress is None else partial(progress, k)
        trainer = fit_bayes_by_backprop if train.epistemic == "bayes_by_backprop" else fit
        params, hist = trainer(spec, x_train=xs[tr], y_train=ys[tr], x_val=xs[val], y_val=ys[val], train=train,
                               seed=train.seed + 1000 * k, progress=cb)
        members.append(jax.device_get(params))
        histories.append(hist)
    model = TrainedModel(
        spec=spec, train=train, feature_names=tuple(feature_names), x_scaler=x_scaler, y_scaler=y_scaler,
        members=tuple(members), training_prior=TrainingPrior.estimate(y[tr]),
        data_digest=data_digest(x, y, cluster_id, feature_names),
        split={"train_rows": int(tr.sum()), "val_rows": int(val.sum()),
               "train_hosts": len(np.unique(cluster_id[tr])), "val_hosts": len(np.unique(cluster_id[val]))},
    )
    return model, histories


# -- predictions ----------------------------------------------------------------------------------------------------
@partial(jax.jit, static_argnames=("spec", "deterministic"))
def _apply(params: Any, x: jax.Array, key: jax.Array, *, spec: ModelSpec, deterministic: bool) -> Any:
    rngs = None if deterministic else {"dropout": key}
    return Network(spec).apply({"params": params}, x, deterministic=deterministic, rngs=rngs)


def _passes(model: TrainedModel) -> int:
    return model.train.mc_samples if model.spec.dropout > 0 else 1


@dataclass(frozen=True)
class WeightSets:
    """The networks whose equal-weight mixture is the predictive density, stacked on a leading axis of length D.

    ``params``: every leaf (D, ...); ``keys``: (D, 2) dropout keys (unused when ``deterministic``). An ensemble of
    M members gives D = M; MC dropout with P passes gives D = M x P (each member's parameters repeated, one dropout
    key per pass, the same masks for every block of rows); Bayes by Backprop gives D = ``weight_draws`` draws from
    the variational posterior (:func:`models.bayes.predictive_members`: fixed by the training seed, the draws its
    early stopping scored).
    """

    params: Any
    keys: jax.Array
    deterministic: bool

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])


def weight_sets(model: TrainedModel, *, seed: int = 0) -> WeightSets:
    """The stacked weight sets of ``model``'s predictive mixture (see :class:`WeightSets`)."""
    passes = _passes(model)
    draws = [params for params in predictive_members(model.members, model.train) for _ in range(passes)]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack([jnp.asarray(a) for a in leaves]), *draws)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(draws))
    return WeightSets(stacked, keys, deterministic=passes == 1)


@partial(jax.jit, static_argnames=("spec", "deterministic"))
def _mixture_log_q(params: Any, keys: jax.Array, xs: jax.Array, grid_std: jax.Array, log_norm: jax.Array, *,
                   spec: ModelSpec, deterministic: bool) -> jax.Array:
    """log of the equal-weight mixture over the D stacked networks on the grid, per dex: (B, G)."""

    per_draw = []
    for d in range(keys.shape[0]):  # unrolled: XLA's CPU backend runs a vmapped (batched) version 3x slower
        rngs = None if deterministic else {"dropout": keys[d]}
        p = jax.tree_util.tree_map(lambda a, d=d: a[d], params)
        out = Network(spec).apply({"params": p}, xs, deterministic=deterministic, rngs=rngs)
        per_draw.append(densities.log_prob_grid(spec, out, grid_std))
    return jax.nn.logsumexp(jnp.stack(per_draw), axis=0) - log_norm


@dataclass(frozen=True)
class GridDensity:
    """``log q(log10 M = grid_j | x_i)`` per dex of a density model, ready to evaluate block after block.

    Made by :func:`grid_density`. Calling it on raw features (B, F) runs every network of the predictive mixture
    once per row (one compiled function for all of them; the mixture or spline is then evaluated on the grid) and
    returns a (B, G) float32 JAX array, left on the device so that later steps fuse without a host round trip.
    """

    model: TrainedModel
    weights: WeightSets
    grid_std: jax.Array
    log_norm: jax.Array

    def __call__(self, x: np.ndarray) -> jax.Array:
        xs = jnp.asarray(self.model.x_scaler.transform(np.asarray(x)))
        return _mixture_log_q(self.weights.params, self.weights.keys, xs, self.grid_std, self.log_norm,
                              spec=self.model.spec, deterministic=self.weights.deterministic)


def grid_density(model: TrainedModel, grid: np.ndarray, *, seed: int = 0) -> GridDensity:
    """The :class:`GridDensity` of ``model`` on ``grid`` (log10 M200c [Msun/h], (G,))."""
    if not model.spec.is_density:
        raise ValueError(f"a '{model.spec.kind}' model predicts points, not densities")
    weights = weight_sets(model, seed=seed)
    grid_std = jnp.asarray((np.asarray(grid, dtype=np.float64) - model.y_mean) / model.y_std, dtype=jnp.float32)
    log_norm = jnp.asarray(np.log(weights.size) + np.log(model.y_std), dtype=jnp.float32)
    return GridDensity(model, weights, grid_std, log_norm)


def log_prob_grid(model: TrainedModel, x: np.ndarray, grid: np.ndarray, *, chunk: int = 1024,
                  seed: int = 0) -> np.ndarray:
    """log q(log10 M = grid_j | x_i), per dex, for raw features ``x`` (N, F): an (N, G) float32 array.

    Chunks have a fixed size (the last is padded) so each shape compiles once.
    """
    density = grid_density(model, grid, seed=seed)
    n = len(x)
    out = np.empty((n, len(grid)), dtype=np.float32)
    for start in range(0, n, chunk):
        xb = np.asarray(x[start:start + chunk])
        pad = chunk - len(xb) if n > chunk else 0
        xb = np.pad(xb, ((0, pad), (0, 0))) if pad else xb
        out[start:start + chunk] = np.asarray(density(xb))[: len(xb) - pad]
    return out


@partial(jax.jit, static_argnames=("spec", "deterministic"))
def _draw_means(params: Any, keys: jax.Array, xs: jax.Array, grid_std: jax.Array, *, spec: ModelSpec,
                deterministic: bool) -> jax.Array:
    """Mean of each stacked network's density on the grid, standardised units: (D, B)."""
    means = []
    for d in range(keys.shape[0]):
        rngs = None if deterministic else {"dropout": keys[d]}
        p = jax.tree_util.tree_map(lambda a, d=d: a[d], params)
        out = Network(spec).apply({"params": p}, xs, deterministic=deterministic, rngs=rngs)
        w = jax.nn.softmax(densities.log_prob_grid(spec, out, grid_std), axis=1)  # uniform grid: weights
        means.append(w @ grid_std)
    return jnp.stack(means)


def epistemic_spread(model: TrainedModel, x: np.ndarray, grid: np.ndarray, *, chunk: int = 1024,
                     seed: int = 0) -> np.ndarray:
    """Epistemic spread per row of raw features ``x`` (N, F): the standard deviation, across the networks of the
    predictive mixture (ensemble members, dropout masks or weight draws; :func:`weight_sets`), of each network's
    own mean of log10 M200c on ``grid`` (uniformly spaced), in dex. Zero for a single deterministic network.

    The aleatoric width is what every network agrees on; this is how much they disagree, which grows where the
    training data gave them nothing to agree on (inputs unlike any training observation).
    """
    if not model.spec.is_density:
        raise ValueError(f"a '{model.spec.kind}' model predicts points, not densities")
    weights = weight_sets(model, seed=seed)
    grid_std = jnp.asarray((np.asarray(grid, dtype=np.float64) - model.y_mean) / model.y_std, dtype=jnp.float32)
    xs = model.x_scaler.transform(np.asarray(x))
    out = np.empty(len(xs), dtype=np.float64)
    for start in range(0, len(xs), chunk):
        xb = xs[start:start + chunk]
        rows = len(xb)
        xb = np.pad(xb, ((0, chunk - rows), (0, 0))) if rows < chunk and len(xs) > chunk else xb
        means = _draw_means(weights.params, weights.keys, jnp.asarray(xb), grid_std, spec=model.spec,
                            deterministic=weights.deterministic)
        out[start:start + rows] = np.asarray(means, dtype=np.float64)[:, :rows].std(axis=0) * model.y_std
    return out


def log_prob(model: TrainedModel, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """log q(y_i | x_i) per dex for raw features and labels log10 M200c: (N,)."""
    xs = jnp.asarray(model.x_scaler.transform(np.asarray(x)))
    ys = jnp.asarray(model.y_scaler.transform(np.asarray(y)))
    weights = weight_sets(model, seed=seed)
    acc = None
    for d in range(weights.size):
        params = jax.tree_util.tree_map(lambda a, d=d: a[d], weights.params)
        o = _apply(params, xs, weights.keys[d], spec=model.spec, deterministic=weights.deterministic)
        lp = densities.log_prob(model.spec, o, ys)
        acc = lp if acc is None else jnp.logaddexp(acc, lp)
    return np.asarray(acc) - np.log(weights.size) - np.log(model.y_std)


def predict_point(model: TrainedModel, x: np.ndarray) -> np.ndarray:
    """The MSE baseline's prediction, log10 M200c [Msun/h] (mean over ensemble members)."""
    if model.spec.kind != "mse":
        raise ValueError("predict_point is for the 'mse' regression baseline")
    xs = jnp.asarray(model.x_scaler.transform(np.asarray(x)))
    preds = [np.asarray(_apply(p, xs, jax.random.PRNGKey(0), spec=model.spec, deterministic=True))
             for p in model.members]
    return np.mean(preds, axis=0) * model.y_std + model.y_mean

"""A trained set model: an ensemble of set networks (:mod:`models.set_encoder`) plus everything needed to use them
on an observation's members.

``train_set_model(members, y, cluster_id, feature_set=..., spec=..., set_spec=..., train=...) -> (model, histories)``
splits the observations by host exactly as :func:`models.model.train_model` does (no host in both training and
validation; same seed, so the feature flow and the set model of one run early-stop on the same hosts), standardises
the context and the target with training-split statistics only, estimates the interim prior p_train (a KDE of the
training log10 M200c, as for the feature models) and trains ``train.ensemble`` networks from different seeds.

Inputs per observation (:func:`set_data`): its members' scaled ``r_proj``, ``v_los`` and, for the ``full`` set,
``log10_mstar`` (:data:`models.set_batches.MEMBER_INPUTS`), and a context row: ``log10 n`` (the member count, which
is information for the ``full`` set's complete samples; never for ``dynamics``) and, with
``target = "msigma_residual"``, the M-sigma law's estimate from the members' own dispersion.

Targets (:data:`TARGETS`): ``"mass"`` — log10 M200c [Msun/h] directly; ``"msigma_residual"`` — log10 M200c minus
the M-sigma law (:mod:`models.msigma`, fitted on the training hosts) evaluated on the members' ddof-1 velocity
dispersion, the target of Wang, Thiele & Ho (2026, arXiv:2606.12938). Either way the model's density is over log10
M200c: a residual density is shifted back by each observation's M-sigma estimate, and since the training
observations' masses were drawn from the training set's distribution, q(M | set) is the posterior under p_train in
both cases, so the interim-prior correction of :mod:`inference.posterior` applies unchanged.

The ``dynamics`` set model is trained on randomly thinned lists, drawn afresh every epoch by the training stage's
rule (:func:`models.set_batches.thin_sets`, ``[train] members_kept``: a kept count independent of mass), and
validated on lists thinned once; it sees no member count.

Epistemic uncertainty: a deep ensemble (``train.epistemic = "ensemble"``); the predictive density is the
equal-weight mixture of the networks (:func:`set_grid_density`). MC dropout and Bayes by Backprop are not offered
for set models (refused by the configuration).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from features.members import Members
from features.sets import FEATURE_SETS
from models.model import host_split
from models.msigma import MSigmaFit
from models.prior import TrainingPrior
from models.set_batches import MEMBER_INPUTS, MEMBER_SCALES, SetData, thin_sets
from models.set_encoder import SetSpec, set_log_prob_grid
from models.set_training import fit_set
from models.spec import History, ModelSpec, Standardizer, TrainSpec

#: the kind of a set model (``[train] models``, ``model.json``'s ``kind``, its directory ``model/set``)
SET_KIND = "set"
#: what a set model learns: log10 M200c itself, or its residual to the M-sigma law
TARGETS = ("mass", "msigma_residual")
#: feature sets a set model can be trained on (the members a list gives)
SET_FEATURE_SETS = tuple(MEMBER_INPUTS)
#: spawn key of the stream that thins the validation lists of a dynamics set model once
_VAL_THIN_STREAM = 0x5E73
#: range of an M-sigma estimate [log10 Msun/h]: a dispersion of a few members can be wild; the estimate is clipped
#: to a range wider than any training or grid mass, so it only ever shifts a density, never leaves it undefined
MSIGMA_CLIP = (12.0, 16.5)


@dataclass(frozen=True)
class TrainedSetModel:
    """An ensemble of set networks and what turns members into their inputs and outputs into log10 M200c.

    spec : the trunk and density head (``kind`` ``flow`` or ``mdn``); set_spec : the encoder (inputs, phi, pooling,
    cap); feature_set : ``full`` or ``dynamics``; target : one of :data:`TARGETS`; msigma : the M-sigma law of
    the residual target (None for ``mass``); context_names : the context columns in order; ctx_scaler : their
    standardisation (None when there are none); y_scaler : the target's [dex]; members : parameters of each network;
    training_prior : p_train over log10 M200c; feature_names : the feature set's summary features, used only by the
    diagnostics (``ood_score`` from the training observations' typicality), never by the networks.
    """

    spec: ModelSpec
    set_spec: SetSpec
    train: TrainSpec
    feature_set: str
    target: str
    msigma: MSigmaFit | None
    context_names: tuple[str, ...]
    ctx_scaler: Standardizer | None
    y_scaler: Standardizer
    members: tuple[Any, ...]
    training_prior: TrainingPrior
    data_digest: str
    split: dict[str, int]

    def __post_init__(self) -> None:
        if self.feature_set not in SET_FEATURE_SETS:
            raise ValueError(f"set model: feature_set must be one of {list(SET_FEATURE_SETS)}, got "
                             f"'{self.feature_set}'")
        if self.target not in TARGETS:
            raise ValueError(f"set model: target must be one of {list(TARGETS)}, got '{self.target}'")
        if (self.target == "msigma_residual") != (self.msigma is not None):
            raise ValueError("set model: an M-sigma law is needed exactly when the target is 'msigma_residual'")
        if self.context_names != context_names(self.feature_set, self.target):
            raise ValueError(f"set model: context columns {list(self.context_names)} are not those of "
                             f"'{self.feature_set}' / '{self.target}'")
        if tuple(self.set_spec.inputs) != MEMBER_INPUTS[self.feature_set]:
            raise ValueError(f"set model: the '{self.feature_set}' set reads {list(MEMBER_INPUTS[self.feature_set])},"
                             f" got inputs {list(self.set_spec.inputs)}")

    @property
    def kind(self) -> str:
        return SET_KIND

    @property
    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_SETS[self.feature_set]

    @property
    def y_mean(self) -> float:
        return self.y_scaler.mean[0]

    @property
    def y_std(self) -> float:
        return self.y_scaler.std[0]


def context_names(feature_set: str, target: str) -> tuple[str, ...]:
    """The context columns of a set model: ``log10_n_members`` for the ``full`` set (complete samples: the count is
    information), ``log10_m200c_msigma`` for the residual target."""
    return ((("log10_n_members",) if feature_set == "full" else ())
            + (("log10_m200c_msigma",) if target == "msigma_residual" else ()))


def msigma_estimate(msigma: MSigmaFit, data: SetData) -> np.ndarray:
    """The M-sigma law on each set's ddof-1 line-of-sight velocity dispersion [km/s] (as ``sigma_v_std``),
    log10 M200c [Msun/h] (N,), clipped to :data:`MSIGMA_CLIP`; the law's intercept (its pivot dispersion) for a set
    of fewer than two members."""
    col = list(MEMBER_INPUTS["dynamics"]).index("v_los")  # every set reads v_los in this column
    centre, scale = MEMBER_SCALES["v_los"]
    v = data.inputs[:, col].astype(np.float64) * scale + centre
    n = data.counts
    starts = data.offsets[:-1]
    sums = np.zeros((2, data.n_obs))
    if len(v):
        nonempty = n > 0
        sums[0, nonempty] = np.add.reduceat(v, starts[nonempty])
        sums[1, nonempty] = np.add.reduceat(v * v, starts[nonempty])
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = np.sqrt(np.maximum(sums[1] - sums[0] ** 2 / n, 0.0) / (n - 1))
    m = msigma.predict(np.where(n >= 2, sigma, msigma.pivot))
    return np.clip(np.where(np.isfinite(m), m, msigma.intercept), *MSIGMA_CLIP)


def raw_context(feature_set: str, target: str, msigma: MSigmaFit | None, data: SetData,
                counts: np.ndarray | None = None) -> np.ndarray:
    """The unstandardised context (N, F) of :func:`context_names`: log10 of the member count ``counts`` (default
    the sets' own; the ``full`` set's context counts every member even where the set was capped) and the M-sigma
    estimate [log10 Msun/h]."""
    cols = []
    if feature_set == "full":
        n = data.counts if counts is None else np.asarray(counts)
        cols.append(np.log10(np.maximum(n, 1)).astype(np.float64))
    if target == "msigma_residual":
        assert msigma is not None
        cols.append(msigma_estimate(msigma, data))
    return np.column_stack(cols) if cols else np.zeros((data.n_obs, 0))


def _offsets(model_target: str, msigma: MSigmaFit | None, data: SetData) -> np.ndarray:
    """The per-set shift of the target [log10 Msun/h]: the M-sigma estimate for the residual target, else 0."""
    return msigma_estimate(msigma, data) if model_target == "msigma_residual" and msigma else np.zeros(data.n_obs)


def _with_inputs(data: SetData, feature_set: str, target: str, msigma: MSigmaFit | None,
                 ctx_scaler: Standardizer | None, y_scaler: Standardizer, log10_m: np.ndarray | None) -> SetData:
    """``data`` with its standardised context and (when ``log10_m`` is given) standardised target."""
    raw = raw_context(feature_set, target, msigma, data)
    ctx = ctx_scaler.transform(raw) if ctx_scaler is not None else raw.astype(np.float32)
    if log10_m is None:
        y = np.zeros(data.n_obs, np.float32)
    else:
        t = np.asarray(log10_m, np.float64) - _offsets(target, msigma, data)
        y = ((t - y_scaler.mean[0]) / y_scaler.std[0]).astype(np.float32)
    return replace(data, context=np.asarray(ctx, np.float32).reshape(data.n_obs, -1), y=y)


def set_data(model: TrainedSetModel, members: Members) -> SetData:
    """The inputs of ``model`` for every observation of ``members`` (targets zero): what
    :func:`set_grid_density` reads."""
    data = SetData.build(members, model.set_spec.inputs)
    return _with_inputs(data, model.feature_set, model.target, model.msigma, model.ctx_scaler, model.y_scaler, None)


def members_from_arrays(offsets: np.ndarray, r_proj: np.ndarray, v_los: np.ndarray,
                        log10_mstar: np.ndarray | None = None) -> Members:
    """:class:`features.members.Members` of member lists given as ragged arrays (``r_proj`` [Mpc/h, comoving],
    ``v_los`` [km/s], ``log10_mstar`` [log10 Msun], NaN or None where unknown: a ``dynamics`` model reads none)."""
    n = len(r_proj)
    mstar = np.zeros(n, np.float32) if log10_mstar is None else np.nan_to_num(np.asarray(log10_mstar, np.float32))
    return Members(np.asarray(offsets, np.int64), np.asarray(r_proj, np.float32), np.asarray(v_los, np.float32),
                   mstar, np.zeros(n, np.int64), np.zeros(n, bool))


def train_set_model(
    members: Members,
    y: np.ndarray,
    cluster_id: np.ndarray,
    *,
    feature_set: str,
    spec: ModelSpec,
    set_spec: SetSpec,
    train: TrainSpec,
    target: str = "mass",
    msigma: MSigmaFit | None = None,
    members_kept: tuple[float, float] | None = None,
    progress: Callable[[int, int, float, float], None] | None = None,
) -> tuple[TrainedSetModel, list[History]]:
    """Train an ensemble of set networks on the observations of ``members`` (N sets), labels ``y`` = log10 M200c
    [Msun/h] (N,), hosts ``cluster_id`` (N,).

    ``feature_set``: ``full`` (complete lists) or ``dynamics`` (thinned afresh every epoch by ``members_kept`` =
    (lo, hi), required); ``target``: one of :data:`TARGETS` (``msigma`` required for the residual);
    ``progress(member, epoch, train_loss, val_loss)`` after every epoch.
    """
    y = np.asarray(y, np.float64)
    cluster_id = np.asarray(cluster_id)
    if members.n_obs != len(y) or y.shape != cluster_id.shape:
        raise ValueError(f"train_set_model: expected {members.n_obs} labels and hosts, got {y.shape}, "
                         f"{cluster_id.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("train_set_model: expected finite labels")
    if feature_set == "dynamics" and members_kept is None:
        raise ValueError("train_set_model: the dynamics set model is trained on thinned lists: give members_kept")
    if target == "msigma_residual" and msigma is None:
        raise ValueError("train_set_model: the residual target needs the M-sigma law (msigma)")
    msigma = msigma if target == "msigma_residual" else None
    if tuple(set_spec.inputs) != MEMBER_INPUTS[feature_set]:
        set_spec = replace(set_spec, inputs=MEMBER_INPUTS[feature_set])
    val = host_split(cluster_id, train.validation_fraction, train.seed)
    tr = ~val
    data = SetData.build(members, set_spec.inputs)
    if feature_set == "dynamics":  # the validation lists thinned once, the training lists every epoch
        val_rng = np.random.default_rng(np.random.SeedSequence(train.seed, spawn_key=(_VAL_THIN_STREAM,)))
        val_data = thin_sets(data.take(val), members_kept, val_rng)
    else:
        val_data = data.take(val)
    train_data = data.take(tr)
    # statistics of the training split only (on complete lists: the context's scale, the target's)
    t_train = y[tr] - _offsets(target, msigma, train_data)
    raw = raw_context(feature_set, target, msigma, train_data)
    ctx_scaler = Standardizer.fit(raw) if raw.shape[1] else None
    y_scaler = Standardizer.fit(t_train)
    prepare = partial(_with_inputs, feature_set=feature_set, target=target, msigma=msigma, ctx_scaler=ctx_scaler,
                      y_scaler=y_scaler)
    train_ready = prepare(train_data, log10_m=y[tr])
    val_ready = prepare(val_data, log10_m=y[val])
    augment = None
    if feature_set == "dynamics":
        y_tr = y[tr]

        def augment(d: SetData, rng: np.random.Generator) -> SetData:
            return prepare(thin_sets(d, members_kept, rng), log10_m=y_tr)

    nets, histories = [], []
    for k in range(train.ensemble):
        cb = None if progress is None else partial(progress, k)
        params, hist = fit_set(spec, set_spec, train_data=train_ready, val_data=val_ready, train=train,
                               seed=train.seed + 1000 * k, augment=augment, progress=cb)
        nets.append(jax.device_get(params))
        histories.append(hist)
    digest = members_digest(data, y, cluster_id, feature_set)
    model = TrainedSetModel(
        spec=spec, set_spec=set_spec, train=train, feature_set=feature_set, target=target, msigma=msigma,
        context_names=context_names(feature_set, target), ctx_scaler=ctx_scaler, y_scaler=y_scaler,
        members=tuple(nets), training_prior=TrainingPrior.estimate(y[tr]), data_digest=digest,
        split={"train_rows": int(tr.sum()), "val_rows": int(val.sum()),
               "train_hosts": len(np.unique(cluster_id[tr])), "val_hosts": len(np.unique(cluster_id[val]))},
    )
    return model, histories


def members_digest(data: SetData, y: np.ndarray, cluster_id: np.ndarray, feature_set: str) -> str:
    """SHA-256 of the training data of a set model: every member input and set boundary, the labels, the hosts and
    the feature set (the ``training_data_sha256`` of its model.json and catalogs)."""
    h = hashlib.sha256(f"set:{feature_set}".encode())
    for arr in (np.ascontiguousarray(data.offsets, np.int64), np.ascontiguousarray(data.inputs, np.float32),
                np.ascontiguousarray(y, np.float32), np.ascontiguousarray(cluster_id, np.int64)):
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SetGridDensity:
    """``log q(log10 M = grid_j | set_i)`` per dex of a set model, block after block (the set models' counterpart
    of :class:`models.model.GridDensity`). Calling it on a :class:`~models.set_batches.SetData` of B observations
    (from :func:`set_data`) returns a (B, G) float32 JAX array."""

    model: TrainedSetModel
    grid: np.ndarray

    def __call__(self, data: SetData) -> jax.Array:
        m = self.model
        grid_std = (np.asarray(self.grid, np.float64) - m.y_mean) / m.y_std
        offset = _offsets(m.target, m.msigma, data) / m.y_std
        lp = set_log_prob_grid(m.spec, m.set_spec, m.members, data, grid_std, offset_std=offset)
        return jnp.asarray(lp) - jnp.float32(np.log(m.y_std))


def set_grid_density(model: TrainedSetModel, grid: np.ndarray) -> SetGridDensity:
    """The :class:`SetGridDensity` of ``model`` on ``grid`` (log10 M200c [Msun/h], (G,))."""
    if not model.spec.is_density:
        raise ValueError(f"a '{model.spec.kind}' set model predicts points, not densities")
    return SetGridDensity(model, np.asarray(grid, np.float64))


def set_log_prob_per_dex(model: TrainedSetModel, members: Members, grid: np.ndarray) -> np.ndarray:
    """log q(grid_j | set_i) per dex for every observation of ``members``: (N, G) float32."""
    return np.asarray(set_grid_density(model, grid)(set_data(model, members)))

"""The training stage's configuration section ``[train]``: which models, their architecture and optimisation.

Architecture and optimisation defaults come from :class:`models.spec.ModelSpec` and :class:`models.spec.TrainSpec`;
:meth:`TrainSection.specs` turns the flat section into those specs, :meth:`TrainSection.set_spec` the set model's
encoder (:class:`models.set_encoder.SetSpec`, imported only when asked for: reading a configuration imports no jax).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distributions, version
from typing import Any

from features.definitions import FEATURE_NAMES
from features.sets import FEATURE_SETS
from models.set_batches import DEFAULT_CAP
from models.spec import EPISTEMIC, MODEL_KINDS, ModelSpec, TrainSpec
from pipeline.config import check_choice, check_number, default
from pipeline.determinism import backend_started, configure_determinism
from pipeline.errors import ConfigError

#: the models a default run trains on CPU (the M-sigma power law is always fitted too); the MDN is available
#: (``models = ["mdn", "flow", "mse"]``) but left out of the default run, which must stay under 5 minutes on 2 cores;
#: so is the set model (``"set"``, ``configs/set.toml``), whose networks train 10-25x slower per epoch on CPU
DEFAULT_MODELS = ("flow", "mse")
#: the default when JAX's default backend is a GPU (:func:`gpu_backend`): the set model too (issue 19.3)
GPU_DEFAULT_MODELS = ("flow", "mse", "set")
#: the set model's kind (:data:`models.set_model.SET_KIND`)
SET = "set"
#: poolings and targets of the set model (:data:`models.set_encoder.POOLINGS`, :data:`models.set_model.TARGETS`;
#: named here so that reading a configuration imports no jax; tests/test_config_validation.py checks they agree)
SET_POOLINGS = ("mean", "moments", "attention")
SET_TARGETS = ("mass", "msigma_residual")
#: the set model's optimisation (an epoch of member sets is ~15x the feature flow's on CPU, and its validation loss
#: still fell at 30 epochs in bench/bench_set.py): epochs at most, early-stopping patience, sets per minibatch
SET_MAX_EPOCHS = 60
SET_PATIENCE = 8
SET_BATCH_SIZE = 512


def gpu_backend() -> bool:
    """Whether JAX's default backend is a GPU. Answered without importing jax where it cannot be one: when
    ``JAX_PLATFORMS`` names no GPU platform, or when no GPU build of JAX is installed (a ``jax-cuda*`` or
    ``jax-rocm*`` plugin, or a CUDA jaxlib); otherwise jax is asked, which starts its backends: the CPU pool is
    fixed first (:func:`pipeline.determinism.configure_determinism`, as every process that computes does before
    its first computation), since a configuration may be read before (the CLI reads the section's defaults when
    it is imported)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms and not any(p in platforms for p in ("cuda", "gpu", "rocm")):
        return False
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in distributions()}
    try:
        cuda_jaxlib = "cuda" in version("jaxlib")
    except PackageNotFoundError:
        cuda_jaxlib = False
    if not cuda_jaxlib and not any(n.startswith(("jax-cuda", "jax-rocm")) for n in names):
        return False
    if not backend_started():
        configure_determinism()
    import jax

    return jax.default_backend() == "gpu"


def default_models() -> tuple[str, ...]:
    """``[train] models`` when the configuration does not say: :data:`GPU_DEFAULT_MODELS` when JAX's default
    backend is a GPU, else :data:`DEFAULT_MODELS`. The section holds the resolved list, so the run's configuration
    (its digest, ``run.json``, the train stage's key) records which was chosen."""
    return GPU_DEFAULT_MODELS if gpu_backend() else DEFAULT_MODELS
#: feature sets trained by default: the full set and the dynamics-only set (features.sets)
DEFAULT_FEATURE_SETS = ("full", "dynamics")
#: members kept per observation of the thinned (dynamics) training set (the number of measured redshifts): a target
#: count is drawn log-uniformly in this range, independently of mass, and each member is kept with probability
#: target / n (all members when n <= target), so the kept count is binomial around the target. A completeness
#: fraction drawn per observation (30-100%) was tried first: richer clusters then still kept more members, the
#: network read mass from the sample size, and at 40% completeness the held-out modes were 0.10 dex low (README,
#: "Real clusters")
DEFAULT_MEMBERS_KEPT = (5.0, 150.0)
#: fraction of hosts held out of training for validation and the catalog (all their lines of sight)
DEFAULT_TEST_FRACTION = 0.25
#: upper bounds of the sizes a section may ask for: beyond them a typo would exhaust memory or time, not fail
LIMITS = {"layers": 64, "width": 65536, "n_components": 1024, "n_bins": 1024, "ensemble": 100, "mc_samples": 10_000,
          "batch_size": 1 << 24, "epochs": 1_000_000, "weight_draws": 10_000, "members": 100_000}


@dataclass(frozen=True)
class TrainSection:
    """``[train]``.

    models : some of ``mdn``, ``flow``, ``mse``, ``set`` (default :func:`default_models`: ``flow`` and ``mse``, and
    ``set`` when JAX's default backend is a GPU); feature_sets : ``full`` plus any of ``richness``, ``dynamics``
    (:mod:`features.sets`; density models only for the smaller sets); members_kept : [lo, hi] of the number of
    members kept per observation of the dynamics set (a target drawn log-uniformly, independent of mass; each member
    kept with probability target / n; :data:`DEFAULT_MEMBERS_KEPT`), whose training rows need
    ``min_members_thinned`` members after thinning; features : feature names of the full set (empty: every feature
    of the observation table); test_fraction : hosts held out (never seen in training); reuse : a trained model
    directory (a run's ``model/``) to use instead of training. The rest are :class:`ModelSpec` (hidden,
    n_components, n_bins, dropout) and :class:`TrainSpec` (ensemble, mc_samples, batch_size, max_epochs, patience,
    learning_rate, weight_decay, seed) fields; baseline_ensemble : members of the ``mse`` regression baseline (a
    point estimate has no use for an ensemble's spread; one member keeps the default run under 5 minutes).
    epistemic : ``"ensemble"`` (default), ``"mc_dropout"`` (requires dropout > 0 and mc_samples > 1) or
    ``"bayes_by_backprop"`` (one variational network, :mod:`models.bayes`; ``ensemble`` is ignored, dropout must be
    0) with prior_scale, weight_draws and posterior_init_std (:class:`TrainSpec`). It applies to the density models;
    the ``mse`` baseline is always a plain ensemble of ``baseline_ensemble`` members.

    The set model (``"set"`` in models, :mod:`models.set_model`: every member's inputs through a Deep Sets encoder
    conditioning the same trunk and flow head, ``hidden`` and ``n_bins``; an ensemble of ``ensemble`` networks,
    so epistemic must be ``"ensemble"``) is trained for the ``full`` set (complete lists) and, when configured, the
    ``dynamics`` set (lists thinned afresh every epoch by ``members_kept``). Its keys: set_pooling : ``mean``,
    ``moments`` (default: the mean, std and max of every per-member feature) or ``attention``; set_phi : widths of
    the per-member network (default (64, 64); a multiple of 4 last for attention's 4 heads); set_cap : members per
    observation above which a random subsample is kept (default :data:`models.set_batches.DEFAULT_CAP`);
    set_target : ``mass`` (default: log10 M200c) or ``msigma_residual`` (its residual to the M-sigma law fitted on
    the training hosts, the target of Wang, Thiele & Ho 2026); set_max_epochs, set_patience, set_batch_size : its
    optimisation (:data:`SET_MAX_EPOCHS`, :data:`SET_PATIENCE`, :data:`SET_BATCH_SIZE`: an epoch of padded member
    sets costs many feature-flow epochs; learning_rate, weight_decay and seed are shared).

    Every key is checked here, on its own (types, ranges, known names; sizes bounded by :data:`LIMITS`, rates and
    scales finite and positive, seed a 32-bit integer) and against the others (min_members_thinned <= members_kept's
    hi; the epistemic method's needs), so that no bad value reaches training.
    """

    models: tuple[str, ...] = field(default_factory=default_models)
    feature_sets: tuple[str, ...] = DEFAULT_FEATURE_SETS
    members_kept: tuple[float, ...] = DEFAULT_MEMBERS_KEPT
    min_members_thinned: int = 5
    features: tuple[str, ...] = ()
    test_fraction: float = DEFAULT_TEST_FRACTION
    hidden: tuple[int, ...] = default(ModelSpec, "hidden")
    n_components: int = default(ModelSpec, "n_components")
    n_bins: int = default(ModelSpec, "n_bins")
    dropout: float = default(ModelSpec, "dropout")
    ensemble: int = default(TrainSpec, "ensemble")
    baseline_ensemble: int = 1
    mc_samples: int = default(TrainSpec, "mc_samples")
    batch_size: int = default(TrainSpec, "batch_size")
    max_epochs: int = default(TrainSpec, "max_epochs")
    patience: int = default(TrainSpec, "patience")
    learning_rate: float = default(TrainSpec, "learning_rate")
    weight_decay: float = default(TrainSpec, "weight_decay")
    seed: int = default(TrainSpec, "seed")
    epistemic: str = default(TrainSpec, "epistemic")
    prior_scale: float = default(TrainSpec, "prior_scale")
    weight_draws: int = default(TrainSpec, "weight_draws")
    posterior_init_std: float = default(TrainSpec, "posterior_init_std")
    set_pooling: str = "moments"
    set_phi: tuple[int, ...] = (64, 64)
    set_cap: int = DEFAULT_CAP
    set_target: str = SET_TARGETS[0]
    set_max_epochs: int = SET_MAX_EPOCHS
    set_patience: int = SET_PATIENCE
    set_batch_size: int = SET_BATCH_SIZE
    reuse: str = ""

    def __post_init__(self) -> None:
        for key in ("models", "feature_sets", "features", "hidden", "set_phi"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        object.__setattr__(self, "members_kept", tuple(self.members_kept))
        _check_names("models", self.models, MODEL_KINDS, empty_ok=False)
        _check_names("feature_sets", self.feature_sets, tuple(FEATURE_SETS), empty_ok=False)
        if "full" not in self.feature_sets:
            raise ConfigError(f"expected 'full' among the feature sets, got {list(self.feature_sets)}",
                              key="feature_sets")
        lo_hi = self.members_kept
        if not (len(lo_hi) == 2 and all(isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c)
                                        for c in lo_hi) and 3.0 <= lo_hi[0] <= lo_hi[1] <= LIMITS["members"]):
            raise ConfigError(f"expected [lo, hi] members with 3 <= lo <= hi <= {LIMITS['members']}, got "
                              f"{list(lo_hi)}", key="members_kept")
        object.__setattr__(self, "members_kept", tuple(float(c) for c in lo_hi))
        check_number("min_members_thinned", self.min_members_thinned, low=3, high=int(self.members_kept[1]),
                     integer=True)
        _check_names("features", self.features, FEATURE_NAMES, empty_ok=True)
        check_number("test_fraction", self.test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        _check_widths("hidden", self.hidden)
        check_number("n_components", self.n_components, low=1, high=LIMITS["n_components"], integer=True)
        check_number("n_bins", self.n_bins, low=2, high=LIMITS["n_bins"], integer=True)
        check_number("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        for key in ("ensemble", "baseline_ensemble"):
            check_number(key, getattr(self, key), low=1, high=LIMITS["ensemble"], integer=True)
        check_number("mc_samples", self.mc_samples, low=1, high=LIMITS["mc_samples"], integer=True)
        check_number("batch_size", self.batch_size, low=1, high=LIMITS["batch_size"], integer=True)
        for key in ("max_epochs", "patience"):
            check_number(key, getattr(self, key), low=1, high=LIMITS["epochs"], integer=True)
        check_number("learning_rate", self.learning_rate, low=0.0, high=1.0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0.0, high=1.0)
        check_number("seed", self.seed, low=0, high=2**32 - 1, integer=True)
        check_choice("epistemic", self.epistemic, EPISTEMIC)
        check_number("prior_scale", self.prior_scale, low=0.0, high=1e3, low_open=True)
        check_number("weight_draws", self.weight_draws, low=1, high=LIMITS["weight_draws"], integer=True)
        check_number("posterior_init_std", self.posterior_init_std, low=0.0, high=10.0, low_open=True)
        if self.epistemic == "mc_dropout" and not (self.dropout > 0 and self.mc_samples > 1):
            raise ConfigError(f"epistemic = 'mc_dropout' requires dropout > 0 and mc_samples > 1 (dropout masks "
                              f"averaged at prediction), got dropout = {self.dropout}, mc_samples = {self.mc_samples}")
        if self.epistemic == "bayes_by_backprop" and self.dropout > 0:
            raise ConfigError(f"epistemic = 'bayes_by_backprop' averages over weight draws, not dropout masks: set "
                              f"dropout = 0, got {self.dropout}")
        self._check_set_keys()
        for kind in self.models:  # the specs' own checks, before anything trains
            self.specs(kind)

    def _check_set_keys(self) -> None:
        """The set model's keys, on their own and against ``models`` and ``epistemic``."""
        check_choice("set_pooling", self.set_pooling, SET_POOLINGS)
        _check_widths("set_phi", self.set_phi)
        check_number("set_cap", self.set_cap, low=1, high=LIMITS["members"], integer=True, unit="members")
        check_choice("set_target", self.set_target, SET_TARGETS)
        check_number("set_max_epochs", self.set_max_epochs, low=1, high=LIMITS["epochs"], integer=True)
        check_number("set_patience", self.set_patience, low=1, high=LIMITS["epochs"], integer=True)
        check_number("set_batch_size", self.set_batch_size, low=1, high=LIMITS["batch_size"], integer=True)
        if SET not in self.models:
            return
        if self.epistemic != "ensemble":
            raise ConfigError(f"the set model ('set' in models) is a deep ensemble: expected epistemic = 'ensemble', "
                              f"got {self.epistemic!r}", key="epistemic")
        try:
            self.set_spec()
        except ConfigError as exc:  # the encoder's own checks (e.g. attention heads dividing the last width)
            raise ConfigError(exc.message.removeprefix("set model: "), key="set_phi") from None

    @property
    def test_seed(self) -> int:
        """Seed of the held-out host split (offset from ``seed`` so it is not the weights' stream)."""
        return self.seed + 7919

    def specs(self, kind: str) -> tuple[ModelSpec, TrainSpec]:
        """The :class:`ModelSpec` and :class:`TrainSpec` of model ``kind`` under this section; for ``"set"`` its
        trunk and flow head (``hidden``, ``n_bins``) and its own optimisation (``set_max_epochs``...)."""
        is_set = kind == SET
        spec = ModelSpec(kind="flow" if is_set else kind, hidden=self.hidden, n_components=self.n_components,
                         n_bins=self.n_bins, dropout=self.dropout)
        train = TrainSpec(ensemble=self.baseline_ensemble if kind == "mse" else self.ensemble,
                          mc_samples=self.mc_samples, batch_size=self.set_batch_size if is_set else self.batch_size,
                          max_epochs=self.set_max_epochs if is_set else self.max_epochs,
                          patience=self.set_patience if is_set else self.patience, learning_rate=self.learning_rate,
                          weight_decay=self.weight_decay, seed=self.seed,
                          epistemic="ensemble" if kind in ("mse", SET) else self.epistemic,
                          prior_scale=self.prior_scale, weight_draws=self.weight_draws,
                          posterior_init_std=self.posterior_init_std)
        return spec, train

    def set_spec(self, feature_set: str = "full") -> Any:
        """The set model's encoder (:class:`models.set_encoder.SetSpec`) for ``feature_set`` (its member inputs,
        :data:`models.set_batches.MEMBER_INPUTS`) under this section."""
        from models.set_batches import MEMBER_INPUTS
        from models.set_encoder import SetSpec

        return SetSpec(inputs=MEMBER_INPUTS[feature_set], phi=self.set_phi, pooling=self.set_pooling,
                       cap=self.set_cap)


def _check_widths(key: str, widths: tuple) -> None:
    """Refuse a list of layer widths ``key`` that is empty, longer than :data:`LIMITS` allows, or holds a width that
    is not an integer in [1, LIMITS["width"]] (the message names the width and the list)."""
    if not 1 <= len(widths) <= LIMITS["layers"]:
        raise ConfigError(f"expected 1 to {LIMITS['layers']} layer widths, got {list(widths)}", key=key)
    for width in widths:
        try:
            check_number(key, width, low=1, high=LIMITS["width"], integer=True)
        except ConfigError as exc:
            raise ConfigError(f"{exc.message.replace('got', 'got a width of', 1)} in {list(widths)}",
                              key=key) from None


def _check_names(key: str, values: tuple, known: tuple, *, empty_ok: bool) -> None:
    """Refuse unknown or repeated names in the list ``key`` (and an empty list unless ``empty_ok``)."""
    unknown = [v for v in values if v not in known]
    repeated = sorted({v for v in values if values.count(v) > 1})
    if unknown or repeated or (not values and not empty_ok):
        got = f"unknown {unknown}" if unknown else f"repeated {repeated}" if repeated else "an empty list"
        expected = "distinct names from" if empty_ok else "one or more distinct names from"
        raise ConfigError(f"expected {expected} {list(known)}, got {got}", key=key)

"""The training stage's configuration section ``[train]``: which models, their architecture and optimisation.

Architecture and optimisation defaults come from :class:`models.spec.ModelSpec` and :class:`models.spec.TrainSpec`;
:meth:`TrainSection.specs` turns the flat section into those specs.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.sets import FEATURE_SETS
from models.spec import EPISTEMIC, KINDS, ModelSpec, TrainSpec
from pipeline.config import default
from pipeline.errors import ConfigError

#: the models a default run trains (the M-sigma power law is always fitted too); the MDN is available
#: (``models = ["mdn", "flow", "mse"]``) but left out of the default run, which must stay under 5 minutes on 2 cores
DEFAULT_MODELS = ("flow", "mse")
#: feature sets trained by default: the full set and the dynamics-only set (features.sets)
DEFAULT_FEATURE_SETS = ("full", "dynamics")
#: number of redshifts per observation of the thinned (dynamics) training set: drawn log-uniformly in this range,
#: independently of mass (all members when fewer). A completeness fraction drawn per observation (30-100%) was tried
#: first: richer clusters then still kept more members, the network read mass from the sample size, and at 40%
#: completeness the held-out modes were 0.10 dex low (README, "Real clusters")
DEFAULT_REDSHIFTS = (5.0, 150.0)
#: fraction of hosts held out of training for validation and the catalog (all their lines of sight)
DEFAULT_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class TrainSection:
    """``[train]``.

    models : some of ``mdn``, ``flow``, ``mse``; feature_sets : ``full`` plus any of ``richness``, ``dynamics``
    (:mod:`features.sets`; density models only for the smaller sets); redshifts : [lo, hi] of the number of members
    kept per observation of the dynamics set (log-uniform, independent of mass; :data:`DEFAULT_REDSHIFTS`), whose
    training rows need
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
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    feature_sets: tuple[str, ...] = DEFAULT_FEATURE_SETS
    redshifts: tuple[float, ...] = DEFAULT_REDSHIFTS
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
    reuse: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "feature_sets", tuple(self.feature_sets))
        object.__setattr__(self, "redshifts", tuple(float(c) for c in self.redshifts))
        unknown_sets = sorted(set(self.feature_sets) - set(FEATURE_SETS))
        if unknown_sets or "full" not in self.feature_sets:
            raise ConfigError(f"feature_sets must include 'full' and be some of {list(FEATURE_SETS)}, got "
                              f"{list(self.feature_sets)}")
        lo_hi = self.redshifts
        if len(lo_hi) != 2 or not 3.0 <= lo_hi[0] <= lo_hi[1]:
            raise ConfigError(f"redshifts must be [lo, hi] with 3 <= lo <= hi members, got {list(lo_hi)}")
        if self.min_members_thinned < 3:
            raise ConfigError(f"min_members_thinned must be >= 3, got {self.min_members_thinned}")
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        unknown = sorted(set(self.models) - set(KINDS))
        if unknown or not self.models:
            raise ConfigError(f"models must be some of {list(KINDS)}, got {list(self.models)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.epistemic not in EPISTEMIC:
            raise ConfigError(f"epistemic must be one of {list(EPISTEMIC)}, got '{self.epistemic}'")
        if self.epistemic == "mc_dropout" and not (self.dropout > 0 and self.mc_samples > 1):
            raise ConfigError(f"epistemic = 'mc_dropout' requires dropout > 0 and mc_samples > 1 (dropout masks "
                              f"averaged at prediction), got dropout = {self.dropout}, mc_samples = {self.mc_samples}")
        if self.epistemic == "bayes_by_backprop" and self.dropout > 0:
            raise ConfigError(f"epistemic = 'bayes_by_backprop' averages over weight draws, not dropout masks: set "
                              f"dropout = 0, got {self.dropout}")
        for kind in self.models:  # the specs' own checks, before anything trains
            self.specs(kind)

    @property
    def test_seed(self) -> int:
        """Seed of the held-out host split (offset from ``seed`` so it is not the weights' stream)."""
        return self.seed + 7919

    def specs(self, kind: str) -> tuple[ModelSpec, TrainSpec]:
        """The :class:`ModelSpec` and :class:`TrainSpec` of model ``kind`` under this section."""
        spec = ModelSpec(kind=kind, hidden=self.hidden, n_components=self.n_components, n_bins=self.n_bins,
                         dropout=self.dropout)
        train = TrainSpec(ensemble=self.baseline_ensemble if kind == "mse" else self.ensemble,
                          mc_samples=self.mc_samples, batch_size=self.batch_size,
                          max_epochs=self.max_epochs, patience=self.patience, learning_rate=self.learning_rate,
                          weight_decay=self.weight_decay, seed=self.seed,
                          epistemic="ensemble" if kind == "mse" else self.epistemic, prior_scale=self.prior_scale,
                          weight_draws=self.weight_draws, posterior_init_std=self.posterior_init_std)
        return spec, train

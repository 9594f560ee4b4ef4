"""The training stage's configuration section ``[train]``: which models, their architecture and optimisation.

Architecture and optimisation defaults come from :class:`models.spec.ModelSpec` and :class:`models.spec.TrainSpec`;
:meth:`TrainSection.specs` turns the flat section into those specs.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.spec import KINDS, ModelSpec, TrainSpec
from pipeline.config import default
from pipeline.errors import ConfigError

#: the models a default run trains (the M-sigma power law is always fitted too)
DEFAULT_MODELS = KINDS
#: fraction of hosts held out of training for validation and the catalog (all their lines of sight)
DEFAULT_TEST_FRACTION = 0.25


@dataclass(frozen=True)
class TrainSection:
    """``[train]``.

    models : some of ``mdn``, ``flow``, ``mse``; features : feature names to train on (empty: every feature of
    the observation table); test_fraction : hosts held out (never seen in training); reuse : a trained model
    directory (a run's ``model/``) to use instead of training. The rest are :class:`ModelSpec` (hidden,
    n_components, n_bins, dropout) and :class:`TrainSpec` (ensemble, mc_samples, batch_size, max_epochs, patience,
    learning_rate, weight_decay, seed) fields.
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    features: tuple[str, ...] = ()
    test_fraction: float = DEFAULT_TEST_FRACTION
    hidden: tuple[int, ...] = default(ModelSpec, "hidden")
    n_components: int = default(ModelSpec, "n_components")
    n_bins: int = default(ModelSpec, "n_bins")
    dropout: float = default(ModelSpec, "dropout")
    ensemble: int = default(TrainSpec, "ensemble")
    mc_samples: int = default(TrainSpec, "mc_samples")
    batch_size: int = default(TrainSpec, "batch_size")
    max_epochs: int = default(TrainSpec, "max_epochs")
    patience: int = default(TrainSpec, "patience")
    learning_rate: float = default(TrainSpec, "learning_rate")
    weight_decay: float = default(TrainSpec, "weight_decay")
    seed: int = default(TrainSpec, "seed")
    reuse: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        unknown = sorted(set(self.models) - set(KINDS))
        if unknown or not self.models:
            raise ConfigError(f"models must be some of {list(KINDS)}, got {list(self.models)}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
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
        train = TrainSpec(ensemble=self.ensemble, mc_samples=self.mc_samples, batch_size=self.batch_size,
                          max_epochs=self.max_epochs, patience=self.patience, learning_rate=self.learning_rate,
                          weight_decay=self.weight_decay, seed=self.seed)
        return spec, train

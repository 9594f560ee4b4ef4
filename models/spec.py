"""What a model is and how it is trained: small frozen dataclasses, validated, JSON-serialisable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import ConfigError

#: the networks' heads (:class:`ModelSpec` ``kind``)
KINDS = ("mdn", "flow", "mse")
#: the models a run's model directory may hold (``[train] models``, ``model.json``'s ``kind``): the heads above on
#: summary features, and ``"set"`` (:data:`models.set_model.SET_KIND`), a set encoder of the members conditioning
#: a flow (or MDN) head
MODEL_KINDS = (*KINDS, "set")
#: how a density model's epistemic (weight) uncertainty is represented (``TrainSpec.epistemic``)
EPISTEMIC = ("ensemble", "mc_dropout", "bayes_by_backprop")


@dataclass(frozen=True)
class ModelSpec:
    """Network architecture.

    kind : ``"mdn"`` (mixture density network), ``"flow"`` (conditional spline flow), ``"mse"`` (regression baseline)
    hidden : widths of the MLP trunk (the seed's 128-128-64)
    activation : trunk activation (``relu``, ``gelu``, ``tanh``, ``silu``)
    n_components : MDN mixture components
    min_scale : MDN component scales are bounded below by this, in standardised target units
    n_bins, bound : spline-flow bins and support (standardised target units)
    dropout : dropout rate in the trunk (0 = off); with ``mc_samples > 1`` at prediction it is MC dropout
    """

    kind: str = "mdn"
    hidden: tuple[int, ...] = (128, 128, 64)
    activation: str = "relu"
    n_components: int = 10
    min_scale: float = 1e-3
    n_bins: int = 16
    bound: float = 5.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"model: kind must be one of {list(KINDS)}, got '{self.kind}'")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ConfigError(f"model: hidden must be positive layer widths, got {self.hidden}")
        if self.activation not in ("relu", "gelu", "tanh", "silu"):
            raise ConfigError(f"model: unknown activation '{self.activation}'")
        if self.n_components < 1 or self.n_bins < 2 or self.min_scale <= 0 or self.bound <= 0:
            raise ConfigError("model: n_components >= 1, n_bins >= 2, min_scale > 0 and bound > 0 are required")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model: dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    @property
    def is_density(self) -> bool:
        return self.kind in ("mdn", "flow")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{**data, "hidden": tuple(data.get("hidden", (128, 128, 64)))})


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation.

    optimizer : ``adamw`` or ``adam``
    schedule : ``"plateau"`` (default): learning_rate until the validation loss stops improving for
        ``plateau_patience`` epochs, then the best weights are restored and the rate multiplied by ``plateau_factor``,
        down to ``final_lr_fraction`` x learning_rate, after which training stops at the next plateau; ``"cosine"``:
        a cosine decay to ``final_lr_fraction`` over max_epochs (only sensible when training runs that long)
    batch_size : examples per step; max_epochs, patience : early stopping on validation NLL (best weights kept)
    validation_fraction : fraction of hosts (not observations) held out for early stopping
    ensemble : deep-ensemble members (different seeds and data orders); mc_samples : dropout passes at prediction
    epistemic : how weight uncertainty enters the predictive density, the equal-weight mixture over
        ``"ensemble"`` (default) — ``ensemble`` independently trained networks (with ``dropout > 0`` and
        ``mc_samples > 1`` each is also averaged over dropout masks, as before this option existed);
        ``"mc_dropout"`` — the same computation, but declared: ``mc_samples > 1`` is required here and the model's
        ``dropout > 0`` by :class:`models.config.TrainSection`;
        ``"bayes_by_backprop"`` — ONE variational network, a mean-field Gaussian over every weight trained on the
        ELBO (Blundell et al. 2015; :mod:`models.bayes`), mixed over ``weight_draws`` weight draws at prediction.
        ``ensemble`` is ignored (set to 1: the draws are the members) and so is ``weight_decay`` (the prior is the
        regulariser).
    prior_scale : s of the weight prior N(0, s^2), the same for every weight and bias (bayes_by_backprop). 1.0 is
        the lecture's N(0, I) (Lanusse, "Deep Probabilistic Learning": p(w) = N(0, I)). With standardised inputs
        and targets and weights of order 1/sqrt(fan_in) ~ 0.1 it is broad: it hardly shrinks the weights the data
        use (loc^2 / 2 s^2 ~ 0.005 nats each), and lets weights the data do not constrain widen, which is where the
        spread far from the training data comes from. Smaller s shrinks that spread (20k rows, flow: s = 0.1 gave
        0.6x the spread of s = 1 at features x4, with the same held-out NLL within 0.02 nats).
    weight_draws : weight draws of the predictive mixture (bayes_by_backprop); each costs one network pass at
        prediction, like an ensemble member: 8 costs ~2.7x the default 3-member ensemble, and the Monte Carlo error
        of the mixture's log density is small next to the aleatoric width.
    posterior_init_std : initial sigma of every weight's variational posterior (bayes_by_backprop); 0.01, a tenth of
        the typical initial weight, starts close to the ordinary network and lets the data widen it.
    """

    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    final_lr_fraction: float = 0.02
    schedule: str = "plateau"
    plateau_patience: int = 4
    plateau_factor: float = 0.3
    batch_size: int = 1024
    max_epochs: int = 300
    patience: int = 15
    validation_fraction: float = 0.2
    ensemble: int = 3
    mc_samples: int = 1
    seed: int = 0
    grad_clip: float = 5.0
    epistemic: str = "ensemble"
    prior_scale: float = 1.0
    weight_draws: int = 8
    posterior_init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.epistemic not in EPISTEMIC:
            raise ConfigError(f"training: epistemic must be one of {list(EPISTEMIC)}, got '{self.epistemic}'")
        if self.epistemic == "mc_dropout" and self.mc_samples < 2:
            raise ConfigError(f"training: epistemic = 'mc_dropout' requires mc_samples > 1 (dropout passes at "
                              f"prediction) and the model's dropout > 0, got mc_samples = {self.mc_samples}")
        if self.prior_scale <= 0 or self.weight_draws < 1 or self.posterior_init_std <= 0:
            raise ConfigError(f"training: prior_scale > 0, weight_draws >= 1 and posterior_init_std > 0 are "
                              f"required (epistemic = 'bayes_by_backprop'), got prior_scale = {self.prior_scale}, "
                              f"weight_draws = {self.weight_draws}, posterior_init_std = {self.posterior_init_std}")
        if self.epistemic == "bayes_by_backprop":
            object.__setattr__(self, "ensemble", 1)  # one variational network: its weight draws are the members
        if self.schedule not in ("plateau", "cosine"):
            raise ConfigError(f"training: schedule must be 'plateau' or 'cosine', got '{self.schedule}'")
        if self.plateau_patience < 1 or not 0.0 < self.plateau_factor < 1.0:
            raise ConfigError("training: plateau_patience >= 1 and plateau_factor in (0, 1) are required")
        if self.optimizer not in ("adamw", "adam"):
            raise ConfigError(f"training: optimizer must be 'adamw' or 'adam', got '{self.optimizer}'")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1 or self.ensemble < 1:
            raise ConfigError("training: batch_size, max_epochs, patience and ensemble must be >= 1")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError("training: validation_fraction must be in (0, 1)")
        if self.learning_rate <= 0 or self.mc_samples < 1:
            raise ConfigError("training: learning_rate > 0 and mc_samples >= 1 are required")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Standardizer:
    """Affine map to zero mean, unit variance: ``(v - mean) / std`` per column (units of the raw values)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, values) -> Standardizer:
        import numpy as np

        v = np.asarray(values, dtype=np.float64)
        v = v[:, None] if v.ndim == 1 else v
        std = v.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(tuple(float(m) for m in v.mean(axis=0)), tuple(float(s) for s in std))

    def transform(self, values):
        import numpy as np

        v = np.asarray(values, dtype=np.float64)
        out = (v - np.asarray(self.mean)) / np.asarray(self.std)
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Standardizer:
        return cls(tuple(data["mean"]), tuple(data["std"]))


@dataclass(frozen=True)
class History:
    """Per-epoch training and validation loss (NLL in nats per observation, standardised target; MSE for mse)."""

    train_loss: tuple[float, ...] = field(default_factory=tuple)
    val_loss: tuple[float, ...] = field(default_factory=tuple)
    best_epoch: int = -1
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"train_loss": list(self.train_loss), "val_loss": list(self.val_loss)}

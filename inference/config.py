"""The inference stage's configuration section ``[infer]``: the catalogs' target prior and model."""

from __future__ import annotations

from dataclasses import dataclass

from inference.priors import DEFAULT_PRIOR
from pipeline.config import check_choice
from pipeline.errors import ConfigError

#: what query/infer do with a cluster far from the model's snapshot redshift: flag it (REDSHIFT) or refuse
FAR_REDSHIFT_POLICIES = ("warn", "refuse")
#: the density models a catalog can be filled from; the first is the default (it passes every per-bin bias check on
#: the default run, the MDN misses one: README, Science); ``set``: the set model (issue 19), from each observation's
#: members
CATALOG_MODELS = ("flow", "mdn", "set")


@dataclass(frozen=True)
class InferSection:
    """``[infer]``.

    prior : target prior of the catalogs: ``flat`` | ``tinker08`` | ``training`` | a two-column table file
    (log10 M200c [Msun/h], density per dex; read and checked when the configuration is loaded,
    :func:`inference.priors.read_table`); model : whose posteriors fill the catalog, ``flow``, ``mdn`` or ``set``
    (each a ``[train] models`` kind the run trains).
    """

    prior: str = DEFAULT_PRIOR
    model: str = CATALOG_MODELS[0]

    def __post_init__(self) -> None:
        check_choice("model", self.model, CATALOG_MODELS)
        if not self.prior.strip():
            raise ConfigError("expected flat, tinker08, training or a two-column table file, got ''", key="prior")

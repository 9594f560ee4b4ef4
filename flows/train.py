"""The training stage: split hosts, train the configured models and the M-sigma baseline, write DIR/model/.

``DIR/model/<kind>/`` (``mdn``, ``flow``, ``mse``) are model directories (:mod:`models.io`);
``DIR/model/msigma.json`` is the M-sigma power law fitted on the training hosts; ``DIR/model/split.json`` lists
the held-out test hosts, which no model has seen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.definitions import FEATURE_NAMES
from models.io import save_model
from models.model import TARGET, host_split, train_model
from models.msigma import fit_msigma
from models.spec import ModelSpec, TrainSpec
from pipeline.config import TrainSection
from pipeline.errors import ConfigError
from pipeline.files import write_json

MSIGMA_FEATURE = "sigma_v_std"  # the plain dispersion of all cylinder members (the contaminated baseline)


def specs_for(section: TrainSection, kind: str) -> tuple[ModelSpec, TrainSpec]:
    spec = ModelSpec(kind=kind, hidden=tuple(section.hidden), n_components=section.n_components,
                     n_bins=section.n_bins, dropout=section.dropout)
    train = TrainSpec(ensemble=section.ensemble, mc_samples=section.mc_samples, batch_size=section.batch_size,
                      max_epochs=section.max_epochs, patience=section.patience, learning_rate=section.learning_rate,
                      weight_decay=section.weight_decay, seed=section.seed)
    return spec, train


def test_mask(table: pd.DataFrame, section: TrainSection) -> np.ndarray:
    """Rows of held-out test hosts (a fixed fraction of hosts, all their lines of sight)."""
    return host_split(table["cluster_id"].to_numpy(), section.test_fraction, section.seed + 7919)


def feature_list(table: pd.DataFrame, section: TrainSection) -> list[str]:
    names = list(section.features) or list(FEATURE_NAMES)
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise ConfigError(f"[train] features {missing} are not in the observation table; known: {list(FEATURE_NAMES)}")
    return names


def train_stage(table: pd.DataFrame, section: TrainSection, out: str | os.PathLike[str], *,
                kinds: Sequence[str] | None = None, quiet: bool = False,
                observations: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``kinds`` (default: the configured models) on the non-test hosts of ``table``; write ``out``.

    ``observations``: how the observations were made (cylinder, lines of sight, snapshot), stored in every
    model.json so that `clustermass query` applies the same definitions to a members file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = feature_list(table, section)
    test = test_mask(table, section)
    usable = np.isfinite(table[names].to_numpy(np.float64)).all(axis=1)
    tr = ~test & usable
    x = table.loc[tr, names].to_numpy(np.float64)
    y = table.loc[tr, TARGET].to_numpy(np.float64)
    cid = table.loc[tr, "cluster_id"].to_numpy()
    summary: dict[str, Any] = {"features": names, "train_rows": int(tr.sum()), "test_rows": int(test.sum()),
                               "dropped_nonfinite": int((~usable & ~test).sum()), "models": {}}
    for kind in kinds or section.models:
        spec, train = specs_for(section, kind)
        progress = _EpochProgress(kind, train.max_epochs, quiet)
        model, histories = train_model(x, y, cid, feature_names=names, spec=spec, train=train, progress=progress)
        save_model(out / kind, model, histories=histories,
                   extra={"test_hosts_seed": section.seed + 7919, "observations": observations or {}})
        summary["models"][kind] = {"dir": str(out / kind), "best_val_nll": [min(h.val_loss) for h in histories],
                                   "epochs": [len(h.val_loss) for h in histories]}
    ms = fit_msigma(table.loc[tr, MSIGMA_FEATURE].to_numpy(), y)
    write_json(out / "msigma.json", {"feature": MSIGMA_FEATURE, "unit": {"sigma_v": "km/s", "M200c": "Msun/h"},
                                      **ms.to_dict()})
    write_json(out / "split.json", {"test_fraction": section.test_fraction, "seed": section.seed + 7919,
                                     "test_cluster_ids": sorted(set(table.loc[test, "cluster_id"].tolist()))})
    summary["msigma"] = ms.to_dict()
    return summary


class _EpochProgress:
    def __init__(self, kind: str, max_epochs: int, quiet: bool) -> None:
        self.kind, self.max_epochs, self.quiet = kind, max_epochs, quiet

    def __call__(self, member: int, epoch: int, train_loss: float, val_loss: float) -> None:
        if not self.quiet and (epoch % 20 == 0):
            what = "MSE" if self.kind == "mse" else "NLL"
            print(f"train {self.kind} member {member} epoch {epoch:4d}  train {what} {train_loss:8.4f}  "
                  f"val {what} {val_loss:8.4f}", flush=True)



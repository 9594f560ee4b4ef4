"""The training stage and its product, a run's model directory ``DIR/model/``.

:func:`train_stage` splits the hosts, trains the configured models and the M-sigma baseline and writes:
``DIR/model/<kind>/`` (``mdn``, ``flow``, ``mse``) model directories (:mod:`models.io`); ``DIR/model/msigma.json``,
the M-sigma power law fitted on the training hosts; ``DIR/model/split.json``, the held-out test hosts, which no model
has seen. :func:`load_models`, :func:`load_msigma` and :func:`held_out` read them back. Called by
``clustermass train`` and by the flow's train task alike.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.definitions import FEATURE_NAMES
from models.config import TrainSection
from models.io import load_model, save_model
from models.model import TARGET, TrainedModel, host_split, train_model
from models.msigma import FEATURE as MSIGMA_FEATURE
from models.msigma import PURE_FEATURE, MSigmaFit, fit_msigma
from pipeline.errors import ConfigError, InputError
from pipeline.files import write_json
from pipeline.scaling import FIT_RANGE


def test_mask(table: pd.DataFrame, section: TrainSection) -> np.ndarray:
    """Rows of held-out test hosts (a fixed fraction of hosts, all their lines of sight)."""
    return host_split(table["cluster_id"].to_numpy(), section.test_fraction, section.test_seed)


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
        spec, train = section.specs(kind)
        progress = _EpochProgress(kind, train.max_epochs, quiet)
        model, histories = train_model(x, y, cid, feature_names=names, spec=spec, train=train, progress=progress)
        save_model(out / kind, model, histories=histories,
                   extra={"test_hosts_seed": section.test_seed, "observations": observations or {}})
        summary["models"][kind] = {"dir": str(out / kind), "best_val_nll": [min(h.val_loss) for h in histories],
                                   "epochs": [len(h.val_loss) for h in histories]}
    ms = fit_msigma(table.loc[tr, MSIGMA_FEATURE].to_numpy(), y, mass_range=FIT_RANGE)
    document = {"feature": MSIGMA_FEATURE, "unit": {"sigma_v": "km/s", "M200c": "Msun/h"}, **ms.to_dict()}
    if PURE_FEATURE in table:  # Ho et al. 2019's "pure" baseline: the true members' dispersion (mocks only)
        pure = fit_msigma(table.loc[tr, PURE_FEATURE].to_numpy(), y, mass_range=FIT_RANGE)
        document["pure"] = {"feature": PURE_FEATURE, **pure.to_dict()}
    write_json(out / "msigma.json", document)
    write_json(out / "split.json", {"test_fraction": section.test_fraction, "seed": section.test_seed,
                                     "test_cluster_ids": sorted(set(table.loc[test, "cluster_id"].tolist()))})
    summary["msigma"] = ms.to_dict()
    return summary


def load_msigma(path: str | os.PathLike[str], *, pure: bool = False) -> MSigmaFit | None:
    """The M-sigma fit a training stage wrote (``msigma.json``): the contaminated baseline, or with ``pure`` the fit
    on true members (None when the file has none)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        if pure:
            return MSigmaFit.from_dict(data["pure"]) if "pure" in data else None
        return MSigmaFit.from_dict(data)
    except OSError as exc:
        raise InputError(p, f"cannot read the M-sigma fit ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(p, f"expected the M-sigma fit of `clustermass train` ({exc.__class__.__name__}: {exc})")\
            from None


def held_out(table: pd.DataFrame, model_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The rows of ``table`` whose hosts the training stage held out (``split.json``), re-indexed from 0."""
    split_path = Path(model_dir) / "split.json"
    if not split_path.exists():
        raise InputError(model_dir, "no split.json: expected a model directory written by `clustermass train`")
    test_ids = set(json.loads(split_path.read_text())["test_cluster_ids"])
    test = table[table["cluster_id"].isin(test_ids)].reset_index(drop=True)
    if test.empty:
        raise InputError(split_path, "none of the held-out hosts is in the observation table; wrong observations?")
    return test


def load_models(model_dir: str | os.PathLike[str]) -> dict[str, TrainedModel]:
    """Every trained model of a run's model directory, by kind (``mdn``, ``flow``, ``mse``)."""
    model_dir = Path(model_dir)
    kinds = [k for k in ("mdn", "flow", "mse") if (model_dir / k / "model.json").exists()]
    if not kinds:
        raise InputError(model_dir, "no trained model here (expected mdn/, flow/ or mse/)")
    return {k: load_model(model_dir / k) for k in kinds}


class _EpochProgress:
    def __init__(self, kind: str, max_epochs: int, quiet: bool) -> None:
        self.kind, self.max_epochs, self.quiet = kind, max_epochs, quiet

    def __call__(self, member: int, epoch: int, train_loss: float, val_loss: float) -> None:
        if not self.quiet and (epoch % 20 == 0):
            what = "MSE" if self.kind == "mse" else "NLL"
            print(f"train {self.kind} member {member} epoch {epoch:4d}  train {what} {train_loss:8.4f}  "
                  f"val {what} {val_loss:8.4f}", flush=True)



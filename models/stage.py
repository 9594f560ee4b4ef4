"""The training stage and its product, a run's model directory ``DIR/model/``.

:func:`train_stage` splits the hosts, trains the configured models and the M-sigma baseline and writes:
``DIR/model/<kind>/`` (``mdn``, ``flow``, ``mse``, ``set``) model directories (:mod:`models.io`) of the full feature
set and ``DIR/model/<feature set>/<kind>/`` of the others (``dynamics/flow``, ``dynamics/set``...;
:func:`model_dir_for`); ``DIR/model/msigma.json``, the M-sigma power law fitted on the training hosts;
``DIR/model/split.json``, the held-out test hosts, which no model has seen. :func:`load_models`, :func:`load_msigma`
and :func:`held_out` read them back. Called by ``clustermass train`` and by the flow's train task alike.
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
from features.members import Members
from features.sets import FEATURE_SETS, INPUTS, NEEDS_COMPLETE_SAMPLE, thinned_features
from models.config import TrainSection
from models.io import load_model, save_model
from models.model import TARGET, TrainedModel, host_split, train_model
from models.msigma import FEATURE as MSIGMA_FEATURE
from models.msigma import PURE_FEATURE, MSigmaFit, fit_msigma
from models.set_model import SET_FEATURE_SETS, SET_KIND, TrainedSetModel, train_set_model
from models.typicality import typicality_stats
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


def model_dir_for(root: str | os.PathLike[str], feature_set: str, kind: str) -> Path:
    """Where the training stage writes model ``kind`` of ``feature_set``: ``<root>/<kind>`` for the full set,
    ``<root>/<feature_set>/<kind>`` for the others."""
    root = Path(root)
    return root / kind if feature_set == "full" else root / feature_set / kind


def thinned_table(table: pd.DataFrame, members: Members, section: TrainSection, *, r_aperture: float
                  ) -> pd.DataFrame:
    """``table`` with its features recomputed after random spectroscopic incompleteness: each observation draws a
    target count log-uniformly from ``section.members_kept``, independently of the host's mass, and keeps each of
    its n members with probability target / n (all of them when n <= target; the kept count is binomial around the
    target), seeded by ``section.seed``."""
    rng = np.random.default_rng(np.random.SeedSequence(section.seed, spawn_key=(0xC0,)))
    lo, hi = section.members_kept
    wanted = np.exp(rng.uniform(np.log(lo), np.log(hi), len(table)))
    completeness = np.minimum(1.0, wanted / np.maximum(np.diff(members.offsets), 1))
    feats = thinned_features(members, completeness, rng, r_aperture=r_aperture)
    out = table.copy()
    for name, values in feats.items():
        out[name] = values
    return out


def train_stage(table: pd.DataFrame, section: TrainSection, out: str | os.PathLike[str], *,
                kinds: Sequence[str] | None = None, quiet: bool = False,
                observations: dict[str, Any] | None = None, members: Members | None = None) -> dict[str, Any]:
    """Train ``kinds`` (default: the configured models) of every configured feature set on the non-test hosts of
    ``table``; write ``out``.

    ``observations``: how the observations were made (cylinder, lines of sight, snapshot), stored in every
    model.json so that `clustermass query` applies the same definitions to a members file. ``members``: the
    observations' member arrays in the table's row order, needed for the ``dynamics`` set (trained on randomly
    thinned members) and for the set model (``"set"``, :func:`train_set_models`).

    The M-sigma law is fitted first (on the training hosts' ``sigma_v_std``): the set model's
    ``msigma_residual`` target is the residual to it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test = test_mask(table, section)
    cylinder = (observations or {}).get("config", {}).get("cylinder", {})
    summary: dict[str, Any] = {"test_rows": int(test.sum()), "models": {}}
    y_all = table[TARGET].to_numpy(np.float64)
    wanted = list(kinds or section.models)
    if SET_KIND in wanted and members is None:
        raise ConfigError("[train] models: the set model ('set') reads every observation's members: expected the "
                          "observations' members.h5")
    full = np.isfinite(table[MSIGMA_FEATURE].to_numpy(np.float64))
    tr = ~test & full
    y = y_all[tr]
    ms = fit_msigma(table.loc[tr, MSIGMA_FEATURE].to_numpy(), y, mass_range=FIT_RANGE)
    document = {"feature": MSIGMA_FEATURE, "unit": {"sigma_v": "km/s", "M200c": "Msun/h"}, **ms.to_dict()}
    if PURE_FEATURE in table:  # Ho et al. 2019's "pure" baseline: the true members' dispersion (mocks only)
        pure = fit_msigma(table.loc[tr, PURE_FEATURE].to_numpy(), y, mass_range=FIT_RANGE)
        document["pure"] = {"feature": PURE_FEATURE, **pure.to_dict()}
    write_json(out / "msigma.json", document)
    for feature_set in section.feature_sets:
        if feature_set == "full":
            names, rows, min_members = feature_list(table, section), table, int(cylinder.get("min_members", 1))
            completeness: Any = 1.0
        elif feature_set in NEEDS_COMPLETE_SAMPLE:  # richness: the complete sample, without stellar masses
            names, rows, min_members = list(FEATURE_SETS[feature_set]), table, int(cylinder.get("min_members", 1))
            completeness = 1.0
        else:
            if members is None or "r_aperture" not in cylinder:
                raise ConfigError(f"[train] feature set '{feature_set}' is trained on thinned members: expected the "
                                  "observations' members.h5 and cylinder")
            names = list(FEATURE_SETS[feature_set])
            rows = thinned_table(table, members, section, r_aperture=float(cylinder["r_aperture"]))
            min_members = section.min_members_thinned
            completeness = {"members_kept_log_uniform": list(section.members_kept)}
        usable = np.isfinite(rows[names].to_numpy(np.float64)).all(axis=1) & (rows["n_members"] >= min_members)
        tr = ~test & usable
        x = rows.loc[tr, names].to_numpy(np.float64)
        y = y_all[tr]
        cid = rows.loc[tr, "cluster_id"].to_numpy()
        extra = {
            "test_hosts_seed": section.test_seed, "observations": observations or {},
            "feature_set": feature_set, "inputs": INPUTS[feature_set],
            "selection": {"log10_mstar_min": cylinder.get("log10_mstar_min"), "completeness": completeness,
                          "min_members": min_members},
            "training_members": [int(rows.loc[tr, "n_members"].min()), int(rows.loc[tr, "n_members"].max())],
            "typicality": typicality_stats(x),
        }
        feature_kinds = [k for k in wanted if k != SET_KIND and (feature_set == "full" or k != "mse")]
        for kind in feature_kinds:
            spec, train = section.specs(kind)
            progress = _EpochProgress(f"{kind} ({feature_set})", train.max_epochs, quiet)
            model, histories = train_model(x, y, cid, feature_names=names, spec=spec, train=train,
                                           progress=progress)
            target = model_dir_for(out, feature_set, kind)
            save_model(target, model, histories=histories, extra=extra)
            summary["models"][f"{feature_set}/{kind}"] = {
                "dir": str(target), "feature_set": feature_set, "train_rows": int(tr.sum()),
                "best_val_nll": [min(h.val_loss) for h in histories], "epochs": [len(h.val_loss) for h in histories]}
        if SET_KIND in wanted and feature_set in SET_FEATURE_SETS:
            assert members is not None
            # the flow's rows: the same usable ones for the full set; for dynamics the lists the thinning draws
            # from (complete, enough members to thin to min_members_thinned), thinned afresh every epoch
            rows_ok = np.asarray(usable if feature_set == "full" else table["n_members"] >= min_members, bool)
            set_rows = np.flatnonzero(~test & rows_ok & np.isfinite(y_all))
            summary["models"][f"{feature_set}/{SET_KIND}"] = train_set_models(
                table, members, set_rows, section, feature_set, out, extra=extra, msigma=ms, quiet=quiet)
    write_json(out / "split.json", {"test_fraction": section.test_fraction, "seed": section.test_seed,
                                     "test_cluster_ids": sorted(set(table.loc[test, "cluster_id"].tolist()))})
    summary["msigma"] = ms.to_dict()
    return summary


def train_set_models(table: pd.DataFrame, members: Members, rows: np.ndarray, section: TrainSection,
                     feature_set: str, out: Path, *, extra: dict[str, Any], msigma: MSigmaFit,
                     quiet: bool = False) -> dict[str, Any]:
    """Train and write the set model of ``feature_set`` (``full`` or ``dynamics``) on the observations ``rows``
    (integer index into ``table`` and ``members``, same order): ``section.ensemble`` networks of
    :meth:`TrainSection.set_spec`, the flow head of :meth:`TrainSection.specs`, target ``section.set_target``
    (``msigma``: the law of the residual target), the dynamics lists thinned every epoch by
    ``section.members_kept``. ``extra``: the feature flow's record (observations, selection, training range,
    typicality of the summary features), written into its model.json too. Returns the summary entry."""
    spec, train = section.specs(SET_KIND)
    progress = _EpochProgress(f"{SET_KIND} ({feature_set})", train.max_epochs, quiet, every=5)
    model, histories = train_set_model(
        members.take(rows), table[TARGET].to_numpy(np.float64)[rows], table["cluster_id"].to_numpy()[rows],
        feature_set=feature_set, spec=spec, set_spec=section.set_spec(feature_set), train=train,
        target=section.set_target, msigma=msigma,
        members_kept=section.members_kept if feature_set == "dynamics" else None, progress=progress)
    target = model_dir_for(out, feature_set, SET_KIND)
    save_model(target, model, histories=histories, extra=extra)
    return {"dir": str(target), "feature_set": feature_set, "train_rows": len(rows),
            "best_val_nll": [min(h.val_loss) for h in histories], "epochs": [len(h.val_loss) for h in histories],
            "set_target": section.set_target, "set_pooling": section.set_pooling}


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
    except KeyError as exc:
        raise InputError(p, f"{'pure.' if pure else ''}{exc.args[0]} is missing: expected the M-sigma fit of "
                            "`clustermass train` (retrain)") from None
    except (ValueError, TypeError) as exc:
        raise InputError(p, f"expected the M-sigma fit of `clustermass train` ({exc.__class__.__name__}: {exc})")\
            from None


def held_out_mask(table: pd.DataFrame, model_dir: str | os.PathLike[str]) -> np.ndarray:
    """Boolean mask of the rows of ``table`` whose hosts the training stage held out (``split.json``)."""
    split_path = Path(model_dir) / "split.json"
    if not split_path.exists():
        raise InputError(model_dir, "no split.json: expected a model directory written by `clustermass train`")
    test_ids = set(json.loads(split_path.read_text())["test_cluster_ids"])
    mask = table["cluster_id"].isin(test_ids).to_numpy()
    if not mask.any():
        raise InputError(split_path, "none of the held-out hosts is in the observation table; wrong observations?")
    return mask


def held_out(table: pd.DataFrame, model_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The rows of ``table`` whose hosts the training stage held out (``split.json``), re-indexed from 0."""
    return table[held_out_mask(table, model_dir)].reset_index(drop=True)


def load_models(model_dir: str | os.PathLike[str]) -> dict[str, TrainedModel | TrainedSetModel]:
    """Every trained model of the full feature set in a run's model directory, by kind (``mdn``, ``flow``, ``mse``,
    ``set``)."""
    model_dir = Path(model_dir)
    kinds = [k for k in ("mdn", "flow", "mse", SET_KIND) if (model_dir / k / "model.json").exists()]
    if not kinds:
        raise InputError(model_dir, "no trained model here (expected mdn/, flow/, mse/ or set/)")
    return {k: load_model(model_dir / k) for k in kinds}


class _EpochProgress:
    def __init__(self, kind: str, max_epochs: int, quiet: bool, every: int = 20) -> None:
        self.kind, self.max_epochs, self.quiet, self.every = kind, max_epochs, quiet, every

    def __call__(self, member: int, epoch: int, train_loss: float, val_loss: float) -> None:
        if not self.quiet and (epoch % self.every == 0):
            what = "MSE" if self.kind == "mse" else "NLL"
            print(f"train {self.kind} member {member} epoch {epoch:4d}  train {what} {train_loss:8.4f}  "
                  f"val {what} {val_loss:8.4f}", flush=True)



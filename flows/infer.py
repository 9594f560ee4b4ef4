"""The inference stage: corrected posteriors of the held-out observations, catalogs, validation.

Writes ``DIR/catalog.h5`` and ``DIR/catalog.fits`` (same rows and columns; the held-out test observations of a
mock run, with their true masses) and ``DIR/validation/`` (metrics.json and PNG plots).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from catalogs.fits import FITSCatalogWriter
from catalogs.hdf5 import HDF5CatalogWriter
from models.io import load_model
from models.model import TARGET
from models.msigma import MSigmaFit
from pipeline.errors import InputError
from pipeline.provenance import code_version, model_digest, now
from pipeline.snapshot import Snapshot

CATALOG_BLOCK = 65536


def load_msigma(path: Path) -> MSigmaFit:
    data = json.loads(path.read_text())
    return MSigmaFit(data["intercept"], data["slope"], data["pivot"], data["scatter"], data["n"],
                     data.get("method", "scaling"))


def held_out(table: pd.DataFrame, model_dir: Path) -> pd.DataFrame:
    split_path = model_dir / "split.json"
    if not split_path.exists():
        raise InputError(model_dir, "no split.json: expected a model directory written by `clustermass train`")
    test_ids = set(json.loads(split_path.read_text())["test_cluster_ids"])
    test = table[table["cluster_id"].isin(test_ids)].reset_index(drop=True)
    if test.empty:
        raise InputError(split_path, "none of the held-out hosts is in the observation table; wrong observations?")
    return test


def load_models(model_dir: Path) -> dict[str, Any]:
    kinds = [k for k in ("mdn", "flow", "mse") if (model_dir / k / "model.json").exists()]
    if not kinds:
        raise InputError(model_dir, "no trained model here (expected mdn/, flow/ or mse/)")
    return {k: load_model(model_dir / k) for k in kinds}


def provenance_for(model_dir: Path, main: str, models: dict[str, Any], target_name: str, snapshot: Snapshot,
                   rows: str, config_digest: str = "") -> dict[str, Any]:
    return {
        "code_version": code_version(),
        "config_digest": config_digest,
        "model": main,
        "model_digest": model_digest(model_dir / main),
        "training_data_sha256": models[main].data_digest,
        "target_prior": target_name,
        "training_prior": f"KDE of {models[main].training_prior.n_train} training log10 M200c, "
                          f"bandwidth {models[main].training_prior.bandwidth:.4f} dex",
        "cosmology": json.dumps(snapshot.cosmology.to_dict()),
        "snapshot": json.dumps(snapshot.to_dict()),
        "rows": rows,
        "created": now(),
    }


def catalog_stage(table: pd.DataFrame, model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  prior: str, snapshot: Snapshot, main: str = "flow", rows: str = "all observations",
                  config_digest: str = "", chunk: int = 4096) -> list[Path]:
    """Catalogs of every row of ``table``, streamed block by block (one block of PDFs in memory)."""
    from inference.posterior import default_grid, iter_posteriors, p_train_on
    from inference.priors import resolve

    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = load_models(model_dir)
    if main not in models or not models[main].spec.is_density:
        main = "flow" if "flow" in models else "mdn"
    model = models[main]
    missing = [f for f in model.feature_names if f not in table.columns]
    if missing:
        raise InputError(model_dir / main, f"the observations lack the model's features {missing}")
    grid = default_grid(model)
    target = resolve(prior, grid, p_train=p_train_on(model, grid), snapshot=snapshot)
    provenance = provenance_for(model_dir, main, models, target.name, snapshot, rows, config_digest)
    x = table[list(model.feature_names)].to_numpy()
    probe = catalog_columns(table.iloc[:1], {"values": {k: np.zeros(1, np.float32) for k in _SUMMARY_KEYS},
                                              "pdf": np.zeros((1, len(grid)), np.float32)})
    names = list(probe)
    paths = [out / "catalog.h5", out / "catalog.fits"]
    with HDF5CatalogWriter(paths[0], len(table), grid, names, provenance) as h5, \
            FITSCatalogWriter(paths[1], len(table), grid, names, provenance) as fits:
        for block in iter_posteriors(model, x, grid, target, chunk=chunk):
            part = table.iloc[block.start:block.start + len(block.pdf)]
            cols = catalog_columns(part, {"values": block.values, "pdf": block.pdf})
            h5.append(cols)
            fits.append(cols)
    return paths


_SUMMARY_KEYS = ("mode", "median", "mean", "std", "p16", "p84", "p025", "p975", "uncorrected_mode",
                 "uncorrected_mean")


def catalog_columns(test: pd.DataFrame, post: dict[str, Any]) -> dict[str, np.ndarray]:
    v = post["values"]
    cols = {
        "cluster_id": test["cluster_id"].to_numpy(np.int64),
        "los": test["los"].to_numpy(np.int16),
        "n_members": test["n_members"].to_numpy(np.int32),
        "sigma_v": test["sigma_v_biweight"].to_numpy(np.float32),
        **{f"log10_m200c_{k}": v[k] for k in ("mode", "median", "mean", "std", "p16", "p84", "p025", "p975")},
        "log10_m200c_uncorrected_mode": v["uncorrected_mode"],
        "log10_m200c_uncorrected_mean": v["uncorrected_mean"],
        "log10_m200c_pdf": post["pdf"],
    }
    if TARGET in test:
        cols["log10_m200c_true"] = test[TARGET].to_numpy(np.float32)
    return cols

"""The catalog stage: posterior mass catalogs (``catalog.h5`` and ``catalog.fits``) of a table of observations.

Both files have the same rows and columns (:mod:`catalogs.schema`); they are streamed block by block, so only one
block of PDFs is in memory. Called by ``clustermass infer`` and by the flow's catalogs task alike.

The catalog's model may be a set model (``main = "set"``, :mod:`models.set_model`): it reads the rows' members
(``members``, in the table's row order); its diagnostic columns (``ood_score``) score the rows' summary features of
its feature set, as for the flow.
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
from features.balance import every_host
from features.members import Members
from features.sets import CODES, INPUTS, NEEDS_COMPLETE_SAMPLE
from inference.diagnostics import edge_mass, flag_bits
from inference.posterior import SUMMARY_COLUMNS, PosteriorSetup, prepare, summary_columns
from models.io import model_feature_set, read_description
from models.model import TARGET, TrainedModel
from models.set_model import SET_KIND, TrainedSetModel, set_data
from models.stage import load_models
from models.typicality import ood_score
from pipeline.errors import InputError
from pipeline.provenance import code_version, model_digest, now
from pipeline.snapshot import Snapshot

#: observations per block of posteriors (memory: one block of PDFs)
CHUNK = 4096


def provenance_for(model_dir: Path, main: str, models: dict[str, TrainedModel | TrainedSetModel], target_name: str,
                   snapshot: Snapshot, rows: str, config_digest: str = "") -> dict[str, Any]:
    """The provenance every catalog carries (FITS header, HDF5 root attributes)."""
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


def catalog_sample(meta: dict[str, Any], cluster_id: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    """What a population analysis needs to know about the hosts a catalog of mock observations holds (provenance
    keys, README "Using the catalog in a cosmology analysis"):

    - ``volume``: the comoving volume the catalog's hosts sample, (Mpc/h)^3: the box's, times the fraction of the
      observed hosts whose rows are in the catalog (the held-out hosts are a random fraction of the hosts,
      independent of mass);
    - ``selection``: a JSON string ``{"edges": [...], "fraction": [...], "unit": ...}``, the probability that a
      host of true log10 M200c [Msun/h] was observed at all: 0 below the first edge (the host cut), the kept fraction
      of each mass-balanced bin between edges (:func:`features.balance.balanced_hosts`), 1 above the last edge.

    ``meta``: the observation set's metadata (:func:`features.io.observation_metadata`); ``cluster_id``: the host of
    every row of the observation table; ``keep``: which rows the catalog holds.
    """
    cut = float(meta["config"]["cylinder"]["host_log10_m200c_min"])
    host_selection = meta.get("host_selection") or every_host()
    edges = [float(e) for e in host_selection["edges"]] or [cut]
    hosts = np.unique(np.asarray(cluster_id))
    in_catalog = np.unique(np.asarray(cluster_id)[np.asarray(keep, bool)])
    box = float(meta["snapshot"]["box_size"])
    return {"volume": box**3 * len(in_catalog) / max(len(hosts), 1),
            "selection": json.dumps({"edges": edges, "fraction": [float(f) for f in host_selection["fraction"]],
                                     "unit": "log10 M200c [Msun/h]; fraction of hosts observed"})}


def grid_priors(setup: PosteriorSetup) -> dict[str, np.ndarray]:
    """The priors a catalog made under ``setup`` stores, per dex on its grid (:data:`catalogs.schema.PRIORS`): the
    target prior (``exp(log_density)``, normalised on the grid by the trapezoid rule, as the PDFs are) and the
    training (interim) prior, the model's KDE of its training log10 M200c evaluated on the grid as it is."""
    log_p = np.asarray(setup.target.log_density, dtype=np.float64)
    target = np.exp(log_p - np.max(log_p))
    return {"target_prior": target / np.trapezoid(target, setup.grid),
            "training_prior": np.asarray(setup.p_train, dtype=np.float64)}


def catalog_stage(table: pd.DataFrame, model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  prior: str, snapshot: Snapshot, main: str = "flow", rows: str = "all observations",
                  config_digest: str = "", chunk: int = CHUNK, members: Members | None = None,
                  sample: dict[str, Any] | None = None) -> list[Path]:
    """Catalogs of every row of ``table`` (a feature table) under the target ``prior``: ``out/catalog.h5`` and
    ``out/catalog.fits``.

    ``main``: the density model that fills the catalog (``flow``, ``mdn`` or ``set``; the flow, else the MDN, if
    ``main`` was not trained); ``rows``: what the rows are, for the provenance; ``members``: the rows' member arrays
    (same order), which a set model reads (required when it fills the catalog); ``sample``: the volume and the
    selection function of the rows' hosts (:func:`catalog_sample`), added to the provenance.
    """
    model_dir, out = Path(model_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = load_models(model_dir)
    if main not in models or not models[main].spec.is_density:
        main = "flow" if "flow" in models else "mdn"
    model = models[main]
    missing = [f for f in model.feature_names if f not in table.columns]
    if missing:
        raise InputError(model_dir / main, f"the observations lack the model's features {missing}")
    if isinstance(model, TrainedSetModel) and (members is None or members.n_obs != len(table)):
        raise InputError(model_dir / main, f"the set model reads every observation's members: expected the members "
                                           f"of the {len(table)} rows (members.h5), got "
                                           f"{'none' if members is None else members.n_obs}")
    setup = prepare(model, prior, snapshot=snapshot)
    description = read_description(model_dir / main)
    feature_set = model_feature_set(description, model_dir / main)
    provenance = provenance_for(model_dir, main, models, setup.target.name, snapshot, rows, config_digest)
    provenance["model_inputs"] = f"{feature_set}: {INPUTS[feature_set]}"
    provenance["model_kind"] = SET_KIND if isinstance(model, TrainedSetModel) else model.spec.kind
    provenance.update(sample or {})
    x = table[list(model.feature_names)].to_numpy()  # the summary features: the flow's inputs, every diagnostic's
    inputs = set_data(model, members) if isinstance(model, TrainedSetModel) else x
    diagnose = Diagnostics(description, CODES[feature_set], feature_set in NEEDS_COMPLETE_SAMPLE)
    probe = catalog_columns(table.iloc[:1], {k: np.zeros(1, np.float32) for k in SUMMARY_COLUMNS},
                            np.zeros((1, len(setup.grid)), np.float32),
                            diagnose(x[:1], setup.grid, np.ones((1, len(setup.grid))), table.iloc[:1]))
    names = list(probe)
    paths = [out / "catalog.h5", out / "catalog.fits"]
    priors = grid_priors(setup)
    with HDF5CatalogWriter(paths[0], len(table), setup.grid, names, provenance, priors=priors) as h5, \
            FITSCatalogWriter(paths[1], len(table), setup.grid, names, provenance, priors=priors) as fits:
        for block in setup.blocks(inputs, chunk=chunk):
            part = table.iloc[block.start:block.start + len(block.pdf)]
            xb = x[block.start:block.start + len(block.pdf)]
            cols = catalog_columns(part, block.values, block.pdf,
                                   diagnose(xb, setup.grid, block.pdf, part, posterior=block.flags))
            h5.append(cols)
            fits.append(cols)
    return paths


class Diagnostics:
    """The diagnostic columns of catalog rows (:mod:`inference.diagnostics`) under one model's description."""

    def __init__(self, description: dict[str, Any], code: int, uses_richness: bool) -> None:
        self.stats = description.get("typicality")
        self.members = description.get("training_members")
        self.code = code
        self.uses_richness = uses_richness

    def __call__(self, x: np.ndarray, grid: np.ndarray, pdf: np.ndarray, rows: pd.DataFrame, *,
                 far_redshift: np.ndarray | bool = False, posterior: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The columns of rows with features ``x`` (raw), posteriors ``pdf`` on ``grid`` and catalog ``rows``;
        ``posterior``: the flag bits of the posterior evaluation (``PosteriorBlock.flags``)."""
        n = len(x)
        ood = ood_score(x, self.stats) if self.stats else np.ones(n)
        edge = edge_mass(grid, pdf)
        count = rows["n_members"].to_numpy()
        few = count < self.members[0] if self.members else np.zeros(n, bool)
        rich = (count > self.members[1]) & self.uses_richness if self.members else np.zeros(n, bool)
        return {"ood_score": ood.astype(np.float32), "edge_mass": edge.astype(np.float32),
                "flags": flag_bits(ood, edge, few_members=few, far_redshift=far_redshift, rich=rich,
                                   posterior=posterior),
                "model_inputs": np.full(n, self.code, np.int16)}


def catalog_columns(rows: pd.DataFrame, values: dict[str, np.ndarray], pdf: np.ndarray,
                    diagnostics: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The catalog columns of feature-table ``rows`` with their posterior summaries ``values``, ``pdf`` (N, G) and
    the diagnostic columns (``ood_score``, ``edge_mass``, ``flags``, ``model_inputs``)."""
    cols = {
        "cluster_id": rows["cluster_id"].to_numpy(np.int64),
        "los": rows["los"].to_numpy(np.int16),
        "n_members": rows["n_members"].to_numpy(np.int32),
        "sigma_v": rows["sigma_v_biweight"].to_numpy(np.float32),
        **summary_columns(values),
        "log10_m200c_pdf": pdf,
    }
    if TARGET in rows:
        cols["log10_m200c_true"] = rows[TARGET].to_numpy(np.float32)
    return cols | (diagnostics or {})

"""Catalogs of real clusters: one galaxy table, one table of cluster centres, the same HDF5/FITS catalogs as a run.

``clustermass infer --members GALAXIES --clusters CENTRES --model DIR --out OUT``:

* ``CENTRES`` (CSV, ECSV, FITS or HDF5): ``id`` (integer), ``ra``, ``dec`` [deg], ``z``;
* ``GALAXIES``: ``ra``, ``dec`` [deg], ``z``, and optionally ``log10_mstar`` [log10 Msun] (then a model with stellar
  masses may answer, under its stellar-mass floor).

Both are read and checked by :mod:`inference.member_table` (units converted where the file states them).

For each cluster the galaxies inside the model's cylinder (comoving projected radius and line-of-sight velocity
window of :func:`features.sky.project`, with the model's cosmology) are its members; the features, the corrected
posterior and the diagnostics (:mod:`inference.diagnostics`) follow exactly as in ``clustermass query``. Rows that
cannot be used — an empty cell, a non-finite or out-of-range value, a galaxy repeating an earlier row, a duplicate
id, a cluster with too few members — are skipped, counted and named (file, row, column) in the returned report;
nothing is dropped silently. What no row can fix (both sky and projected coordinates, a unit that cannot be
converted, a value that is not a number, stellar masses that look linear) is refused with one error line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalogs.fits import FITSCatalogWriter
from catalogs.hdf5 import HDF5CatalogWriter
from catalogs.stage import CHUNK, Diagnostics, catalog_columns
from features.definitions import compute_features
from features.sets import CODES, INPUTS
from features.sky import angular_separation, comoving_distance
from features.sky import project as sky_project
from inference.member_table import SKY, checked_rows, open_centres, open_members, skipped, unit_notes
from inference.posterior import SUMMARY_COLUMNS, prepare
from inference.priors import DEFAULT_PRIOR
from inference.query import ABSOLUTE_MIN_MEMBERS, REDSHIFT_TOLERANCE, choose_model
from inference.selection import require_magnitudes, select_members, uses_stellar_masses
from models.io import load_model
from pipeline.errors import InputError
from pipeline.provenance import code_version, digest_files, digest_json, model_digest, now
from pipeline.snapshot import Snapshot


@dataclass
class RealReport:
    """What :func:`real_catalog` did: the catalogs written, the model used, and every row it skipped and why."""

    paths: list[Path]
    model: str
    feature_set: str
    clusters: int
    skipped_clusters: list[str] = field(default_factory=list)
    skipped_galaxies: list[str] = field(default_factory=list)
    considered: list[dict[str, Any]] = field(default_factory=list)
    #: warnings and unit conversions, one line each
    notes: list[str] = field(default_factory=list)


def config_digest(prior: str, far_redshift: str, feature_set: str, cylinder: dict[str, Any]) -> str:
    """The provenance's ``config_digest`` of a real catalog: the SHA-256 of what configured it, as a run's catalog
    carries the digest of its configuration. That is the options (the target prior, by name or, for a table file,
    by its content; the ``--far-redshift`` policy) and the selection that made the members (the model's feature
    set and cylinder, the fewest members kept and the redshift tolerance). The model and the data are not
    configuration: the model has its own key (``model_digest``) and ``rows`` names the two files."""
    prior_file = Path(prior)
    return digest_json({
        "command": "infer",
        "prior": {"table_sha256": digest_files([prior_file])} if prior_file.is_file() else prior,
        "far_redshift": far_redshift,
        "selection": {"feature_set": feature_set, "cylinder": cylinder, "min_members": ABSOLUTE_MIN_MEMBERS,
                      "redshift_tolerance": REDSHIFT_TOLERANCE},
    })


def real_catalog(members_path: str | os.PathLike[str], clusters_path: str | os.PathLike[str],
                 model_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 prior: str = DEFAULT_PRIOR, far_redshift: str = "warn") -> RealReport:
    """Posterior mass catalogs ``out/catalog.h5`` and ``out/catalog.fits`` of the clusters of ``clusters_path``
    from the galaxies of ``members_path`` (see the module docstring). ``far_redshift``: ``"warn"`` flags
    (REDSHIFT) clusters further than the tolerance from the model's snapshot redshift, ``"refuse"`` skips them."""
    gpath, cpath, out = Path(members_path), Path(clusters_path), Path(out)
    galaxies, clusters = open_members(gpath), open_centres(cpath)
    if galaxies.system != "sky":
        raise InputError(gpath, "expected sky coordinates ra, dec [deg] and z for a galaxy table (projected r_proj, "
                                "v_los belong to one cluster: use `clustermass query`)")
    has_mstar = galaxies.has("log10_mstar")
    directory, description, feature_set, considered = choose_model(model_path, has_mstar, members_path=gpath)
    model = load_model(directory)
    meta = description.get("observations") or {}
    if not meta.get("config") or not meta.get("snapshot"):
        raise InputError(directory, "the model does not record its cylinder and snapshot; retrain it")
    cyl = meta["config"]["cylinder"]
    snap = Snapshot.from_dict(meta["snapshot"])
    uses_mstar = uses_stellar_masses(feature_set)
    require_magnitudes(cyl, snap, galaxies.has("mag_r"), gpath)
    names = [*SKY, *(["log10_mstar"] if uses_mstar else []), *(["mag_r"] if cyl.get("r_limit") is not None else [])]
    g_checked = checked_rows(galaxies, names, h=snap.cosmology.h)
    g_ok = ~g_checked.bad()
    g_ra, g_dec, g_z = (g_checked.values[k] for k in SKY)
    g_m = g_checked.values.get("log10_mstar", np.full(len(g_ra), np.nan))
    g_mag = g_checked.values.get("mag_r")
    notes = unit_notes(galaxies, names, h=snap.cosmology.h) + unit_notes(clusters, SKY)
    skipped_galaxies = skipped(galaxies, g_checked, "galaxy")
    if (~g_ok).any():
        skipped_galaxies.append(f"{gpath}: {int((~g_ok).sum())} galaxy rows skipped in all")
    c_checked = checked_rows(clusters, SKY, h=snap.cosmology.h, duplicates=False)
    c_ok = ~c_checked.bad()
    c_ra, c_dec, c_z = (c_checked.values[k] for k in SKY)
    skipped_clusters = skipped(clusters, c_checked, "cluster")
    ids, _ = clusters.values("id")
    bad_id = ~(np.isfinite(ids) & (ids == np.round(ids)))
    for row in np.flatnonzero(bad_id & c_ok):
        skipped_clusters.append(f"{cpath}: column 'id', row {row + 1}: cluster skipped, expected an integer id")
    c_ok &= ~bad_id
    seen: set[int] = set()
    for row in np.flatnonzero(c_ok):
        if int(ids[row]) in seen:
            skipped_clusters.append(f"{cpath}: column 'id', row {row + 1}: cluster skipped, duplicate id "
                                    f"{int(ids[row])}")
            c_ok[row] = False
        seen.add(int(ids[row]))

    if far_redshift == "refuse":
        for row in np.flatnonzero(c_ok & (np.abs(c_z - snap.redshift) > REDSHIFT_TOLERANCE)):
            skipped_clusters.append(f"{cpath}: column 'z', row {row + 1} (id {int(ids[row])}): cluster skipped, "
                                    f"z = {c_z[row]:.3f} is more than {REDSHIFT_TOLERANCE} from the model's snapshot "
                                    f"z = {snap.redshift:.3f} (--far-redshift refuse)")
            c_ok[row] = False
    gi = np.flatnonzero(g_ok)
    rows, offsets, r_all, v_all, m_all = [], [0], [], [], []
    for row in np.flatnonzero(c_ok):
        centre = (float(c_ra[row]), float(c_dec[row]), float(c_z[row]))
        # a cheap pre-selection on angle before the exact projection
        theta_max = 1.5 * cyl["r_aperture"] / max(comoving_distance(centre[2], snap.cosmology), 1e-6)
        near = gi[angular_separation(g_ra[gi], g_dec[gi], centre[0], centre[1]) < theta_max]
        r, v = sky_project(g_ra[near], g_dec[near], g_z[near], centre, snap.cosmology)
        inside, _ = select_members(cyl, snap, feature_set, r, v, g_m[near],
                                   None if g_mag is None else g_mag[near], centre[2])
        if inside.sum() < ABSOLUTE_MIN_MEMBERS:
            skipped_clusters.append(f"{cpath}: row {row + 1} (id {int(ids[row])}): cluster skipped, only "
                                    f"{int(inside.sum())} members inside the model's selection; expected at least "
                                    f"{ABSOLUTE_MIN_MEMBERS}")
            continue
        rows.append(row)
        r_all.append(r[inside])
        v_all.append(v[inside])
        m_all.append(np.nan_to_num(g_m[near][inside]))
        offsets.append(offsets[-1] + int(inside.sum()))
    if not rows:
        raise InputError(cpath, "no cluster has enough members inside the model's selection; nothing to write")
    offsets_arr = np.asarray(offsets)
    feats = compute_features(offsets_arr, np.concatenate(r_all), np.concatenate(v_all), np.concatenate(m_all),
                             r_aperture=cyl["r_aperture"])
    x = np.column_stack([feats[name] for name in model.feature_names])
    finite = np.isfinite(x).all(axis=1)
    for k in np.flatnonzero(~finite):
        skipped_clusters.append(f"{cpath}: row {rows[k] + 1} (id {int(ids[rows[k]])}): cluster skipped, its "
                                "features are undefined (identical velocities?)")
    keep = np.flatnonzero(finite)
    rows_arr = np.asarray(rows)[keep]
    x = x[keep]
    n_members = np.diff(offsets_arr)[keep]
    import pandas as pd

    table = pd.DataFrame({"cluster_id": ids[rows_arr].astype(np.int64), "los": np.zeros(len(keep), np.int16),
                          "n_members": n_members.astype(np.int32),
                          "sigma_v_biweight": np.asarray(feats["sigma_v_biweight"])[keep]})
    setup = prepare(model, prior, snapshot=snap)
    far = np.abs(c_z[rows_arr] - snap.redshift) > REDSHIFT_TOLERANCE
    provenance = {
        "code_version": code_version(), "config_digest": config_digest(prior, far_redshift, feature_set, cyl),
        "model": str(directory),
        "model_digest": model_digest(directory), "training_data_sha256": model.data_digest,
        "target_prior": setup.target.name,
        "training_prior": f"KDE of {model.training_prior.n_train} training log10 M200c",
        "cosmology": json.dumps(snap.cosmology.to_dict()), "snapshot": json.dumps(snap.to_dict()),
        "rows": f"real clusters of {cpath.name} with members from {gpath.name}",
        "model_inputs": f"{feature_set}: {INPUTS[feature_set]}", "created": now(),
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "catalog.h5", out / "catalog.fits"]
    # every real cluster richer than any training cluster is flagged (RICHNESS), whatever the model's inputs: a
    # dynamics model never saw dispersions measured that precisely
    diagnose = Diagnostics(description, CODES[feature_set], True)
    with HDF5CatalogWriter(paths[0], len(table), setup.grid, _names(table, setup.grid), provenance) as h5, \
            FITSCatalogWriter(paths[1], len(table), setup.grid, _names(table, setup.grid), provenance) as fits:
        for block in setup.blocks(x, chunk=CHUNK):
            sl = slice(block.start, block.start + len(block.pdf))
            diag = diagnose(x[sl], setup.grid, block.pdf, table.iloc[sl], far_redshift=far[sl], posterior=block.flags)
            cols = catalog_columns(table.iloc[sl], block.values, block.pdf, diag)
            h5.append(cols)
            fits.append(cols)
    return RealReport(paths, str(directory), feature_set, len(table), skipped_clusters, skipped_galaxies,
                      considered, notes)


def _names(table: Any, grid: np.ndarray) -> list[str]:
    probe = catalog_columns(table.iloc[:1], {k: np.zeros(1, np.float32) for k in SUMMARY_COLUMNS},
                            np.zeros((1, len(grid)), np.float32),
                            {"ood_score": np.zeros(1, np.float32), "edge_mass": np.zeros(1, np.float32),
                             "flags": np.zeros(1, np.int32), "model_inputs": np.zeros(1, np.int16)})
    return list(probe)

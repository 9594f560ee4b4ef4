"""Catalogs of real clusters: one galaxy table, one table of cluster centres, the same HDF5/FITS catalogs as a run.

``clustermass infer --members GALAXIES --clusters CENTRES --model DIR --out OUT``:

* ``CENTRES`` (CSV, ECSV, FITS or HDF5): ``id`` (integer), ``ra``, ``dec`` [deg], ``z``;
* ``GALAXIES``: ``ra``, ``dec`` [deg], ``z``, and optionally ``log10_mstar`` [log10 Msun] (then a model with stellar
  masses may answer, under its stellar-mass floor).

Both are read and checked by :mod:`inference.member_table` (units converted where the file states them).

For each cluster the galaxies inside the model's cylinder (comoving projected radius and line-of-sight velocity
window of :func:`features.sky.project`, with the model's cosmology) are its members; the features, the corrected
posterior and the diagnostics (:mod:`inference.diagnostics`) follow exactly as in ``clustermass query``: the same
model answers (a run's set model before its flow, :func:`inference.query.choose_model`), a set model reading every
cluster's members as a set, and the provenance's ``model_kind`` says which family it was. Rows that
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
from catalogs.stage import CHUNK, Diagnostics, catalog_columns, grid_priors
from features.definitions import compute_features
from features.sets import CODES, INPUTS
from features.sky import angular_separation, comoving_distance
from features.sky import project as sky_project
from inference.member_table import SKY, MemberFile, checked_rows, open_centres, open_members, skipped, unit_notes
from inference.posterior import SUMMARY_COLUMNS, ModelInputs, prepare
from inference.priors import DEFAULT_PRIOR
from inference.query import ABSOLUTE_MIN_MEMBERS, choose_model
from inference.selection import REDSHIFT_TOLERANCE, ModelSelection, model_selection, select_members
from models.io import load_model
from models.model import TrainedModel
from models.set_batches import MEMBER_INPUTS, SetData
from models.set_model import SET_KIND, TrainedSetModel, members_from_arrays, set_data
from pipeline.errors import InputError
from pipeline.provenance import code_version, digest_files, digest_json, model_digest, now


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
    #: the family that answered: ``"set"`` (members as a set, :mod:`models.set_model`), ``"flow"`` or ``"mdn"``
    model_kind: str = ""


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


@dataclass(frozen=True)
class _Galaxies:
    """The galaxy table's columns in canonical units (ra, dec [deg], z; log10 M* [log10 Msun], NaN where the model
    needs none; apparent mag_r, None unless the model is magnitude-limited) and the rows that passed every check."""

    ra: np.ndarray
    dec: np.ndarray
    z: np.ndarray
    log10_mstar: np.ndarray
    mag_r: np.ndarray | None
    usable: np.ndarray  # row indices


@dataclass(frozen=True)
class _Centres:
    """The centres table: ids, ra, dec [deg], z, and which rows are still to be answered (``ok``, updated as
    clusters are skipped)."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    z: np.ndarray
    ok: np.ndarray


@dataclass(frozen=True)
class _Members:
    """The members of the clusters answered (rows of the centres table), ragged: cluster k's are
    ``offsets[k]:offsets[k + 1]`` of r_proj [Mpc/h], v_los [km/s] and log10 M* [log10 Msun; 0 where unknown]."""

    rows: list[int]
    offsets: np.ndarray
    r_proj: np.ndarray
    v_los: np.ndarray
    log10_mstar: np.ndarray


def _open_tables(gpath: Path, cpath: Path) -> tuple[MemberFile, MemberFile]:
    """The galaxy table (sky coordinates only: projected ones belong to one cluster) and the centres table."""
    galaxies, clusters = open_members(gpath), open_centres(cpath)
    if galaxies.system != "sky":
        raise InputError(gpath, "expected sky coordinates ra, dec [deg] and z for a galaxy table (projected r_proj, "
                                "v_los belong to one cluster: use `clustermass query`)")
    return galaxies, clusters


def _usable_galaxies(galaxies: MemberFile, names: list[str], h: float) -> tuple[_Galaxies, list[str]]:
    """The galaxy columns ``names`` checked row by row, and one line per skipped row (then their count)."""
    checked = checked_rows(galaxies, names, h=h)
    ok = ~checked.bad()
    ra, dec, z = (checked.values[k] for k in SKY)
    lines = skipped(galaxies, checked, "galaxy")
    if (~ok).any():
        lines.append(f"{galaxies.path}: {int((~ok).sum())} galaxy rows skipped in all")
    sample = _Galaxies(ra, dec, z, checked.values.get("log10_mstar", np.full(len(ra), np.nan)),
                       checked.values.get("mag_r"), np.flatnonzero(ok))
    return sample, lines


def _usable_centres(clusters: MemberFile, selection: ModelSelection, far_redshift: str
                    ) -> tuple[_Centres, list[str]]:
    """The centres checked row by row, then for an integer id seen once, then (``far_redshift="refuse"``) for a
    redshift near the model's snapshot; one line per skipped row."""
    cpath = clusters.path
    checked = checked_rows(clusters, SKY, h=selection.snapshot.cosmology.h, duplicates=False)
    ok = ~checked.bad()
    lines = skipped(clusters, checked, "cluster")
    ids, _ = clusters.values("id")
    bad_id = ~(np.isfinite(ids) & (ids == np.round(ids)))
    for row in np.flatnonzero(bad_id & ok):
        lines.append(f"{cpath}: column 'id', row {row + 1}: cluster skipped, expected an integer id")
    ok &= ~bad_id
    seen: set[int] = set()
    for row in np.flatnonzero(ok):
        if int(ids[row]) in seen:
            lines.append(f"{cpath}: column 'id', row {row + 1}: cluster skipped, duplicate id {int(ids[row])}")
            ok[row] = False
        seen.add(int(ids[row]))
    z = checked.values["z"]
    if far_redshift == "refuse":
        snapshot_z = selection.snapshot.redshift
        for row in np.flatnonzero(ok & selection.far_from_snapshot(z)):
            lines.append(f"{cpath}: column 'z', row {row + 1} (id {int(ids[row])}): cluster skipped, "
                         f"z = {z[row]:.3f} is more than {REDSHIFT_TOLERANCE} from the model's snapshot "
                         f"z = {snapshot_z:.3f} (--far-redshift refuse)")
            ok[row] = False
    return _Centres(ids, checked.values["ra"], checked.values["dec"], z, ok), lines


def _members(galaxies: _Galaxies, centres: _Centres, selection: ModelSelection, cpath: Path,
             skipped_clusters: list[str]) -> _Members:
    """Each usable centre's members: the usable galaxies inside the model's selection around it (projected with
    the model's cosmology); a centre with fewer than :data:`ABSOLUTE_MIN_MEMBERS` is skipped (a line appended to
    ``skipped_clusters``), and none left is one error line."""
    cyl, snap, gi = selection.cylinder, selection.snapshot, galaxies.usable
    rows, offsets, r_all, v_all, m_all = [], [0], [], [], []
    for row in np.flatnonzero(centres.ok):
        centre = (float(centres.ra[row]), float(centres.dec[row]), float(centres.z[row]))
        # a cheap pre-selection on angle before the exact projection
        theta_max = 1.5 * cyl["r_aperture"] / max(comoving_distance(centre[2], snap.cosmology), 1e-6)
        near = gi[angular_separation(galaxies.ra[gi], galaxies.dec[gi], centre[0], centre[1]) < theta_max]
        r, v = sky_project(galaxies.ra[near], galaxies.dec[near], galaxies.z[near], centre, snap.cosmology)
        inside, _ = select_members(cyl, snap, selection.feature_set, r, v, galaxies.log10_mstar[near],
                                   None if galaxies.mag_r is None else galaxies.mag_r[near], centre[2])
        if inside.sum() < ABSOLUTE_MIN_MEMBERS:
            skipped_clusters.append(f"{cpath}: row {row + 1} (id {int(centres.ids[row])}): cluster skipped, only "
                                    f"{int(inside.sum())} members inside the model's selection; expected at least "
                                    f"{ABSOLUTE_MIN_MEMBERS}")
            continue
        rows.append(row)
        r_all.append(r[inside])
        v_all.append(v[inside])
        m_all.append(np.nan_to_num(galaxies.log10_mstar[near][inside]))
        offsets.append(offsets[-1] + int(inside.sum()))
    if not rows:
        raise InputError(cpath, "no cluster has enough members inside the model's selection; nothing to write")
    return _Members(rows, np.asarray(offsets), np.concatenate(r_all), np.concatenate(v_all), np.concatenate(m_all))


def _feature_table(model: TrainedModel | TrainedSetModel, members: _Members, ids: np.ndarray, r_aperture: float,
                   cpath: Path, skipped_clusters: list[str]) -> tuple[Any, np.ndarray, np.ndarray]:
    """The catalog's leading columns (cluster_id, los, n_members, sigma_v_biweight), the model's feature matrix (a
    set model's: the summary features its diagnostics read) and the indices into ``members``' clusters of those
    whose features are defined; the others are skipped (a line appended to ``skipped_clusters``)."""
    import pandas as pd

    feats = compute_features(members.offsets, members.r_proj, members.v_los, members.log10_mstar,
                             r_aperture=r_aperture)
    rows = members.rows
    x = np.column_stack([feats[name] for name in model.feature_names])
    finite = np.isfinite(x).all(axis=1)
    for k in np.flatnonzero(~finite):
        skipped_clusters.append(f"{cpath}: row {rows[k] + 1} (id {int(ids[rows[k]])}): cluster skipped, its "
                                "features are undefined (identical velocities?)")
    keep = np.flatnonzero(finite)
    rows_arr = np.asarray(rows)[keep]
    n_members = np.diff(members.offsets)[keep]
    table = pd.DataFrame({"cluster_id": ids[rows_arr].astype(np.int64), "los": np.zeros(len(keep), np.int16),
                          "n_members": n_members.astype(np.int32),
                          "sigma_v_biweight": np.asarray(feats["sigma_v_biweight"])[keep]})
    return table, x[keep], keep


def _set_inputs(model: TrainedSetModel, members: _Members, keep: np.ndarray) -> SetData:
    """A set model's inputs: the members of the clusters ``keep`` (indices into ``members``' clusters, in catalog
    order) as sets (:func:`models.set_model.set_data`: r_proj, v_los and, for the ``full`` set, log10 M*)."""
    mstar = members.log10_mstar if "log10_mstar" in MEMBER_INPUTS[model.feature_set] else None
    sets = members_from_arrays(members.offsets, members.r_proj, members.v_los, mstar).take(keep)
    return set_data(model, sets)


def _write_catalogs(out: Path, table: Any, x: np.ndarray, setup: Any, diagnose: Diagnostics, far: np.ndarray,
                    provenance: dict[str, str], inputs: ModelInputs | None = None) -> list[Path]:
    """``out/catalog.h5`` and ``out/catalog.fits``, block by block: the rows of ``table``, their posteriors under
    ``setup`` from the model's ``inputs`` (default: the features ``x``; a set model's member sets), and their
    diagnostic columns from the features ``x`` (``far``: the REDSHIFT flag of each row)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "catalog.h5", out / "catalog.fits"]
    names, priors = _names(table, setup.grid), grid_priors(setup)
    with HDF5CatalogWriter(paths[0], len(table), setup.grid, names, provenance, priors=priors) as h5, \
            FITSCatalogWriter(paths[1], len(table), setup.grid, names, provenance, priors=priors) as fits:
        for block in setup.blocks(x if inputs is None else inputs, chunk=CHUNK):
            sl = slice(block.start, block.start + len(block.pdf))
            diag = diagnose(x[sl], setup.grid, block.pdf, table.iloc[sl], far_redshift=far[sl], posterior=block.flags)
            cols = catalog_columns(table.iloc[sl], block.values, block.pdf, diag)
            h5.append(cols)
            fits.append(cols)
    return paths


def real_catalog(members_path: str | os.PathLike[str], clusters_path: str | os.PathLike[str],
                 model_path: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 prior: str = DEFAULT_PRIOR, far_redshift: str = "warn") -> RealReport:
    """Posterior mass catalogs ``out/catalog.h5`` and ``out/catalog.fits`` of the clusters of ``clusters_path``
    from the galaxies of ``members_path`` (see the module docstring). ``far_redshift``: ``"warn"`` flags
    (REDSHIFT) clusters further than the tolerance from the model's snapshot redshift, ``"refuse"`` skips them."""
    gpath, cpath, out = Path(members_path), Path(clusters_path), Path(out)
    galaxies, clusters = _open_tables(gpath, cpath)
    directory, description, feature_set, considered = choose_model(model_path, galaxies.has("log10_mstar"),
                                                                    members_path=gpath)
    model = load_model(directory)
    selection = model_selection(directory, description, feature_set, members_path=gpath,
                                has_mag_r=galaxies.has("mag_r"))
    snap, names = selection.snapshot, selection.columns(SKY)
    sample, skipped_galaxies = _usable_galaxies(galaxies, names, snap.cosmology.h)
    notes = unit_notes(galaxies, names, h=snap.cosmology.h) + unit_notes(clusters, SKY)
    centres, skipped_clusters = _usable_centres(clusters, selection, far_redshift)
    members = _members(sample, centres, selection, cpath, skipped_clusters)
    table, x, keep = _feature_table(model, members, centres.ids, selection.cylinder["r_aperture"], cpath,
                                    skipped_clusters)
    rows = np.asarray(members.rows)[keep]
    is_set = isinstance(model, TrainedSetModel)
    kind = SET_KIND if is_set else model.spec.kind
    setup = prepare(model, prior, snapshot=snap)
    provenance = {
        "code_version": code_version(),
        "config_digest": config_digest(prior, far_redshift, feature_set, selection.cylinder),
        "model": str(directory),
        "model_digest": model_digest(directory), "training_data_sha256": model.data_digest,
        "target_prior": setup.target.name,
        "training_prior": f"KDE of {model.training_prior.n_train} training log10 M200c",
        "cosmology": json.dumps(snap.cosmology.to_dict()), "snapshot": json.dumps(snap.to_dict()),
        "rows": f"real clusters of {cpath.name} with members from {gpath.name}",
        "model_inputs": f"{feature_set}: {INPUTS[feature_set]}", "model_kind": kind, "created": now(),
    }
    # every real cluster richer than any training cluster is flagged (RICHNESS), whatever the model's inputs: a
    # dynamics model never saw dispersions measured that precisely
    diagnose = Diagnostics(description, CODES[feature_set], True)
    paths = _write_catalogs(out, table, x, setup, diagnose, selection.far_from_snapshot(centres.z[rows]), provenance,
                            _set_inputs(model, members, keep) if is_set else None)
    return RealReport(paths, str(directory), feature_set, len(table), skipped_clusters, skipped_galaxies,
                      considered, notes, kind)


def _names(table: Any, grid: np.ndarray) -> list[str]:
    probe = catalog_columns(table.iloc[:1], {k: np.zeros(1, np.float32) for k in SUMMARY_COLUMNS},
                            np.zeros((1, len(grid)), np.float32),
                            {"ood_score": np.zeros(1, np.float32), "edge_mass": np.zeros(1, np.float32),
                             "flags": np.zeros(1, np.int32), "model_inputs": np.zeros(1, np.int16)})
    return list(probe)

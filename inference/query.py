"""The single-cluster query (``clustermass query``): the posterior mass of one cluster from a members file.

The members are put through the same cylinder and feature definitions the model was trained with (stored in its
model.json), then the model's posterior is corrected to the chosen prior on the model's grid.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.definitions import compute_features
from features.sets import CODES, INPUTS, NEEDS_COMPLETE_SAMPLE, NEEDS_STELLAR_MASS, feature_set_of
from features.sky import estimate_centre, project
from inference.diagnostics import OOD_LIMIT, edge_mass, flag_bits, flag_names, ood_score
from inference.posterior import prepare, summary_columns
from inference.priors import DEFAULT_PRIOR
from inference.selection import describe as describe_selection
from inference.selection import require_magnitudes, select_members, uses_stellar_masses
from models.io import MODEL_JSON, load_model, read_description
from models.model import TrainedModel
from pipeline.cosmology import Cosmology
from pipeline.errors import InputError
from pipeline.snapshot import Snapshot

#: below this many members no posterior is given; below the training minimum, a warning
ABSOLUTE_MIN_MEMBERS = 3
#: a cluster further than this in redshift from the training snapshot gets a warning (or, with
#: ``far_redshift="refuse"``, no answer)
REDSHIFT_TOLERANCE = 0.05


@dataclass(frozen=True)
class QueryResult:
    summary: dict[str, Any]
    grid: np.ndarray
    pdf: np.ndarray
    warnings: tuple[str, ...]


def candidate_models(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself when it is a model directory; else the density models of a run's model directory (``path``
    or ``path/model``), richest feature set first (full, richness, dynamics), the flow before the MDN."""
    p = Path(path)
    if (p / MODEL_JSON).is_file():
        return [p]
    found = []
    for root in (p, p / "model"):
        for feature_set in ("full", "richness", "dynamics"):
            for kind in ("flow", "mdn"):
                d = root / kind if feature_set == "full" else root / feature_set / kind
                if (d / MODEL_JSON).is_file() and d not in found:
                    found.append(d)
                    break
        if found:
            return found
    raise InputError(p, "no trained model here (expected model.json, or flow/ or mdn/ from `clustermass train`)")


def read_members(path: str | os.PathLike[str]):
    """The members table (CSV, ECSV or FITS) as an astropy Table."""
    from astropy.table import Table

    p = Path(path)
    if not p.is_file():
        raise InputError(p, "members file not found")
    suffix = p.suffix.lower()
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits"}.get(suffix)
    if fmt is None:
        raise InputError(p, f"unknown members format '{suffix}'; expected .csv, .ecsv or .fits")
    try:
        return Table.read(p, format=fmt)
    except Exception as exc:  # astropy raises many types for unreadable files
        raise InputError(p, f"cannot read the members table ({exc.__class__.__name__}: {exc})") from None


def _column(table, name: str, path: Path) -> np.ndarray:
    values = np.asarray(table[name], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise InputError(path, f"expected finite numbers, found {values[bad[0]]}", column=name, row=int(bad[0]) + 1)
    return values


def query(model_path: str | os.PathLike[str], members_path: str | os.PathLike[str], *, prior: str = DEFAULT_PRIOR,
          centre: tuple[float, float, float] | None = None, inputs: str | None = None,
          far_redshift: str = "warn") -> QueryResult:
    """The posterior of one cluster from a members file, by the richest model whose inputs the file provides.

    A members file with ``log10_mstar`` can be answered by a ``full`` model (stellar masses; it assumes a sample
    complete above the model's stellar-mass floor, which is applied); without it, by a ``dynamics`` model (positions
    and redshifts only). The summary says which model answered, why the others did not, what the selection cut,
    and the diagnostics of :mod:`inference.diagnostics` (``ood_score``, ``edge_mass``, ``flags``). ``inputs``: use
    the model of this feature set only (e.g. ``"dynamics"`` to ignore the stellar masses a file has).
    ``far_redshift``: ``"warn"`` (flag REDSHIFT) or ``"refuse"`` when the cluster is further than
    :data:`REDSHIFT_TOLERANCE` from the model's snapshot redshift.
    """
    path = Path(members_path)
    table = read_members(path)
    directory, description, feature_set, considered = choose_model(model_path, "log10_mstar" in table.colnames,
                                                                    members_path=path, only=inputs)
    return _answer(directory, description, feature_set, table, path, prior=prior, centre=centre,
                   considered=considered, far_redshift=far_redshift)


def choose_model(model_path: str | os.PathLike[str], has_mstar: bool, *, members_path: Path,
                 only: str | None = None) -> tuple[Path, dict[str, Any], str, list[dict[str, Any]]]:
    """The richest model of ``model_path`` (:func:`candidate_models`) whose inputs a member list with (or without)
    stellar masses provides: (its directory, its model.json, its feature set, every model considered and why it
    was not used). ``only``: consider the models of this feature set only."""
    considered: list[dict[str, Any]] = []
    chosen = None
    for directory in candidate_models(model_path):
        description = read_description(directory)
        feature_set = description.get("feature_set") or feature_set_of(description.get("features", []))
        if only is not None and feature_set != only:
            considered.append({"model": str(directory), "feature_set": feature_set, "used": False,
                               "why_not": f"--inputs {only} was asked for"})
            continue
        if (feature_set in NEEDS_STELLAR_MASS or feature_set in NEEDS_COMPLETE_SAMPLE) and not has_mstar:
            why = ("needs stellar masses" if feature_set in NEEDS_STELLAR_MASS else
                   "needs stellar masses to apply its stellar-mass floor (a complete sample)")
            considered.append({"model": str(directory), "feature_set": feature_set, "used": False,
                               "why_not": f"{why}: the members file has no log10_mstar column"})
            continue
        if chosen is None:
            chosen = (directory, description, feature_set)
            considered.append({"model": str(directory), "feature_set": feature_set, "used": True})
        else:
            considered.append({"model": str(directory), "feature_set": feature_set, "used": False,
                               "why_not": "a richer model answered"})
    if chosen is None and only is not None and not any(c["feature_set"] == only for c in considered):
        raise InputError(model_path, f"no '{only}' model here; models: "
                                     f"{[c['feature_set'] for c in considered]}")
    if chosen is None:
        raise InputError(members_path, "expected a log10_mstar column [log10 Msun]: the only model here uses "
                                       "stellar-mass features (train a dynamics model, [train] feature_sets, to answer "
                                       "without it)", column="log10_mstar")
    return (*chosen, considered)


def _answer(model_dir: Path, description: dict[str, Any], feature_set: str, table, path: Path, *, prior: str,
            centre: tuple[float, float, float] | None, considered: list[dict[str, Any]],
            far_redshift: str = "warn") -> QueryResult:
    model: TrainedModel = load_model(model_dir)
    meta = description.get("observations") or {}
    if not meta.get("config") or not meta.get("snapshot"):
        raise InputError(model_dir, "the model does not record its cylinder and snapshot (trained by an older "
                                    "version?); retrain it with `clustermass train`")
    cyl = meta["config"]["cylinder"]
    snap = Snapshot.from_dict(meta["snapshot"])
    cosmology: Cosmology = snap.cosmology
    names = set(table.colnames)
    notes: list[str] = []
    if {"r_proj", "v_los"} <= names:
        r_proj, v_los = _column(table, "r_proj", path), _column(table, "v_los", path)
        z_c = None
    elif {"ra", "dec", "z"} <= names:
        ra, dec, z = _column(table, "ra", path), _column(table, "dec", path), _column(table, "z", path)
        if centre is None:
            centre = estimate_centre(ra, dec, z)
            notes.append(f"centre estimated from the members: ra {centre[0]:.5f}, dec {centre[1]:.5f}, "
                         f"z {centre[2]:.5f}")
        r_proj, v_los = project(ra, dec, z, centre, cosmology)
        z_c = centre[2]
    else:
        raise InputError(path, f"expected columns r_proj [Mpc/h] and v_los [km/s], or ra, dec [deg] and z; found "
                               f"{sorted(names)}")
    uses_mstar = uses_stellar_masses(feature_set)
    logm = _column(table, "log10_mstar", path) if "log10_mstar" in names else np.full(len(r_proj), np.nan)
    far = z_c is not None and abs(z_c - snap.redshift) > REDSHIFT_TOLERANCE
    if far and far_redshift == "refuse":
        raise InputError(path, f"cluster redshift {z_c:.3f} is more than {REDSHIFT_TOLERANCE} from the model's "
                               f"snapshot z = {snap.redshift:.3f}; train at the cluster's redshift ([synth] redshift) "
                               "or allow it with --far-redshift warn", column="z")
    if far:
        notes.append(f"warning: cluster redshift {z_c:.3f} is far from the model's snapshot z = "
                     f"{snap.redshift:.3f}; the posterior assumes the training redshift")
    require_magnitudes(cyl, snap, "mag_r" in names, path)
    mag_r = _column(table, "mag_r", path) if "mag_r" in names else None
    inside, cut = select_members(cyl, snap, feature_set, r_proj, v_los, logm, mag_r, z_c)
    if (~inside).any():
        what = describe_selection(cyl, feature_set)
        notes.append(f"selection: {int((~inside).sum())} of {len(inside)} members fall outside the model's selection "
                     f"({what}) and were dropped")
    r_proj, v_los, logm = r_proj[inside], v_los[inside], logm[inside]
    n = len(r_proj)
    if n < ABSOLUTE_MIN_MEMBERS:
        raise InputError(path, f"only {n} members inside the model's selection; expected at least "
                               f"{ABSOLUTE_MIN_MEMBERS} (the model was trained on >= {cyl['min_members']})")
    lo_hi = description.get("training_members") or [cyl["min_members"], None]
    few = n < lo_hi[0]
    rich = uses_mstar and lo_hi[1] is not None and n > lo_hi[1]
    if few:
        notes.append(f"warning: {n} members, fewer than the {lo_hi[0]} every training cluster had; "
                     "the posterior is an extrapolation")
    if rich:
        notes.append(f"warning: {n} members, more than any training cluster had ({lo_hi[1]}); the richness is "
                     "extrapolated")
    feats = compute_features(np.array([0, n]), r_proj, v_los, np.nan_to_num(logm), r_aperture=cyl["r_aperture"])
    x = np.array([[feats[name][0] for name in model.feature_names]])
    if not np.all(np.isfinite(x)):
        bad = [name for name in model.feature_names if not np.isfinite(feats[name][0])]
        raise InputError(path, f"features {bad} are undefined for these members (too few, or identical velocities)")
    setup = prepare(model, prior, snapshot=snap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = next(setup.blocks(x))
    stats = description.get("typicality")
    ood = float(ood_score(x, stats)[0]) if stats else None
    edge = float(edge_mass(setup.grid, block.pdf)[0])
    flags = int(flag_bits(np.array([1.0 if ood is None else ood]), np.array([edge]), few_members=np.array([few]),
                          far_redshift=bool(far), rich=np.array([rich]))[0])
    for name in flag_names(flags):
        if name in ("OUT_OF_DISTRIBUTION", "GRID_EDGE"):
            notes.append(f"flag {name}: " + (f"ood_score {ood:.2g} (< {OOD_LIMIT:g}: the features are unlike the "
                                             "training set's)" if name == "OUT_OF_DISTRIBUTION" else
                                             f"{edge:.2f} of the posterior lies within 0.05 dex of the grid's edge: "
                                             "the mass may be outside the training range"))
    summary = {
        **{name: float(value[0]) for name, value in summary_columns(block.values).items()},
        "n_members": n, "sigma_v": float(feats["sigma_v_biweight"][0]), "prior": setup.target.name,
        "model": str(model_dir), "model_inputs": feature_set, "model_inputs_code": CODES.get(feature_set, 0),
        "inputs": INPUTS.get(feature_set, ""), "models_considered": considered, "selection_cut": cut,
        "ood_score": ood, "edge_mass": edge, "flags": flags, "flag_names": flag_names(flags),
        "mass_unit": "log10 M200c [Msun/h]", "sigma_v_unit": "km/s", "notes": notes,
    }
    return QueryResult(summary, setup.grid, block.pdf[0], tuple(notes))

"""The single-cluster query (``clustermass query``): the posterior mass of one cluster from a members file.

The members are put through the same cylinder and feature definitions the model was trained with (stored in its
model.json), then the model's posterior is corrected to the chosen prior on the model's grid.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.definitions import compute_features
from features.sky import estimate_centre, project
from inference.posterior import prepare, summary_columns
from inference.priors import DEFAULT_PRIOR
from models.io import MODEL_JSON, load_model
from models.model import TrainedModel
from pipeline.cosmology import Cosmology
from pipeline.errors import InputError
from pipeline.snapshot import Snapshot

#: below this many members no posterior is given; below the training minimum, a warning
ABSOLUTE_MIN_MEMBERS = 3
#: a cluster further than this in redshift from the training snapshot gets a warning
REDSHIFT_TOLERANCE = 0.05


@dataclass(frozen=True)
class QueryResult:
    summary: dict[str, Any]
    grid: np.ndarray
    pdf: np.ndarray
    warnings: tuple[str, ...]


def find_model_dir(path: str | os.PathLike[str]) -> Path:
    """A model directory (with model.json), or a run's model/ directory holding flow/ or mdn/."""
    p = Path(path)
    if (p / MODEL_JSON).is_file():
        return p
    for sub in ("flow", "mdn", "model/flow", "model/mdn"):
        if (p / sub / MODEL_JSON).is_file():
            return p / sub
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
          centre: tuple[float, float, float] | None = None) -> QueryResult:
    model_dir = find_model_dir(model_path)
    model: TrainedModel = load_model(model_dir)
    meta = json.loads((model_dir / MODEL_JSON).read_text()).get("observations") or {}
    if not meta.get("config") or not meta.get("snapshot"):
        raise InputError(model_dir, "the model does not record its cylinder and snapshot (trained by an older "
                                    "version?); retrain it with `clustermass train`")
    cyl = meta["config"]["cylinder"]
    snap = Snapshot.from_dict(meta["snapshot"])
    cosmology: Cosmology = snap.cosmology
    path = Path(members_path)
    table = read_members(path)
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
    if "log10_mstar" in names:
        logm = _column(table, "log10_mstar", path)
    else:
        raise InputError(path, "expected a log10_mstar column [log10 Msun]: the model uses stellar-mass features",
                         column="log10_mstar")
    if z_c is not None and abs(z_c - snap.redshift) > REDSHIFT_TOLERANCE:
        notes.append(f"warning: cluster redshift {z_c:.3f} is far from the model's snapshot z = "
                     f"{snap.redshift:.3f}; the posterior assumes the training redshift")
    inside = (r_proj < cyl["r_aperture"]) & (np.abs(v_los) < cyl["v_cut"]) & (logm >= cyl["log10_mstar_min"])
    if (~inside).any():
        notes.append(f"warning: {int((~inside).sum())} of {len(inside)} members fall outside the training cylinder "
                     f"(r_proj < {cyl['r_aperture']} Mpc/h, |v_los| < {cyl['v_cut']} km/s, log10 M* >= "
                     f"{cyl['log10_mstar_min']}) and were dropped")
    r_proj, v_los, logm = r_proj[inside], v_los[inside], logm[inside]
    n = len(r_proj)
    if n < ABSOLUTE_MIN_MEMBERS:
        raise InputError(path, f"only {n} members inside the training cylinder; expected at least "
                               f"{ABSOLUTE_MIN_MEMBERS} (the model was trained on >= {cyl['min_members']})")
    if n < cyl["min_members"]:
        notes.append(f"warning: {n} members, fewer than the {cyl['min_members']} every training cluster had; "
                     "the posterior is an extrapolation")
    feats = compute_features(np.array([0, n]), r_proj, v_los, logm, r_aperture=cyl["r_aperture"])
    x = np.array([[feats[name][0] for name in model.feature_names]])
    if not np.all(np.isfinite(x)):
        bad = [name for name in model.feature_names if not np.isfinite(feats[name][0])]
        raise InputError(path, f"features {bad} are undefined for these members (too few, or identical velocities)")
    setup = prepare(model, prior, snapshot=snap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = next(setup.blocks(x))
    summary = {
        **{name: float(value[0]) for name, value in summary_columns(block.values).items()},
        "n_members": n, "sigma_v": float(feats["sigma_v_biweight"][0]), "prior": setup.target.name,
        "model": str(model_dir), "mass_unit": "log10 M200c [Msun/h]", "sigma_v_unit": "km/s",
        "notes": notes,
    }
    return QueryResult(summary, setup.grid, block.pdf[0], tuple(notes))


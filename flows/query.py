"""`clustermass query`: the posterior mass of one cluster from a members file.

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
from inference.posterior import default_grid, iter_posteriors, p_train_on
from inference.priors import resolve
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


def query(model_path: str | os.PathLike[str], members_path: str | os.PathLike[str], *, prior: str = "flat",
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
    grid = default_grid(model)
    target = resolve(prior, grid, p_train=p_train_on(model, grid), snapshot=snap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = next(iter_posteriors(model, x, grid, target))
    v = {k: float(block.values[k][0]) for k in block.values}
    summary = {
        "log10_m200c_mode": v["mode"], "log10_m200c_median": v["median"], "log10_m200c_mean": v["mean"],
        "log10_m200c_std": v["std"], "log10_m200c_p16": v["p16"], "log10_m200c_p84": v["p84"],
        "log10_m200c_p025": v["p025"], "log10_m200c_p975": v["p975"],
        "log10_m200c_uncorrected_mode": v["uncorrected_mode"], "log10_m200c_uncorrected_mean": v["uncorrected_mean"],
        "n_members": n, "sigma_v": float(feats["sigma_v_biweight"][0]), "prior": target.name,
        "model": str(model_dir), "mass_unit": "log10 M200c [Msun/h]", "sigma_v_unit": "km/s",
        "notes": notes,
    }
    return QueryResult(summary, grid, block.pdf[0], tuple(notes))


def plot_posterior(result: QueryResult, path: str | os.PathLike[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result.summary
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(result.grid, result.pdf, color="C0")
    ax.axvspan(s["log10_m200c_p16"], s["log10_m200c_p84"], color="C0", alpha=0.2, label="68% interval")
    ax.axvline(s["log10_m200c_mode"], color="C1", label=f"mode {s['log10_m200c_mode']:.3f}")
    ax.set_xlabel(r"$\log_{10} M_{200c}$ [$h^{-1} M_\odot$]")
    ax.set_ylabel("posterior density [1/dex]")
    ax.set_title(f"{s['n_members']} members, prior {s['prior']}", fontsize=9)
    ax.legend(fontsize=8)
    out = Path(path)
    tmp = out.with_name(f".{out.stem}.partial.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out

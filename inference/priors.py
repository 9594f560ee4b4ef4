"""Target priors over log10 M200c [Msun/h] for the interim-prior correction, tabulated on the posterior grid.

``flat`` (uniform in log10 M; the default), ``tinker08`` (the halo mass function dn/dlog10 M at the snapshot
redshift, via colossus), ``training`` (the model's own p_train: no correction), or a user table of two columns
(log10 M200c, density). Densities are per dex and need not be normalised.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.cosmology import colossus_cosmology
from pipeline.errors import ConfigError, InputError
from pipeline.snapshot import Snapshot

BUILTIN = ("flat", "tinker08", "training")
#: the target prior of catalogs and queries unless one is named
DEFAULT_PRIOR = "flat"


@dataclass(frozen=True)
class TargetPrior:
    """A prior tabulated on ``grid``: ``log_density`` (natural log, per dex, up to a constant)."""

    name: str
    grid: np.ndarray
    log_density: np.ndarray


def flat(grid: np.ndarray) -> TargetPrior:
    return TargetPrior("flat", np.asarray(grid), np.zeros(len(grid)))


def tinker08(grid: np.ndarray, snapshot: Snapshot) -> TargetPrior:
    """dn/dlog10 M200c of Tinker et al. (2008) at the snapshot's redshift and cosmology (colossus)."""
    from colossus.lss import mass_function

    m = 10.0 ** np.asarray(grid, dtype=np.float64)
    with colossus_cosmology(snapshot.cosmology):
        dndlnm = mass_function.massFunction(m, snapshot.redshift, mdef="200c", model="tinker08", q_out="dndlnM")
    return TargetPrior("tinker08", np.asarray(grid), np.log(np.maximum(dndlnm * np.log(10.0), 1e-300)))


def training(grid: np.ndarray, p_train: np.ndarray) -> TargetPrior:
    """The training distribution itself: the corrected posterior equals the network's."""
    return TargetPrior("training", np.asarray(grid), np.log(np.maximum(p_train, 1e-300)))


#: log10 M200c [Msun/h] a prior table's first column may hold: masses, not log10 masses, are refused
TABLE_LOG10_M_RANGE = (8.0, 17.0)
#: tolerance (dex) of the grid-coverage check: labels are stored as float32 (1e-6 dex near 15)
COVER_TOLERANCE = 1e-5


def read_table(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """A prior table checked on its own (no grid needed): ``(log10 M200c [Msun/h], density per dex)``, sorted.

    Two columns (text, CSV or ECSV, a header line naming them), finite values, log10 masses in [8, 17] (not linear
    masses), distinct, densities >= 0 and normalisable (a positive, finite integral). Raises :class:`InputError`
    naming the file, the column and the row.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "prior table not found" if not p.exists() else "is not a file, expected a prior table")
    try:
        from astropy.table import Table

        table = Table.read(p, format="ascii", encoding="utf-8-sig")  # a UTF-8 byte-order mark is skipped
        cols = table.colnames
        if len(cols) != 2:
            raise InputError(p, f"expected two columns (log10 M200c [Msun/h], density), found {len(cols)}: {cols}")
        x = np.asarray(table[cols[0]], dtype=np.float64)
        d = np.asarray(table[cols[1]], dtype=np.float64)
    except InputError:
        raise
    except Exception as exc:  # astropy raises many types for unreadable tables
        raise InputError(p, f"cannot read the prior table ({exc.__class__.__name__}: {exc})") from None
    if len(x) < 2:
        raise InputError(p, f"expected at least two rows (a density to interpolate), found {len(x)}")
    for name, values in ((cols[0], x), (cols[1], d)):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise InputError(p, f"expected a finite number, found {values[bad[0]]:g}", column=name,
                             row=int(bad[0]) + 1)
    lo, hi = TABLE_LOG10_M_RANGE
    outside = np.flatnonzero((x < lo) | (x > hi))
    if len(outside):
        k = int(outside[0])
        raise InputError(p, f"expected log10 M200c [Msun/h] in [{lo:g}, {hi:g}], found {x[k]:g}"
                            + (" (a linear mass? give log10 of it)" if x[k] > 1e3 else ""), column=cols[0], row=k + 1)
    if np.any(d < 0):
        row = int(np.flatnonzero(d < 0)[0]) + 1
        raise InputError(p, f"expected a non-negative density, found {d[row - 1]:g}", column=cols[1], row=row)
    order = np.argsort(x, kind="stable")
    x, d = x[order], d[order]
    if np.any(np.diff(x) <= 0):
        raise InputError(p, "log10 M values must be distinct", column=cols[0])
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.trapezoid(d, x))
    if not (math.isfinite(norm) and norm > 0):
        what = "zero everywhere" if norm == 0 else f"not normalisable (integral {norm:g})"
        raise InputError(p, f"the prior is {what}; expected a positive density somewhere", column=cols[1])
    return x, d


def check_covers(path: str | os.PathLike[str], x: np.ndarray, lo: float, hi: float, why: str = "grid") -> None:
    """Refuse a table whose log10 masses ``x`` do not span [lo, hi] (``why`` says what that range is)."""
    if x[0] > lo + COVER_TOLERANCE or x[-1] < hi - COVER_TOLERANCE:
        raise InputError(path, f"the table covers log10 M = [{x[0]:g}, {x[-1]:g}], expected the whole {why} "
                               f"[{lo:g}, {hi:g}]")


def from_table(path: str | os.PathLike[str], grid: np.ndarray) -> TargetPrior:
    """A user prior from a two-column text/CSV/ECSV table: log10 M200c [Msun/h], density (>= 0, per dex).

    The table (checked by :func:`read_table`) must cover the whole grid; it is interpolated linearly onto it.
    """
    p = Path(path)
    x, d = read_table(p)
    g = np.asarray(grid, dtype=np.float64)
    check_covers(p, x, float(g[0]), float(g[-1]))
    dens = np.interp(g, x, d)
    if not np.any(dens > 0):
        raise InputError(p, "the prior is zero everywhere on the grid")
    return TargetPrior(f"table:{p.name}", g, np.log(np.maximum(dens, 1e-300)))


def resolve(name: str, grid: np.ndarray, *, p_train: np.ndarray, snapshot: Snapshot | None) -> TargetPrior:
    """A prior by name (``flat``, ``tinker08``, ``training``) or a path to a table."""
    if name == "flat":
        return flat(grid)
    if name == "training":
        return training(grid, p_train)
    if name == "tinker08":
        if snapshot is None:
            raise ConfigError("the tinker08 prior needs the snapshot (redshift and cosmology)")
        return tinker08(grid, snapshot)
    if Path(name).suffix or os.sep in name:
        return from_table(name, grid)
    raise ConfigError(f"unknown prior '{name}'; expected one of {list(BUILTIN)} or a two-column table file")

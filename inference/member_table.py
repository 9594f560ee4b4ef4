"""Real members files and cluster centres, read and checked: the one reader of ``clustermass query`` and ``infer``.

A members file (CSV, ECSV, FITS or HDF5 via astropy) gives one coordinate system — sky ``ra``, ``dec`` [deg] and
``z``, or projected ``r_proj`` [comoving Mpc/h] and ``v_los`` [km/s] — plus optionally ``log10_mstar``
[log10 Msun] and apparent ``mag_r`` [AB mag]. A centres file (``infer --clusters``) gives ``id``, ``ra``, ``dec``
and ``z``. What is checked, each failure one line naming the file, the column and the 1-based data row:

* the coordinate system: exactly one (a file with both sky and projected columns is refused: which would be
  meant?), complete (``ra`` without ``z`` is refused);
* units, where the file states them (ECSV, FITS ``TUNIT``, HDF5 written with astropy's ``serialize_meta``):
  converted to the canonical unit (``kpc`` -> Mpc/h with the model's h, ``m/s`` -> km/s, ``rad`` -> deg) by
  :func:`ingest.units.member_conversion_factor`; a unit that cannot be converted is refused;
* values: numbers (a string such as ``10:20:30`` is refused, not parsed), no empty cells, finite, and in range
  (:data:`RANGES`: 0 <= ra < 360, -90 <= dec <= 90, 0 < z < 2, r_proj >= 0, ``|v_los| <= 30000 km/s``,
  0 < log10_mstar < 14, 0 < mag_r < 40);
* stellar masses that look linear (:func:`ingest.checks.stellar_mass_scale`, the rule ingest applies);
* repeated galaxies: rows identical in every column used.

``query`` refuses a file with any such problem (:func:`load_members`); ``infer`` skips the bad rows of its galaxy
and centres tables and names each one (:func:`checked_rows`), and refuses only what no row can fix (the
coordinate system, units, non-numbers, linear stellar masses).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest.checks import stellar_mass_scale
from ingest.units import member_conversion_factor
from pipeline.errors import ConfigError, InputError

SKY: tuple[str, ...] = ("ra", "dec", "z")
PROJECTED: tuple[str, ...] = ("r_proj", "v_los")
#: canonical unit of each column (the spelling :func:`ingest.units.member_conversion_factor` converts to)
UNITS: dict[str, str] = {"ra": "deg", "dec": "deg", "z": "", "r_proj": "Mpc/h", "v_los": "km/s",
                         "log10_mstar": "dex(Msun)", "mag_r": "mag", "id": ""}
#: the unit in words, for messages
UNIT_TEXT: dict[str, str] = {"ra": "deg", "dec": "deg", "z": "redshift", "r_proj": "comoving Mpc/h",
                             "v_los": "km/s", "log10_mstar": "log10 Msun", "mag_r": "apparent AB mag", "id": "integer"}
#: lowest and highest redshift accepted (exclusive): the features are defined for galaxies beyond the Local Group
#: and below z = 2, far beyond any model's training snapshot
Z_RANGE = (0.0, 2.0)
#: the largest line-of-sight velocity relative to a cluster accepted [km/s] (0.1 c): larger values are a file in
#: m/s, or recession velocities c z instead of c (z - z_c) / (1 + z_c)
V_LOS_MAX = 30000.0
#: log10 stellar masses accepted [log10 Msun] (exclusive): -99 and 0 are missing-value sentinels, not galaxies
LOG10_MSTAR_RANGE = (0.0, 14.0)
#: apparent magnitudes accepted (exclusive): 99 and -9999 are missing-value sentinels
MAG_R_RANGE = (0.0, 40.0)


@dataclass(frozen=True)
class Range:
    """What a valid value of one column is: ``ok(values) -> bool mask`` and the expectation in words."""

    ok: Callable[[np.ndarray], np.ndarray]
    expected: str


RANGES: dict[str, Range] = {
    "ra": Range(lambda v: (v >= 0.0) & (v < 360.0), "expected 0 <= ra < 360 deg"),
    "dec": Range(lambda v: np.abs(v) <= 90.0, "expected -90 <= dec <= 90 deg"),
    "z": Range(lambda v: (v > Z_RANGE[0]) & (v < Z_RANGE[1]), f"expected a redshift {Z_RANGE[0]:g} < z < "
                                                               f"{Z_RANGE[1]:g}"),
    "r_proj": Range(lambda v: v >= 0.0, "expected a projected distance r_proj >= 0 [comoving Mpc/h]"),
    "v_los": Range(lambda v: np.abs(v) <= V_LOS_MAX,
                   f"expected |v_los| <= {V_LOS_MAX:g} km/s (0.1 c): v_los is the velocity relative to the "
                   "cluster, c (z - z_c) / (1 + z_c), in km/s (a file in m/s, or recession velocities?)"),
    "log10_mstar": Range(lambda v: (v > LOG10_MSTAR_RANGE[0]) & (v < LOG10_MSTAR_RANGE[1]),
                         f"expected {LOG10_MSTAR_RANGE[0]:g} < log10_mstar < {LOG10_MSTAR_RANGE[1]:g} [log10 Msun] "
                         "(a missing-value sentinel? drop the row)"),
    "mag_r": Range(lambda v: (v > MAG_R_RANGE[0]) & (v < MAG_R_RANGE[1]),
                   f"expected an apparent magnitude {MAG_R_RANGE[0]:g} < mag_r < {MAG_R_RANGE[1]:g} "
                   "(a missing-value sentinel? drop the row)"),
}
#: file suffix -> astropy reader
FORMATS: dict[str, str] = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits",
                           ".h5": "hdf5", ".hdf5": "hdf5"}
#: rows named per problem before "and N more"
ROWS_NAMED = 5


def read_table(path: str | os.PathLike[str]) -> Any:
    """A members or centres file (:data:`FORMATS`) as an astropy Table, units as the file states them."""
    from astropy.table import Table

    p = Path(path)
    if not p.is_file():
        raise InputError(p, "members file not found" if not p.exists() else "expected a file, found a directory")
    suffix = p.suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise InputError(p, f"unknown members format '{suffix}'; expected one of {sorted(FORMATS)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns on units it does not know; they are checked below
            # text: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped, not read into the first column's name
            table = Table.read(p, format=fmt, **({"encoding": "utf-8-sig"} if fmt.startswith("ascii") else {}))
    except Exception as exc:  # astropy raises many types for unreadable files
        message = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(p, f"cannot read the table ({exc.__class__.__name__}: {message})") from None
    if len(table) == 0:
        raise InputError(p, "the table has no rows")
    return table


@dataclass(frozen=True)
class MemberFile:
    """A members (or centres) file: its table and its coordinate system (``"sky"`` or ``"projected"``)."""

    path: Path
    table: Any
    system: str

    def has(self, name: str) -> bool:
        return name in self.table.colnames

    def __len__(self) -> int:
        return len(self.table)

    def values(self, name: str, *, h: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Column ``name`` in its canonical unit (:data:`UNITS`; float64, NaN in empty cells) and the mask of its
        empty cells. ``h``: the model's Hubble parameter, for lengths stated without h. Refuses a unit that cannot
        be converted and a value that is not a number."""
        col = self.table[name]
        unit = getattr(col, "unit", None)
        factor = member_conversion_factor(None if unit is None else str(unit), UNITS[name], path=str(self.path),
                                          column=name, h=h)
        values, empty = _as_float(col, name, self.path)
        return values * factor if factor != 1.0 else values, empty


def open_members(path: str | os.PathLike[str]) -> MemberFile:
    """Read a members file and find its one coordinate system (see the module docstring)."""
    p = Path(path)
    table = read_table(p)
    names = set(table.colnames)
    sky, projected = [c for c in SKY if c in names], [c for c in PROJECTED if c in names]
    if sky and projected:
        raise InputError(p, f"has both sky ({', '.join(sky)}) and projected ({', '.join(projected)}) coordinates; "
                            "expected one system: ra, dec [deg] and z, or r_proj [Mpc/h] and v_los [km/s] (remove "
                            "the other columns)")
    if projected:
        missing, system = [c for c in PROJECTED if c not in names], "projected"
    elif sky:
        missing, system = [c for c in SKY if c not in names], "sky"
    else:
        raise InputError(p, f"expected columns r_proj [Mpc/h] and v_los [km/s], or ra, dec [deg] and z; found "
                            f"{sorted(names)}")
    if missing:
        raise InputError(p, f"expected column(s) {missing} with {system} coordinates "
                            f"({', '.join(PROJECTED if system == 'projected' else SKY)}); found {sorted(names)}",
                         column=missing[0])
    return MemberFile(p, table, system)


def open_centres(path: str | os.PathLike[str]) -> MemberFile:
    """Read a centres file (``infer --clusters``): ``id``, ``ra``, ``dec`` [deg], ``z``."""
    p = Path(path)
    table = read_table(p)
    missing = [c for c in ("id", *SKY) if c not in table.colnames]
    if missing:
        raise InputError(p, f"expected columns id, ra, dec [deg] and z; missing {missing}, found "
                            f"{sorted(table.colnames)}", column=missing[0])
    return MemberFile(p, table, "sky")


def _as_float(col: Any, name: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """float64 values of a column (NaN in empty cells) and the empty mask; a non-number is one error line."""
    empty = np.array(np.ma.getmaskarray(col), dtype=bool).reshape(len(col))
    data = np.asarray(np.ma.getdata(col))
    if data.ndim != 1:
        raise InputError(path, f"expected one number per row, found a {data.ndim}-dimensional column", column=name)
    if data.dtype.kind in "iuf":
        values = data.astype(np.float64)
    elif data.dtype.kind in "USO":
        text = np.char.strip(data.astype(str))
        empty |= text == ""
        values = np.full(len(data), np.nan)
        try:
            values[~empty] = text[~empty].astype(np.float64)
        except ValueError:
            for i in np.flatnonzero(~empty):
                try:
                    values[i] = float(text[i])
                except ValueError:
                    raise InputError(path, f"expected a number [{UNIT_TEXT.get(name, '')}], found "
                                           f"{str(text[i])!r}{_hint(name, str(text[i]))}", column=name,
                                     row=int(i) + 1) from None
    else:
        first = data[0] if len(data) else ""
        raise InputError(path, f"expected numbers [{UNIT_TEXT.get(name, '')}], found {data.dtype} values such as "
                               f"{first!r}", column=name, row=1)
    values[empty] = np.nan
    return values, empty


def _hint(name: str, text: str) -> str:
    if name in ("ra", "dec") and re.search(r"\d[\s:hdms°'\"]+\d", text):
        return " (sexagesimal? give decimal degrees)"
    return ""


def _rows(rows: np.ndarray) -> str:
    """``rows`` (0-based) as 1-based data rows, the first few named."""
    shown = ", ".join(str(int(r) + 1) for r in rows[:ROWS_NAMED])
    more = f" and {len(rows) - ROWS_NAMED} more" if len(rows) > ROWS_NAMED else ""
    return f"{shown}{more}"


@dataclass
class Checked:
    """Columns in canonical units (float64) and, per bad row, what is wrong with it."""

    values: dict[str, np.ndarray]
    #: (column or None, 0-based rows, message), in the order found
    problems: list[tuple[str | None, np.ndarray, str]] = field(default_factory=list)

    def bad(self) -> np.ndarray:
        """Boolean mask of the rows with a problem."""
        n = len(next(iter(self.values.values())))
        out = np.zeros(n, bool)
        for _, rows, _ in self.problems:
            out[rows] = True
        return out


def checked_rows(mf: MemberFile, names: Sequence[str], *, h: float | None = None,
                 duplicates: bool = True) -> Checked:
    """Columns ``names`` of ``mf`` in canonical units, with every row problem found: empty cells, non-finite or
    out-of-range values (:data:`RANGES`), and (``duplicates``) rows repeating an earlier row in every one of
    ``names``. Refuses at once what no row can fix: a unit that cannot be converted, a non-number, stellar masses
    that look linear."""
    out = Checked({})
    for name in names:
        values, empty = mf.values(name, h=h)
        out.values[name] = values
        if name == "log10_mstar" and stellar_mass_scale(values) == "linear":
            top = int(np.nanargmax(values))
            raise InputError(mf.path, f"stellar masses look linear (largest value {values[top]:.3g}); expected "
                                      "log10_mstar = log10(M*/Msun)", column=name, row=top + 1)
        if empty.any():
            out.problems.append((name, np.flatnonzero(empty), "empty cell"))
        nonfinite = ~empty & ~np.isfinite(values)
        if nonfinite.any():
            first = values[np.flatnonzero(nonfinite)[0]]
            out.problems.append((name, np.flatnonzero(nonfinite), f"expected a finite number [{UNIT_TEXT[name]}], "
                                                                  f"found {first}"))
        rule = RANGES.get(name)
        if rule is not None:
            finite = np.isfinite(values)
            with np.errstate(invalid="ignore"):
                outside = finite & ~rule.ok(values)
            if outside.any():
                first = values[np.flatnonzero(outside)[0]]
                out.problems.append((name, np.flatnonzero(outside), f"{rule.expected}, found {first:g}"))
    if duplicates and names:
        good = np.flatnonzero(~out.bad())
        repeats, originals = _repeats(np.column_stack([out.values[n][good] for n in names]))
        if repeats.size:
            out.problems.append((None, good[repeats], f"repeats row {good[originals[0]] + 1} (identical "
                                                      f"{', '.join(names)}): each galaxy once"))
    return out


def _repeats(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of rows of ``stack`` (N, K) equal to an earlier row, and of the earlier row each repeats."""
    if len(stack) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    order = np.lexsort(stack.T[::-1])
    s = stack[order]
    same = np.all(s[1:] == s[:-1], axis=1)
    if not same.any():
        return np.zeros(0, int), np.zeros(0, int)
    # lexsort is stable: the first row of each run of equal rows is the earliest in the file, the original
    run_start = np.concatenate(([0], np.flatnonzero(~same) + 1))
    first_of = np.repeat(run_start, np.diff(np.concatenate((run_start, [len(s)]))))
    later = np.flatnonzero(np.concatenate(([False], same)))
    repeats, originals = order[later], order[first_of[later]]
    by_row = np.argsort(repeats, kind="stable")
    return repeats[by_row], originals[by_row]


def load_members(mf: MemberFile, names: Sequence[str], *, h: float | None = None) -> dict[str, np.ndarray]:
    """Columns ``names`` of a members file in canonical units, or one error line on the first problem
    (``clustermass query``: an answer from a file with a bad row would be an answer about another cluster)."""
    checked = checked_rows(mf, names, h=h)
    if checked.problems:
        column, rows, message = checked.problems[0]
        also = (f"; also rows {_rows(rows[1:])} ({len(rows)} in all): fix or remove them" if len(rows) > 1 else
                "; fix or remove the row")
        raise InputError(mf.path, f"{message}{also}", column=column, row=int(rows[0]) + 1)
    return checked.values


def skipped(mf: MemberFile, checked: Checked, what: str, *, limit: int = 20) -> list[str]:
    """One line per skipped row (at most ``limit`` per problem, then a count): ``infer`` names what it skips."""
    lines = []
    for column, rows, message in checked.problems:
        where = f"column '{column}', " if column is not None else ""
        for row in rows[:limit]:
            lines.append(f"{mf.path}: {where}row {row + 1}: {what} skipped: {message}")
        if len(rows) > limit:
            lines.append(f"{mf.path}: {where}{len(rows) - limit} more {what} rows skipped ({message})")
    return lines


def check_centre(centre: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``--center RA DEC Z`` checked as a members file's sky coordinates are (:data:`RANGES`)."""
    if centre is None:
        return None
    if len(centre) != 3:
        raise ConfigError(f"--center: expected RA DEC Z, got {list(centre)}")
    out = tuple(float(v) for v in centre)
    for name, value in zip(SKY, out, strict=True):
        if not np.isfinite(value) or not RANGES[name].ok(np.array([value]))[0]:
            raise ConfigError(f"--center: {name} = {value:g} is not valid: {RANGES[name].expected}")
    return out[0], out[1], out[2]


def unit_notes(mf: MemberFile, names: Sequence[str], *, h: float | None = None) -> list[str]:
    """One note per column of ``names`` whose stated unit was converted (``units: r_proj from kpc to Mpc/h ...``)."""
    notes = []
    for name in names:
        unit = getattr(mf.table[name], "unit", None)
        if unit is None or not str(unit).strip():
            continue
        factor = member_conversion_factor(str(unit), UNITS[name], path=str(mf.path), column=name, h=h)
        if factor != 1.0:
            uses_h = name == "r_proj" and "h" not in str(unit).lower().replace("mpc", "").replace("kpc", "")
            note = f"units: {name} converted from {unit} to {UNITS[name]} (x {factor:.6g}"
            notes.append(note + (f", with the model's h = {h:g})" if uses_h and h is not None else ")"))
    return notes

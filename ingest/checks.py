"""Value checks on catalog partitions: finite numbers, non-negative masses, positions inside the box,
stellar masses that are linear (not log10), unique ids, positions that fill more than the box's origin corner.
Pure functions on pandas/numpy; each failure is an :class:`~pipeline.errors.InputError` naming the file, the
column and the data row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ingest.schema import Schema
from pipeline.errors import InputError

#: positions may overshoot the box edge by this much (float32 rounding in writers), Mpc/h
POSITION_TOLERANCE = 1e-3
#: a stellar-mass column whose largest value is below this (Msun) holds log10 masses, not masses
LOG_MASS_CEILING = 100.0
#: a catalog all of whose positions lie within this fraction of the box side from the origin, on every axis, holds
#: positions shrunk by a unit error (Mpc/h values labelled kpc/h land within 1/1000 of it); see :func:`corner_witness`
CORNER_FRACTION = 0.01


def check_partition(
    frame: pd.DataFrame,
    schema: Schema,
    *,
    path: str,
    box_size: float | None,
    row_offset: Callable[[], int],
    line_of: Callable[[int], int | None] | None = None,
) -> None:
    """Raise on the first bad value in ``frame`` (canonical columns, canonical units).

    ``row_offset`` is only called when something is wrong: counting rows before a text partition costs a
    scan of the file, which the happy path never pays.
    """

    def fail(column: str, local: int, message: str) -> InputError:
        row = row_offset() + local + 1
        line = line_of(row) if line_of is not None else None
        return InputError(path, message, column=column, row=row, line=line)

    for col in frame.columns:
        spec = schema[col]
        values = frame[col].to_numpy()
        if spec.kind in ("any", "int", "id"):
            if spec.kind == "id" and len(values) and (bad := np.flatnonzero(values < 0)).size:
                raise fail(col, int(bad[0]), f"expected a non-negative id, found {values[bad[0]]}")
            continue
        finite = np.isfinite(values)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise fail(col, i, f"expected a finite number [{spec.unit or 'no unit'}], found {values[i]}")
        if spec.kind in ("mass", "length") and (bad := np.flatnonzero(values < 0)).size:
            i = int(bad[0])
            raise fail(col, i, f"expected a non-negative {spec.kind} [{spec.unit}], found {values[i]:g}")
        if spec.kind == "position" and box_size is not None:
            bad = np.flatnonzero((values < -POSITION_TOLERANCE) | (values >= box_size + POSITION_TOLERANCE))
            if bad.size:
                i = int(bad[0])
                raise fail(col, i, f"position {values[i]:g} Mpc/h is outside the box [0, {box_size:g})")
    for col in ("sm", "obs_sm"):
        if col in frame.columns and schema.name == "galaxy" and len(frame) >= 20:
            values = frame[col].to_numpy()
            top = float(np.max(values)) if len(values) else 0.0
            if stellar_mass_scale(values) == "log10":
                raise InputError(
                    path,
                    f"stellar masses look like log10(M*/Msun) (largest value {top:.3g}); expected linear masses "
                    "in Msun (no h)",
                    column=col,
                )


def corner_witness(positions: np.ndarray, box_size: float) -> bool:
    """Whether any row of ``positions`` (shape (n, 3), comoving Mpc/h) lies outside the origin corner
    ``[0, CORNER_FRACTION * box_size)^3`` of the box (side ``box_size``, Mpc/h) -- a witness that the catalog is not
    shrunk into that corner.

    The rule behind it: positions are checked to lie in ``[0, L)``; scaled by a wrong unit factor ``s < 1``
    (Mpc/h values in a column labelled kpc/h: ``s = 1/1000``; Mpc without h as kpc/h: ``s = 1/(1000 h)``) they
    land in ``[0, sL)^3``. A catalog whose every position lies within ``L/100`` of the origin on every axis is
    refused: a real catalog, however small or clustered, or a sub-volume cut anywhere else in the box, has some
    coordinate beyond ``L/100`` (the corner is a millionth of the box's volume). Only a sub-volume cut exactly at the
    origin corner and smaller than ``L/100`` on every side would be refused falsely.
    """
    positions = np.asarray(positions)
    return bool(positions.size) and bool(np.any(positions >= CORNER_FRACTION * box_size))


def stellar_mass_scale(values: np.ndarray) -> str | None:
    """Whether a column of stellar masses holds linear masses [Msun] or log10 masses [log10 Msun], by the largest
    finite value: ``"log10"`` below :data:`LOG_MASS_CEILING` (no galaxy has 100 Msun, no log10 mass reaches 100),
    ``"linear"`` at or above it, None when no value is finite and positive. The one rule for every reader: galaxy
    catalogs (which must be linear) and real members files (whose ``log10_mstar`` must not be)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    top = float(v.max()) if v.size else 0.0
    if top <= 0.0:
        return None
    return "log10" if top < LOG_MASS_CEILING else "linear"


def duplicate_ids(ids: np.ndarray) -> np.ndarray:
    """The ids that occur more than once (sorted, each once)."""
    if ids.size < 2:
        return ids[:0]
    s = np.sort(ids, kind="stable")
    dup = s[1:][s[1:] == s[:-1]]
    return np.unique(dup)


def first_row_of(ids: np.ndarray, value: int) -> int:
    """0-based index of the second occurrence of ``value`` in ``ids``."""
    where = np.flatnonzero(ids == value)
    return int(where[1] if where.size > 1 else where[0])

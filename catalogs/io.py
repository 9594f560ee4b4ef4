"""Reading and writing posterior mass catalogs whatever the format: the format follows the extension.

* :func:`open_writer` - a block-wise, atomic writer (:class:`~catalogs.hdf5.HDF5CatalogWriter` for .h5/.hdf5,
  :class:`~catalogs.fits.FITSCatalogWriter` for .fits/.fit);
* :func:`write_catalog` - an in-memory table through the same writers, in blocks;
* :func:`read_catalog` - either format as the same ``astropy.table.Table``;
* :func:`read_posteriors` - what a cosmology analysis consumes (grid, PDFs, the target and training priors on the
  grid, provenance), refusing in one line a catalog it could not use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catalogs.base import CatalogWriter, format_for
from catalogs.fits import FITSCatalogWriter, read_fits
from catalogs.hdf5 import HDF5CatalogWriter, read_hdf5
from catalogs.schema import (
    GRID_NAME,
    NAMES,
    PDF_NAME,
    PDF_NORM_TOLERANCE,
    PRIOR_NAMES,
    TARGET_PRIOR_NAME,
    TRAINING_PRIOR_NAME,
    CatalogError,
)

WRITERS: dict[str, type[CatalogWriter]] = {"hdf5": HDF5CatalogWriter, "fits": FITSCatalogWriter}
DEFAULT_BLOCK_ROWS = 65536


def open_writer(
    path: str | os.PathLike[str],
    n_rows: int,
    grid: Any,
    columns: Sequence[str],
    provenance: Mapping[str, Any] | None = None,
    fmt: str | None = None,
    **options: Any,
) -> CatalogWriter:
    """A block-wise writer of ``n_rows`` rows; ``fmt`` (``"hdf5"``/``"fits"``) defaults to the extension's.

    ``options``: ``priors`` and ``fsync`` (both), ``compression`` / ``gzip_level`` / ``chunk_rows`` (HDF5 only).
    """
    return WRITERS[format_for(path, fmt)](path, n_rows, grid, columns, provenance, **options)


def write_catalog(
    path: str | os.PathLike[str],
    table_or_columns: Any,
    grid: Any = None,
    provenance: Mapping[str, Any] | None = None,
    fmt: str | None = None,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    **options: Any,
) -> Path:
    """Write an in-memory catalog (an astropy Table or a dict of column -> array) atomically; returns the path.

    ``grid``, ``provenance`` and the priors (``options["priors"]``) default to a Table's ``meta`` as
    :func:`read_catalog` fills it, so ``write_catalog("b.fits", read_catalog("a.h5"))`` converts a file. Rows go
    through the block writers ``block_rows`` at a time.
    """
    meta = getattr(table_or_columns, "meta", {}) or {}
    if "priors" not in options and all(name in meta for name in PRIOR_NAMES):
        options["priors"] = {name: meta[name] for name in PRIOR_NAMES}
    if grid is None:
        grid = meta.get(GRID_NAME)
        if grid is None:
            raise CatalogError(path, "no grid given (grid=) and none in the table's meta", column=GRID_NAME)
    if provenance is None:
        provenance = meta.get("provenance", {})
    if hasattr(table_or_columns, "colnames"):
        names = list(table_or_columns.colnames)
    elif isinstance(table_or_columns, Mapping):
        names = list(table_or_columns)
    else:
        raise CatalogError(path, f"expected an astropy Table or a dict of columns, got {type(table_or_columns)}")
    if not names:
        raise CatalogError(path, "the table has no columns")
    first = next((c for c in NAMES if c in names), names[0])
    n_rows = len(table_or_columns[first])
    if block_rows < 1:
        raise CatalogError(path, f"block_rows must be positive, got {block_rows}")
    with open_writer(path, n_rows, grid, names, provenance, fmt, **options) as writer:
        for start in range(0, n_rows, block_rows):
            stop = min(start + block_rows, n_rows)
            writer.append({c: table_or_columns[c][start:stop] for c in names})
    return writer.path


def read_catalog(path: str | os.PathLike[str], columns: Sequence[str] | None = None):
    """A posterior mass catalog (HDF5 or FITS) as an ``astropy.table.Table``; the same table from either format.

    Columns in schema order, in the schema dtypes (native byte order) with their descriptions; units are
    ``astropy.units`` objects parsed from the file's strings (``None`` for unitless columns; the log-mass
    columns are ``dex(solMass / littleh)``). ``meta``: ``provenance`` (dict), ``log10_m200c_grid`` (float64 array),
    ``log10_m200c_grid_unit`` and ``schema_version``. ``columns`` reads a subset.
    """
    fmt = format_for(path, sniff=True)
    return read_hdf5(path, columns) if fmt == "hdf5" else read_fits(path, columns)


@dataclass(frozen=True)
class Posteriors:
    """A catalog as a cosmology analysis uses it (:func:`read_posteriors`).

    ``grid``: log10 M200c [Msun/h] (G,); ``pdf``: (N, G) posterior densities per dex under ``target_prior``;
    ``target_prior`` and ``training_prior``: per dex on the grid (G,); ``table``: the whole catalog
    (:func:`read_catalog`); ``provenance``: its provenance (the priors' names under ``target_prior`` and
    ``training_prior``).
    """

    path: Path
    grid: np.ndarray
    pdf: np.ndarray
    target_prior: np.ndarray
    training_prior: np.ndarray
    table: Any
    provenance: dict[str, Any]


def read_posteriors(path: str | os.PathLike[str]) -> Posteriors:
    """The catalog at ``path`` (HDF5 or FITS) for a cosmology analysis: grid, PDFs, priors and provenance.

    Refuses, with one line naming the file and what was expected (:class:`CatalogError`): what
    :func:`read_catalog` refuses (the PDF column missing, PDFs whose width is not the grid's length, a prior of
    another length), a catalog without both priors (a layout 2.0 file), and one whose finite PDF rows do not
    integrate to 1 on the grid (trapezoid rule, within :data:`catalogs.schema.PDF_NORM_TOLERANCE`; rows flagged
    INVALID_OUTPUT are NaN and skipped). A likelihood of row i on the grid is ``pdf[i] / target_prior``.
    """
    table = read_catalog(path)
    meta = table.meta
    grid = np.asarray(meta[GRID_NAME], dtype=np.float64)
    pdf = np.asarray(table[PDF_NAME], dtype=np.float64)
    missing = [name for name in PRIOR_NAMES if name not in meta]
    if missing:
        raise CatalogError(path, f"the prior on the grid is missing: expected {list(PRIOR_NAMES)} of "
                                 f"{len(grid)} values (layout 2.1)", column=missing[0])
    finite = np.all(np.isfinite(pdf), axis=1)
    norm = np.trapezoid(pdf[finite], grid, axis=1)
    bad = np.flatnonzero(np.abs(norm - 1.0) > PDF_NORM_TOLERANCE)
    if bad.size:
        row = int(np.flatnonzero(finite)[bad[0]])
        raise CatalogError(path, f"PDFs must integrate to 1 on the grid within {PDF_NORM_TOLERANCE} (trapezoid "
                                 f"rule); {bad.size} rows do not, the first integrates to {norm[bad[0]]:.6g}",
                           column=PDF_NAME, row=row + 1)
    return Posteriors(Path(path), grid, pdf, np.asarray(meta[TARGET_PRIOR_NAME]),
                      np.asarray(meta[TRAINING_PRIOR_NAME]), table, dict(meta["provenance"]))

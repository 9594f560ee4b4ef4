"""Reading and writing posterior mass catalogs whatever the format: the format follows the extension.

* :func:`open_writer` - a block-wise, atomic writer (:class:`~catalogs.hdf5.HDF5CatalogWriter` for .h5/.hdf5,
  :class:`~catalogs.fits.FITSCatalogWriter` for .fits/.fit);
* :func:`write_catalog` - an in-memory table through the same writers, in blocks;
* :func:`read_catalog` - either format as the same ``astropy.table.Table``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from catalogs.base import CatalogWriter, format_for
from catalogs.fits import FITSCatalogWriter, read_fits
from catalogs.hdf5 import HDF5CatalogWriter, read_hdf5
from catalogs.schema import GRID_NAME, NAMES, CatalogError

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

    ``options``: ``fsync`` (both), ``compression`` / ``gzip_level`` / ``chunk_rows`` (HDF5 only).
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

    ``grid`` and ``provenance`` default to a Table's ``meta`` as :func:`read_catalog` fills it, so
    ``write_catalog("b.fits", read_catalog("a.h5"))`` converts a file. Rows go through the block writers
    ``block_rows`` at a time.
    """
    meta = getattr(table_or_columns, "meta", {}) or {}
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

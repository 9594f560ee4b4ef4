"""Posterior mass catalogs as HDF5 (h5py): one dataset per column at the root.

Layout:

* every column a root dataset of N rows in its schema dtype, with ``unit`` and ``description`` attributes;
  ``log10_m200c_pdf`` is N x G float32;
* ``log10_m200c_grid``: float64 (G,), with ``unit`` and ``description``;
* ``target_prior`` and ``training_prior`` (when given, as every pipeline catalog does): float64 (G,), the priors
  the PDFs were made under, per dex on the grid, with ``unit`` and ``description`` (:data:`catalogs.schema.PRIORS`);
* root attributes: the provenance (one attribute per key, str / int64 / float64 / bool), ``clustermass_catalog``
  (the schema version) and ``n_rows``.

Compression: none by default. The PDFs are smooth float32 densities whose mantissas barely compress. Measured
with bench/bench_catalogs.py (1e6 rows, G = 512, 2.1 GB; 2-core VM, 2026-11): lzf + shuffle makes the file 22%
smaller (1654 vs 2110 MB) but writes at ~160 MB/s (12.7 s, CPU-bound) against 0.5-3 s for the uncompressed
writer and for a raw h5py write; gzip (level 4) + shuffle: 30% smaller, ~60 MB/s (35 s). Either misses the goal
of writing within 2x of a raw h5py write by 5-25x, so the default is uncompressed. Pass ``compression="lzf"``
(or ``"gzip"``) for archival copies: the PDF is then chunked by ``chunk_rows`` rows (whole rows, 1 MiB per chunk
at G = 512) with the shuffle filter (which alone took lzf from no gain to 22%).
Uncompressed datasets are contiguous: the rows of a block land in one write per column.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from catalogs.base import CatalogWriter, build_table, check_version, select_columns
from catalogs.schema import (
    GRID,
    GRID_NAME,
    NAMES,
    PDF_NAME,
    PRIOR_NAMES,
    REQUIRED,
    RESERVED_KEYS,
    SCHEMA_VERSION,
    CatalogError,
    column,
)
from pipeline.files import discard_hdf5, open_hdf5_unbuffered

COMPRESSIONS = (None, "lzf", "gzip")


class HDF5CatalogWriter(CatalogWriter):
    """Block-wise, atomic HDF5 writer (see :class:`catalogs.base.CatalogWriter` for the parameters).

    ``compression``: ``None`` (default, contiguous), ``"lzf"`` or ``"gzip"`` (level ``gzip_level``), each with
    the shuffle filter, for the PDF only; ``chunk_rows``: PDF rows per chunk when compressed (default 1 MiB).
    """

    format = "hdf5"

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_rows: int,
        grid: Any,
        columns: Sequence[str],
        provenance: Mapping[str, Any] | None = None,
        *,
        priors: Mapping[str, Any] | None = None,
        fsync: bool = True,
        compression: str | None = None,
        gzip_level: int = 4,
        chunk_rows: int | None = None,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise CatalogError(path, f"unknown HDF5 compression {compression!r}; expected one of {COMPRESSIONS}")
        self.compression = compression
        self.gzip_level = gzip_level
        self.chunk_rows = chunk_rows
        self._h5: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        super().__init__(path, n_rows, grid, columns, provenance, priors=priors, fsync=fsync)

    def _open(self) -> None:
        f = self._h5 = open_hdf5_unbuffered(self.tmp, track_order=True)
        f.attrs["clustermass_catalog"] = SCHEMA_VERSION
        f.attrs["n_rows"] = np.int64(self.n_rows)
        for key, value in self.provenance.items():
            f.attrs[key] = value
        grid = f.create_dataset(GRID_NAME, data=self.grid, dtype=GRID.numpy_dtype)
        grid.attrs["unit"] = GRID.unit
        grid.attrs["description"] = GRID.description
        for name, values in self.priors.items():
            spec = column(name)
            ds = f.create_dataset(name, data=values, dtype=spec.numpy_dtype)
            ds.attrs["unit"] = spec.unit
            ds.attrs["description"] = spec.description
        for name in self.columns:
            spec = column(name)
            options: dict[str, Any] = {}
            if spec.vector:
                shape: tuple[int, ...] = (self.n_rows, self.n_grid)
                if self.compression is not None:
                    rows = self.chunk_rows or max(1, (1 << 20) // (self.n_grid * spec.numpy_dtype.itemsize))
                    options = {
                        "chunks": (max(1, min(rows, self.n_rows)), self.n_grid),
                        "compression": self.compression,
                        "compression_opts": self.gzip_level if self.compression == "gzip" else None,
                        "shuffle": True,
                    }
            else:
                shape = (self.n_rows,)
            ds = self._datasets[name] = f.create_dataset(name, shape=shape, dtype=spec.numpy_dtype, **options)
            ds.attrs["unit"] = spec.unit
            ds.attrs["description"] = spec.description

    def _write(self, arrays: dict[str, np.ndarray], start: int, n: int) -> None:
        for name, values in arrays.items():
            self._datasets[name].write_direct(np.ascontiguousarray(values), dest_sel=np.s_[start : start + n])

    def _finish(self) -> None:
        assert self._h5 is not None
        self._datasets = {}
        self._h5.close()
        self._h5 = None

    def _discard(self) -> None:
        self._datasets = {}
        if self._h5 is not None:
            discard_hdf5(self._h5, self.tmp)  # emptied first: the closing flush cannot fail again; never raises
            self._h5 = None


def _plain(value: Any) -> Any:
    """An HDF5 attribute value as the Python value it was written from."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_hdf5(path: str | os.PathLike[str], columns: Sequence[str] | None = None):
    """Read a catalog written by :class:`HDF5CatalogWriter` as an ``astropy.table.Table`` (see ``read_catalog``)."""
    try:
        fh = h5py.File(path, "r")
    except FileNotFoundError:
        raise CatalogError(path, "no such file") from None
    except OSError as exc:
        raise CatalogError(path, f"not a readable HDF5 file ({exc})") from None
    with fh as f:
        version = check_version(path, f.attrs.get("clustermass_catalog"))
        provenance = {k: _plain(v) for k, v in f.attrs.items() if k not in RESERVED_KEYS}
        if GRID_NAME not in f:
            raise CatalogError(path, "the grid dataset is missing", column=GRID_NAME)
        grid_ds = f[GRID_NAME]
        grid = grid_ds[...]
        present = [c for c in NAMES if c in f]
        missing = [c for c in REQUIRED if c not in present]
        if missing:
            raise CatalogError(path, "required column missing from the file", column=missing[0])
        wanted = select_columns(path, columns, present)
        n_rows = int(f.attrs.get("n_rows", f["cluster_id"].shape[0]))
        arrays, units = {}, {}
        for name in wanted:
            ds = f[name]
            if ds.shape[:1] != (n_rows,):
                raise CatalogError(path, f"has shape {ds.shape}, expected {n_rows} rows", column=name)
            if name == PDF_NAME and ds.shape[1:] != grid.shape:
                raise CatalogError(path, f"has shape {ds.shape}, grid has {len(grid)} points", column=name)
            arrays[name] = ds[...]
            units[name] = _text(ds.attrs.get("unit", ""))
        grid_unit = _text(grid_ds.attrs.get("unit", ""))
        priors = {name: f[name][...] for name in PRIOR_NAMES if name in f}
    return build_table(path, arrays, units, grid, grid_unit, provenance, version, priors)


"""What both catalog writers share: declaration checks, block checks, the atomic temporary file, and the table
both readers build.

A writer is opened with everything but the rows (path, total rows N, grid, columns present, provenance), then
:meth:`CatalogWriter.append` takes blocks of rows (``{column: array}``; the PDF block is (b, G)) and
:meth:`CatalogWriter.close` checks that exactly N rows came and renames the hidden ``.<name>.partial`` beside the
target into place. Any error (a bad block, too many or too few rows, a failing write) removes the temporary file
and leaves whatever was under the final name untouched. Only the block being written is held in memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from catalogs.schema import (
    GRID,
    GRID_NAME,
    NAMES,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    CatalogColumn,
    CatalogError,
    check_grid,
    check_priors,
    check_provenance,
    column,
    order_columns,
    parse_unit,
)
from pipeline.files import output_error

FORMATS = ("hdf5", "fits")
_SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".fits": "fits", ".fit": "fits", ".fts": "fits"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_FITS_MAGIC = b"SIMPLE  ="


def format_for(path: str | os.PathLike[str], fmt: str | None = None, *, sniff: bool = False) -> str:
    """``"hdf5"`` or ``"fits"``: ``fmt`` if given, else from the extension (.h5/.hdf5, .fits/.fit/.fts).

    With ``sniff`` (readers), a file with another extension is recognised by its signature.
    """
    if fmt is not None:
        if fmt not in FORMATS:
            raise CatalogError(path, f"unknown catalog format {fmt!r}; expected one of {list(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if sniff:
        try:
            with open(path, "rb") as fh:
                head = fh.read(len(_HDF5_MAGIC) + 1)
        except OSError:
            head = b""
        if head.startswith(_HDF5_MAGIC):
            return "hdf5"
        if head.startswith(_FITS_MAGIC):
            return "fits"
    raise CatalogError(
        path, f"unknown catalog extension {suffix or '(none)'!r}; expected .h5/.hdf5 (HDF5) or .fits/.fit (FITS)"
    )


def temp_path(path: Path) -> Path:
    """The hidden temporary file a writer fills before renaming it to ``path``."""
    return path.with_name(f".{path.name}.partial")


class CatalogWriter:
    """Block-wise, atomic writer of one posterior mass catalog (base class of the HDF5 and FITS writers).

    Parameters
    ----------
    path
        Final file name (missing parent directories are created). Nothing appears under it until :meth:`close`
        succeeds.
    n_rows
        Total rows N that will be appended (FITS needs it in the header before the first row).
    grid
        ``log10_m200c_grid`` (G points, log10 M200c in Msun/h, strictly increasing).
    columns
        The columns present: every required one of :data:`catalogs.schema.COLUMNS`, optionally
        ``log10_m200c_std`` and ``log10_m200c_true``. Written in schema order whatever the order given.
    provenance
        Flat ``{str: str | int | float | bool}`` (see :func:`catalogs.schema.check_provenance`).
    priors
        ``{"target_prior": (G,), "training_prior": (G,)}``: the priors the PDFs were made under, per dex on the
        grid (:data:`catalogs.schema.PRIORS`; see :func:`catalogs.schema.check_priors`), or ``None`` (a file
        without them: tests and format conversions of such files).
    fsync
        Flush the file (and the directory after the rename) to disk before returning from :meth:`close`, so a
        crash cannot leave a renamed but incomplete file. Off for scratch files and benchmarks.

    Use as a context manager: a normal exit calls :meth:`close`, an exception calls :meth:`abort`.
    """

    format: ClassVar[str] = ""

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
    ) -> None:
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
            raise CatalogError(self.path, f"n_rows must be a non-negative integer, got {n_rows!r}")
        self.n_rows = int(n_rows)
        self.grid = check_grid(grid, self.path)
        self.columns: tuple[str, ...] = order_columns(columns, self.path)
        self.provenance = check_provenance(provenance, self.path)
        self.priors = check_priors(priors, len(self.grid), self.path)
        self.fsync = fsync
        self.rows_written = 0
        if self.path.is_dir():
            raise CatalogError(self.path, "is a directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(self.path, f"cannot create its directory ({exc.strerror or exc})") from None
        self._state = "new"
        try:
            self._open()
        except BaseException:
            self.abort()
            raise
        self._state = "open"

    @property
    def n_grid(self) -> int:
        return len(self.grid)

    # -- subclass hooks ----------------------------------------------------------------------------------------
    def _open(self) -> None:
        """Create ``self.tmp`` and write everything known before the rows."""
        raise NotImplementedError

    def _write(self, arrays: dict[str, np.ndarray], start: int, n: int) -> None:
        """Write rows ``start:start + n`` (arrays already checked and in the schema dtypes)."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Complete and close ``self.tmp`` (all N rows have been written)."""
        raise NotImplementedError

    def _discard(self) -> None:
        """Close ``self.tmp`` without completing it; must not raise."""
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------------------------
    def append(self, block: Mapping[str, Any]) -> None:
        """Append rows: ``{column: array}`` with exactly the declared columns, 1-D of length b (the PDF (b, G))."""
        self._require_open("append")
        try:
            arrays, n = self._check_block(block)
            if n:
                self._write(arrays, self.rows_written, n)
            self.rows_written += n
        except BaseException as exc:
            self.abort()
            error = output_error(self.path, exc)  # a full disk: "<path>: no space left on device"
            if error is exc:
                raise
            raise error from exc

    def close(self) -> Path:
        """Check that all N rows were appended, complete the file and rename it into place; returns the path."""
        if self._state == "closed":
            return self.path
        self._require_open("close")
        try:
            if self.rows_written != self.n_rows:
                raise CatalogError(
                    self.path, f"close(): {self.rows_written} rows were appended but {self.n_rows} were declared"
                )
            self._finish()
            if self.fsync:
                _fsync(self.tmp)
            os.replace(self.tmp, self.path)
            if self.fsync:
                _fsync(self.path.parent)
        except BaseException as exc:
            self.abort()
            error = output_error(self.path, exc)
            if error is exc:
                raise
            raise error from exc
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (idempotent); the final name is left as it was."""
        if self._state in ("closed", "aborted"):
            return
        self._state = "aborted"
        self._discard()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.close()

    def __del__(self) -> None:  # a writer dropped without close() leaves no temporary file behind
        with contextlib.suppress(Exception):
            if getattr(self, "_state", None) in ("new", "open"):
                self.abort()

    # -- checks ------------------------------------------------------------------------------------------------
    def _require_open(self, what: str) -> None:
        if self._state != "open":
            why = "was aborted after an error" if self._state == "aborted" else "is already closed"
            raise CatalogError(self.path, f"{what}(): the catalog writer {why}")

    def _check_block(self, block: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        keys = _block_keys(block, self.path)
        extra = [k for k in keys if k not in self.columns]
        if extra:
            what = "is not a catalog column" if extra[0] not in NAMES else "was not declared when the writer was opened"
            raise CatalogError(self.path, f"block has an extra column: {what}", column=str(extra[0]))
        missing = [c for c in self.columns if c not in keys]
        if missing:
            raise CatalogError(self.path, f"block lacks a declared column (all missing: {missing})", column=missing[0])
        arrays: dict[str, np.ndarray] = {}
        n = -1
        first = ""
        for name in self.columns:
            spec = column(name)
            values = _as_array(block[name], spec, self.path)
            if spec.vector:
                if values.ndim != 2 or values.shape[1] != self.n_grid:
                    raise CatalogError(
                        self.path,
                        f"PDF block must have shape (rows, {self.n_grid}) to match the grid, got {values.shape}",
                        column=name,
                    )
            elif values.ndim != 1:
                raise CatalogError(self.path, f"block must be 1-D, got shape {values.shape}", column=name)
            if n < 0:
                n, first = len(values), name
            elif len(values) != n:
                raise CatalogError(
                    self.path, f"block has {len(values)} rows but column '{first}' has {n}", column=name
                )
            arrays[name] = _cast(values, spec, self.path, self.rows_written)
        if self.rows_written + n > self.n_rows:
            raise CatalogError(
                self.path,
                f"block of {n} rows after {self.rows_written} would exceed the {self.n_rows} rows declared",
            )
        return arrays, n


def _block_keys(block: Any, path: Path) -> list[str]:
    if hasattr(block, "colnames"):  # astropy Table
        return list(block.colnames)
    if isinstance(block, Mapping):
        return list(block.keys())
    raise CatalogError(path, f"a block is a dict of column -> array, not {type(block).__name__}")


def _as_array(values: Any, spec: CatalogColumn, path: Path) -> np.ndarray:
    mask = getattr(values, "mask", None)
    if mask is not None and np.any(mask):
        raise CatalogError(path, "masked values cannot be written; fill them first", column=spec.name)
    unit = getattr(values, "unit", None)
    if unit is not None and parse_unit(spec.unit) != unit and str(unit) != spec.unit:
        raise CatalogError(path, f"values are in {unit}, the catalog stores {spec.unit!r}", column=spec.name)
    arr = np.asarray(getattr(values, "value", values) if unit is not None else values)
    if arr.dtype.kind not in "iuf":
        raise CatalogError(path, f"expected numbers ({spec.dtype}), got dtype {arr.dtype}", column=spec.name)
    return arr


def _cast(arr: np.ndarray, spec: CatalogColumn, path: Path, offset: int) -> np.ndarray:
    """``arr`` in the column's dtype: integers must be integers in range; numbers go to float32/64 as declared."""
    target = spec.numpy_dtype
    if arr.dtype == target:
        return arr
    if target.kind in "iu":
        if arr.dtype.kind not in "iu":
            raise CatalogError(path, f"expected integers ({spec.dtype}), got dtype {arr.dtype}", column=spec.name)
        if not np.can_cast(arr.dtype, target) and arr.size:
            info = np.iinfo(target)
            bad = np.flatnonzero((arr < info.min) | (arr > info.max))
            if bad.size:
                raise CatalogError(
                    path, f"value {arr[bad[0]]} does not fit in {spec.dtype}", column=spec.name,
                    row=offset + int(bad[0]) + 1,
                )
    return arr.astype(target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_table(
    path: str | os.PathLike[str],
    arrays: dict[str, np.ndarray],
    units: dict[str, str],
    grid: np.ndarray,
    grid_unit: str,
    provenance: dict[str, Any],
    version: str,
    priors: Mapping[str, Any] | None = None,
):
    """The ``astropy.table.Table`` both readers return, so that the two formats give identical tables.

    Columns in schema order with the schema dtypes (native byte order) and descriptions, units parsed from the
    file's strings by :func:`catalogs.schema.parse_unit` (``None`` for unitless columns). ``meta``:
    ``provenance`` (dict), ``log10_m200c_grid`` (float64 array), ``log10_m200c_grid_unit`` (unit),
    ``schema_version`` (str) and, when the file holds them, ``target_prior`` and ``training_prior`` (float64 (G,),
    per dex on the grid; checked by :func:`catalogs.schema.check_priors`).
    """
    from astropy.table import Column, Table

    cols = []
    n = None
    for name in NAMES:
        if name not in arrays:
            continue
        spec = column(name)
        values = np.ascontiguousarray(arrays[name], dtype=spec.numpy_dtype)
        if n is None:
            n = len(values)
        elif len(values) != n:
            raise CatalogError(path, f"has {len(values)} rows, other columns {n}", column=name)
        if spec.vector and (values.ndim != 2 or values.shape[1] != len(grid)):
            raise CatalogError(path, f"shape {values.shape} does not match the grid of {len(grid)}", column=name)
        cols.append(Column(values, name=name, unit=parse_unit(units.get(name, "")), description=spec.description,
                           copy=False))
    meta = {
        "provenance": provenance,
        GRID_NAME: np.ascontiguousarray(grid, dtype=GRID.numpy_dtype),
        f"{GRID_NAME}_unit": parse_unit(grid_unit),
        "schema_version": version,
    }
    if priors:
        meta |= {name: np.array(values) for name, values in check_priors(priors, len(grid), path).items()}
    return Table(cols, meta=meta, copy=False)


def check_version(path: str | os.PathLike[str], version: Any) -> str:
    if version is None:
        raise CatalogError(path, "not a clustermass posterior mass catalog (no schema version)")
    version = version.decode() if isinstance(version, bytes) else str(version)
    if version.split(".")[0] not in READABLE_VERSIONS:
        raise CatalogError(path, f"catalog schema version {version} is not supported (this code: {SCHEMA_VERSION})")
    return version


def select_columns(
    path: str | os.PathLike[str], columns: Sequence[str] | None, present: Sequence[str]
) -> list[str]:
    """The requested columns (all present ones if ``None``), in file order; each must be in the file."""
    if columns is None:
        return list(present)
    if isinstance(columns, str):
        columns = [columns]
    for name in columns:
        if name not in present:
            raise CatalogError(path, f"column not in the file (present: {list(present)})", column=str(name))
    return [c for c in present if c in columns]

"""Reading halo and galaxy catalogs into lazy dask DataFrames with canonical columns and units.

>>> cat = read_halos("box/halos.h5")                      # doctest: +SKIP
>>> cat.snapshot.box_size, cat.frame.npartitions           # doctest: +SKIP

Each partition is read, unit-normalised and value-checked when dask computes it, so a catalog larger than
memory streams through; :func:`validate` makes one pass over the id column for duplicates.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd

from ingest import checks
from ingest.cosmosim import open_csv
from ingest.hdf5 import open_hdf5
from ingest.hlist import TextSource, open_whitespace
from ingest.schema import GALAXIES, HALOS, UM_IGNORE_FLAG, Schema, empty_frame_meta, select_columns
from ingest.source import Source, check_exists, detect_format, sidecar_hints
from ingest.textblocks import DEFAULT_BLOCKSIZE
from ingest.units import ROCKSTAR_FILE_UNITS, UNIVERSEMACHINE_FILE_UNITS, conversion_factor
from ingest.universemachine import open_um_binary
from pipeline.errors import InputError
from pipeline.snapshot import CONFIG_SOURCE, PartialSnapshot, Snapshot, resolve_snapshot


@dataclass(frozen=True)
class Catalog:
    """A lazily read catalog.

    Attributes
    ----------
    frame : dask DataFrame with canonical columns (see :mod:`ingest.schema`) in canonical units
    snapshot : box size (comoving Mpc/h), scale factor, cosmology — resolved from the file and configuration
    source : the opened file (format, original column names, file units)
    schema : :data:`ingest.schema.HALOS` or :data:`ingest.schema.GALAXIES`
    """

    frame: dd.DataFrame
    snapshot: Snapshot
    source: Source
    schema: Schema

    @property
    def path(self) -> str:
        return self.source.path

    @property
    def units(self) -> dict[str, str]:
        return {c: self.schema[c].unit for c in self.frame.columns}


def read_halos(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    snapshot: Snapshot | None = None,
    columns: Sequence[str] | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    validate: bool = True,
) -> Catalog:
    """Read a Rockstar-style halo catalog (hlist ASCII, CosmoSim CSV or HDF5).

    Parameters
    ----------
    path : the catalog file
    format : ``"hlist"``, ``"csv"``, ``"hdf5"`` or None (from the extension / first bytes)
    snapshot : what the configuration says the snapshot is; must agree with the file's header if it has one
    columns : canonical columns to load (required ones are always loaded); None loads every known column
    blocksize : bytes per partition
    validate : check ids for duplicates now (one pass over the id column); value checks always run per partition
    """
    return _read(str(path), HALOS, format, snapshot, columns, blocksize, validate)


def read_galaxies(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    snapshot: Snapshot | None = None,
    columns: Sequence[str] | None = None,
    blocksize: int = DEFAULT_BLOCKSIZE,
    validate: bool = True,
    ignore_flag: int = UM_IGNORE_FLAG,
) -> Catalog:
    """Read a UniverseMachine-style galaxy catalog (``sfr_catalog_*.bin``, its ASCII form, or HDF5).

    Galaxies with ``flags & ignore_flag`` set are dropped (UniverseMachine's IGNORE_FLAG = 16). Other parameters
    as :func:`read_halos`.
    """
    return _read(str(path), GALAXIES, format, snapshot, columns, blocksize, validate, ignore_flag)


def _read(
    path: str,
    schema: Schema,
    fmt: str | None,
    snapshot: Snapshot | None,
    columns: Sequence[str] | None,
    blocksize: int,
    validate: bool,
    ignore_flag: int | None = None,
) -> Catalog:
    check_exists(path)
    if os.path.getsize(path) == 0:
        raise InputError(path, "is empty")
    fmt = detect_format(path, schema.name, fmt)
    source = open_source(path, schema, fmt, blocksize)
    snap = resolve_snapshot(
        source.hints,
        sidecar_hints(path),
        PartialSnapshot.of(snapshot, CONFIG_SOURCE) if snapshot is not None else None,
    )
    wanted = select_columns(schema, source.available, columns, path=str(path))
    factors = {
        c: conversion_factor(source.file_units.get(c), schema[c].unit, path=path, column=source.available[c])
        for c in source.available
    }
    # dask-expr absorbs column projections into from_map by passing ``columns=`` at call time, so
    # ``frame[["x", "y"]]`` reads only those columns from the file. ``columns`` here is the default (everything).
    loader = partial(
        _load_partition,
        source=source,
        schema=schema,
        columns=tuple(wanted),
        factors=factors,
        box_size=snap.box_size,
        ignore_flag=ignore_flag if (ignore_flag is not None and "flags" in source.available) else None,
    )
    frame = dd.from_map(
        loader, list(source.parts), meta=empty_frame_meta(schema, wanted), label=f"read-{schema.name}s",
        enforce_metadata=False,
    )
    catalog = Catalog(frame, snap, source, schema)
    if validate:
        check_rows_fill_box(catalog, loader)
        check_unique_ids(catalog)
    return catalog


def open_source(path: str, schema: Schema, fmt: str, blocksize: int = DEFAULT_BLOCKSIZE) -> Source:
    """Open ``path`` in format ``fmt`` (see :data:`ingest.source.FORMATS`)."""
    if fmt == "hlist":
        return open_whitespace(path, schema, "hlist", ROCKSTAR_FILE_UNITS, blocksize)
    if fmt == "um-ascii":
        return open_whitespace(path, schema, "um-ascii", UNIVERSEMACHINE_FILE_UNITS, blocksize)
    if fmt == "csv":
        return open_csv(path, schema, ROCKSTAR_FILE_UNITS if schema is HALOS else UNIVERSEMACHINE_FILE_UNITS,
                        blocksize)
    if fmt == "hdf5":
        return open_hdf5(path, schema, blocksize)
    if fmt == "um-binary":
        if schema is not GALAXIES:
            raise InputError(path, "UniverseMachine binary files hold galaxies, not halos")
        return open_um_binary(path, schema, blocksize)
    raise InputError(path, f"unknown format '{fmt}'")  # pragma: no cover - detect_format guards this


def _load_partition(
    spec,
    *,
    source: Source,
    schema: Schema,
    columns: Sequence[str],
    factors: dict[str, float],
    box_size: float,
    ignore_flag: int | None,
) -> pd.DataFrame:
    """Read one partition: the ``columns`` asked for (plus ``flags`` to drop ignored rows), normalised, checked."""
    keep = list(columns)
    load = [*keep, "flags"] if (ignore_flag is not None and "flags" not in keep) else keep
    frame = source.read_part(spec, load)
    for col in load:
        factor = factors.get(col, 1.0)
        if factor != 1.0:
            frame[col] = (frame[col].to_numpy() * factor).astype(schema[col].numpy_dtype, copy=False)
    line_of = source.line_of if isinstance(source, TextSource) else None
    checks.check_partition(
        frame, schema, path=source.path, box_size=box_size, row_offset=lambda: source.row_offset(spec),
        line_of=line_of,
    )
    if ignore_flag is not None:
        keep_rows = (frame["flags"].to_numpy() & ignore_flag) == 0
        if not keep_rows.all():
            frame = frame.loc[keep_rows].reset_index(drop=True)
    if list(frame.columns) != keep:
        frame = frame[keep]
    return frame


POSITIONS = ("x", "y", "z")


def check_rows_fill_box(catalog: Catalog, load: partial) -> None:
    """Refuse a catalog with no rows, or one whose positions all lie in the origin corner of the box it declares
    (a unit error: Mpc/h values labelled kpc/h; the rule is :func:`ingest.checks.corner_witness`).

    ``load`` reads one partition normalised and checked (``_load_partition`` with the catalog's factors). Partitions
    are read one by one until a row outside the corner turns up -- in a sound catalog that is the first partition,
    so the happy path costs one partition of positions; only a refused catalog is read whole.
    """
    box = catalog.snapshot.box_size
    rows = 0
    top = np.zeros(len(POSITIONS))
    for spec in catalog.source.parts:
        positions = load(spec, columns=POSITIONS)[list(POSITIONS)].to_numpy()
        if checks.corner_witness(positions, box):
            return
        rows += len(positions)
        if len(positions):
            top = np.maximum(top, positions.max(axis=0))
    name = catalog.schema.name
    if rows == 0:
        flagged = " (or every row is flagged to be ignored)" if load.keywords["ignore_flag"] is not None else ""
        raise InputError(catalog.path, f"holds no {name} rows{flagged}; expected a catalog of at least one {name}")
    units = {catalog.source.file_units.get(c) or catalog.schema[c].unit for c in POSITIONS}
    raise InputError(
        catalog.path,
        f"every position lies within {checks.CORNER_FRACTION * box:g} Mpc/h of the origin (largest x, y, z: "
        f"{', '.join(f'{t:.3g}' for t in top)} Mpc/h) of a {box:g} Mpc/h box: positions shrunk by a wrong unit "
        f"(the file says {', '.join(sorted(units))}); expected comoving Mpc/h positions filling the box",
        column=catalog.source.available["x"],
    )


def check_unique_ids(catalog: Catalog) -> None:
    """One pass over the id column: duplicate ids are an error naming the id and the row of its repeat."""
    id_col = catalog.schema.id_column
    source = catalog.source
    parts = list(source.parts)
    # read ids per partition without the ignore-flag filter, so rows are counted as in the file
    tasks = [dask.delayed(_ids_of)(source, spec, id_col) for spec in parts]
    arrays = dask.compute(*tasks)
    ids = np.concatenate(arrays) if arrays else np.empty(0, dtype=np.int64)
    dup = checks.duplicate_ids(ids)
    if dup.size:
        value = int(dup[0])
        row = checks.first_row_of(ids, value) + 1
        line = source.line_of(row) if isinstance(source, TextSource) else None
        raise InputError(
            source.path,
            f"id {value} occurs more than once ({dup.size} duplicated id(s)); expected unique ids",
            column=source.available[id_col],
            row=row,
            line=line,
        )


def _ids_of(source: Source, spec, id_col: str) -> np.ndarray:
    return source.read_part(spec, [id_col])[id_col].to_numpy()

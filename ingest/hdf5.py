"""HDF5 catalogs: one 1-D dataset per column (at the root or in one group), a ``unit`` attribute on each,
and the snapshot in root attributes (``box_size`` [Mpc/h], ``scale_factor``, ``cosmology`` as JSON).

Reading is by row ranges, so a file larger than memory streams in partitions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import pandas as pd

from ingest.schema import Schema
from ingest.source import Source
from pipeline.cosmology import Cosmology
from pipeline.errors import ConfigError, InputError
from pipeline.snapshot import PartialSnapshot

DEFAULT_ROWS_PER_PART = 4_000_000


@dataclass(frozen=True)
class HDF5Source(Source):
    group: str = "/"
    nrows: int = 0

    def read_part(self, spec: tuple[int, int], columns: Sequence[str]) -> pd.DataFrame:
        start, stop = spec
        out = {}
        try:
            with h5py.File(self.path, "r") as fh:
                grp = fh[self.group]
                for col in columns:
                    out[col] = grp[self.available[col]][start:stop]
        except OSError as exc:
            msg = f"could not read rows {start + 1}-{stop} ({exc}); truncated or corrupted?"
            raise InputError(self.path, msg) from None
        return pd.DataFrame(out, copy=False)

    def row_offset(self, spec: tuple[int, int]) -> int:
        return spec[0]


def open_hdf5(path: str, schema: Schema, blocksize: int) -> HDF5Source:
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"is not a readable HDF5 file ({_short(exc)}); truncated or corrupted?") from None
    with fh:
        group = _find_group(fh, path)
        grp = fh[group]
        names = [k for k, v in grp.items() if isinstance(v, h5py.Dataset)]
        available = schema.match(names, path)
        lengths = {}
        units: dict[str, str | None] = {}
        for col, name in available.items():
            ds = grp[name]
            if ds.ndim != 1:
                raise InputError(path, f"expected a 1-D dataset, found shape {ds.shape}", column=name)
            kind = schema[col].numpy_dtype.kind
            if kind in "iu" and ds.dtype.kind not in "iu":
                raise InputError(path, f"expected integers ({schema[col].dtype}), found {ds.dtype}", column=name)
            if kind == "f" and ds.dtype.kind not in "fiu":
                raise InputError(path, f"expected numbers ({schema[col].dtype}), found {ds.dtype}", column=name)
            lengths[name] = ds.shape[0]
            unit = ds.attrs.get("unit")
            units[col] = unit.decode() if isinstance(unit, bytes) else unit
        if len(set(lengths.values())) > 1:
            longest = max(lengths.values())
            short = sorted(n for n, k in lengths.items() if k < longest)
            raise InputError(
                path,
                f"columns have different lengths ({min(lengths.values())} to {longest} rows): {short[:5]} are short; "
                "truncated write?",
            )
        nrows = next(iter(lengths.values()), 0)
        chunk_rows = max((grp[n].chunks[0] for n in available.values() if grp[n].chunks), default=1)
        hints = _hints(fh, path)
    row_bytes = sum(schema[c].numpy_dtype.itemsize for c in available) or 1
    step = max(1, min(DEFAULT_ROWS_PER_PART, blocksize // row_bytes))
    # Partitions on chunk boundaries (a chunk split between two partitions is read twice), unless the block size
    # asks for partitions smaller than one chunk.
    if step >= chunk_rows:
        step = step // chunk_rows * chunk_rows
    parts = tuple((a, min(a + step, nrows)) for a in range(0, nrows, step)) or ((0, 0),)
    return HDF5Source(path, "hdf5", available, units, hints, parts, group, nrows)


def _find_group(fh: h5py.File, path: str) -> str:
    if any(isinstance(v, h5py.Dataset) for v in fh.values()):
        return "/"
    groups = [k for k, v in fh.items() if isinstance(v, h5py.Group)]
    if len(groups) == 1:
        return groups[0]
    raise InputError(path, f"expected one dataset per column at the root or in one group, found groups {groups}")


def _hints(fh: h5py.File, path: str) -> PartialSnapshot:
    attrs = fh.attrs
    cosmo = None
    if "cosmology" in attrs:
        try:
            cosmo = Cosmology.from_dict(json.loads(attrs["cosmology"]), where=f"{path} cosmology attribute")
        except (ConfigError, json.JSONDecodeError, TypeError) as exc:
            raise InputError(path, f"root attribute 'cosmology' is not a valid cosmology ({exc})") from None
    box = float(attrs["box_size"]) if "box_size" in attrs else None
    scale = float(attrs["scale_factor"]) if "scale_factor" in attrs else None
    name = attrs.get("simulation")
    return PartialSnapshot(f"{path} (attributes)", box_size=box, scale_factor=scale, cosmology=cosmo,
                           name=str(name) if name is not None else None)


def _short(exc: Exception) -> str:
    return str(exc).split("(")[0].strip() or exc.__class__.__name__


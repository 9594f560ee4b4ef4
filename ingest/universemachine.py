"""UniverseMachine ``sfr_catalog_<a>.bin``: a packed little-endian struct per galaxy, 128 bytes each.

Layout (UniverseMachine DR1 loader): id, descid, upid (int64); flags (int32); uparent_dist (float32);
pos[6] (float32: x, y, z comoving Mpc/h; vx, vy, vz km/s); vmp, lvmp, mp, m, v, r, rank1, rank2, ra, rarank,
A_UV, sm, icl, sfr, obs_sm, obs_sfr, obs_uv, and one float32 of padding. Stellar masses in Msun (no h);
halo masses in Msun/h; r in comoving kpc/h. The scale factor is in the file name; nothing else is.
Canonical galaxy columns without a field here (the optical photometry ``mag_r``, ``g_r``) are not carried by the
binary nor by the ASCII form (:data:`UM_ASCII_COLUMNS`): writers drop them, readers do not return them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ingest.hlist import _SCALE_IN_NAME
from ingest.schema import GALAXIES, Schema
from ingest.source import Source
from pipeline.errors import InputError
from pipeline.snapshot import PartialSnapshot

UM_DTYPE = np.dtype(
    [
        ("id", "<i8"), ("descid", "<i8"), ("upid", "<i8"), ("flags", "<i4"), ("uparent_dist", "<f4"),
        ("pos", "<f4", (6,)), ("vmp", "<f4"), ("lvmp", "<f4"), ("mp", "<f4"), ("m", "<f4"), ("v", "<f4"),
        ("r", "<f4"), ("rank1", "<f4"), ("rank2", "<f4"), ("ra", "<f4"), ("rarank", "<f4"), ("A_UV", "<f4"),
        ("sm", "<f4"), ("icl", "<f4"), ("sfr", "<f4"), ("obs_sm", "<f4"), ("obs_sfr", "<f4"), ("obs_uv", "<f4"),
        ("empty", "<f4"),
    ]
)
assert UM_DTYPE.itemsize == 128

#: canonical galaxy column -> (struct field, index into pos or None)
UM_FIELDS: dict[str, tuple[str, int | None]] = {
    "galaxy_id": ("id", None), "desc_id": ("descid", None), "upid": ("upid", None), "flags": ("flags", None),
    "uparent_dist": ("uparent_dist", None), "x": ("pos", 0), "y": ("pos", 1), "z": ("pos", 2),
    "vx": ("pos", 3), "vy": ("pos", 4), "vz": ("pos", 5), "vmp": ("vmp", None), "lvmp": ("lvmp", None),
    "mp": ("mp", None), "m": ("m", None), "v": ("v", None), "r": ("r", None), "rank1": ("rank1", None),
    "rank2": ("rank2", None), "ra": ("ra", None), "rarank": ("rarank", None), "a_uv": ("A_UV", None),
    "sm": ("sm", None), "icl": ("icl", None), "sfr": ("sfr", None), "obs_sm": ("obs_sm", None),
    "obs_sfr": ("obs_sfr", None), "obs_uv": ("obs_uv", None),
}
#: The order of columns in the UniverseMachine ASCII form written by clustermass (the struct's order).
UM_ASCII_COLUMNS: tuple[str, ...] = tuple(UM_FIELDS)
UM_ASCII_NAMES: tuple[str, ...] = (
    "id", "descid", "upid", "flags", "uparent_dist", "x", "y", "z", "vx", "vy", "vz", "vmp", "lvmp", "mp", "m",
    "v", "r", "rank1", "rank2", "ra", "rarank", "A_UV", "sm", "icl", "sfr", "obs_sm", "obs_sfr", "obs_uv",
)
DEFAULT_RECORDS_PER_PART = 2_000_000
_GATHER_RECORDS = 8192  # 1 MiB of records: fits in L2


@dataclass(frozen=True)
class UMBinarySource(Source):
    nrows: int = 0

    def read_part(self, spec: tuple[int, int], columns: Sequence[str]) -> pd.DataFrame:
        start, stop = spec
        n = stop - start
        out = {col: np.empty(n, dtype=GALAXIES[col].numpy_dtype) for col in columns}
        fields = [(col, *UM_FIELDS[col]) for col in columns]
        # Gather columns from cache-sized runs of records: one strided pass per column over a block that sits in
        # L2, instead of one pass over the whole partition in memory per column.
        with open(self.path, "rb") as fh:
            fh.seek(start * UM_DTYPE.itemsize)
            for a in range(0, n, _GATHER_RECORDS):
                k = min(_GATHER_RECORDS, n - a)
                rec = np.fromfile(fh, dtype=UM_DTYPE, count=k)
                if len(rec) != k:
                    raise InputError(
                        self.path, f"file ended after {start + a + len(rec)} records, expected {stop}; truncated?"
                    )
                for col, field, idx in fields:
                    out[col][a : a + k] = rec[field] if idx is None else rec[field][:, idx]
        return pd.DataFrame(out, copy=False)

    def row_offset(self, spec: tuple[int, int]) -> int:
        return spec[0]


def open_um_binary(path: str, schema: Schema, blocksize: int) -> UMBinarySource:
    size = Path(path).stat().st_size
    if size % UM_DTYPE.itemsize:
        raise InputError(
            path,
            f"file is truncated: {size} bytes is not a whole number of {UM_DTYPE.itemsize}-byte UniverseMachine "
            f"records ({size // UM_DTYPE.itemsize} whole records + {size % UM_DTYPE.itemsize} bytes)",
        )
    nrows = size // UM_DTYPE.itemsize
    step = max(1, min(DEFAULT_RECORDS_PER_PART, blocksize // UM_DTYPE.itemsize))
    parts = tuple((a, min(a + step, nrows)) for a in range(0, nrows, step)) or ((0, 0),)
    available = {c: c for c in UM_FIELDS}
    m = _SCALE_IN_NAME.search(Path(path).name)
    hints = PartialSnapshot(f"{path} (file name)", scale_factor=float(m.group(1)) if m else None)
    units = {c: ("kpc/h" if c == "r" else None) for c in available}
    return UMBinarySource(path, "um-binary", available, units, hints, parts, nrows)


def to_records(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Pack canonical galaxy columns into UniverseMachine records (r converted to kpc/h)."""
    n = len(columns["galaxy_id"])
    rec = np.zeros(n, dtype=UM_DTYPE)
    for col, (field, idx) in UM_FIELDS.items():
        if col not in columns:
            continue
        values = columns[col] * 1e3 if col == "r" else columns[col]
        if idx is None:
            rec[field] = values
        else:
            rec[field][:, idx] = values
    return rec

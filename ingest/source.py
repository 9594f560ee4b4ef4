"""What every format reader provides: the columns a file has, their units, snapshot hints, and partitions.

A :class:`Source` is a small, picklable description of one opened file; ``read_part`` turns one partition
spec into a pandas DataFrame with canonical column names, still in the file's units. :mod:`ingest.catalog`
wraps sources into lazy dask DataFrames, normalises units and checks values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import ConfigError, InputError
from pipeline.files import write_json
from pipeline.snapshot import PartialSnapshot, Snapshot

SIDECAR_NAME = "snapshot.json"
_SNAPSHOT_KEYS = {"name", "box_size", "box_size_unit", "scale_factor", "redshift", "cosmology"}

FORMATS = ("hlist", "csv", "hdf5", "um-binary", "um-ascii")
_EXTENSIONS = {
    ".csv": "csv",
    ".list": "hlist",
    ".ascii": "hlist",
    ".txt": "hlist",
    ".dat": "hlist",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".bin": "um-binary",
}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class Source:
    """An opened catalog file (base class; one subclass per format).

    Attributes
    ----------
    path : the file
    format : one of :data:`FORMATS`
    available : canonical column name -> the file's name for it
    file_units : canonical column name -> the unit the file stores it in (None: canonical)
    hints : what the file says about its snapshot
    parts : partition specs handed one by one to :meth:`read_part`
    """

    path: str
    format: str
    available: Mapping[str, str]
    file_units: Mapping[str, str | None]
    hints: PartialSnapshot
    parts: tuple[Any, ...]

    def read_part(self, spec: Any, columns: Sequence[str]) -> pd.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def row_offset(self, spec: Any) -> int:  # pragma: no cover - abstract
        """Data rows before this partition (0-based), for error messages."""
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return os.stat(self.path).st_size


def detect_format(path: str, kind: str, requested: str | None = None) -> str:
    """The format of ``path``: ``requested`` if given, else from the extension, else from the first bytes."""
    if requested is not None:
        fmt = {"ascii": "hlist" if kind == "halo" else "um-ascii", "binary": "um-binary", "bin": "um-binary",
               "h5": "hdf5"}.get(requested, requested)
        if fmt not in FORMATS:
            raise ConfigError(f"{path}: unknown format '{requested}'; expected one of {list(FORMATS)}")
    else:
        fmt = _EXTENSIONS.get(Path(path).suffix.lower())
        if fmt is None:
            try:
                with open(path, "rb") as fh:
                    head = fh.read(11).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is skipped
            except OSError as exc:
                raise InputError(path, f"cannot be read ({exc.strerror})") from None
            if head.startswith(_HDF5_MAGIC):
                fmt = "hdf5"
            elif head.startswith(b"#"):
                fmt = "hlist"
            else:
                raise InputError(
                    path,
                    "unknown format: expected a Rockstar hlist (.list), CosmoSim CSV (.csv), HDF5 (.h5/.hdf5), "
                    "UniverseMachine binary (.bin) or ASCII (.txt) file, or give the format explicitly",
                )
    if fmt == "hlist" and kind == "galaxy":
        fmt = "um-ascii"
    if fmt == "um-ascii" and kind == "halo":
        fmt = "hlist"
    if fmt == "um-binary" and kind == "halo":
        raise InputError(path, "UniverseMachine binary files hold galaxies, not halos: expected a halo catalog")
    return fmt


def check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(path, "no such file")
    if os.path.isdir(path):
        raise InputError(path, "is a directory, expected a catalog file")


def sidecar_hints(path: str) -> PartialSnapshot | None:
    """The snapshot described by ``snapshot.json`` beside ``path`` (written by ``clustermass synth``), if any."""
    sidecar = Path(path).parent / SIDECAR_NAME
    if not sidecar.exists():
        return None
    try:
        data = json.loads(sidecar.read_text())
        if not isinstance(data, dict):
            raise InputError(sidecar, "expected a JSON object describing the snapshot")
        # the sidecar may carry more (the generator's settings, row counts): only the snapshot keys are read here
        snap = Snapshot.from_dict({k: v for k, v in data.items() if k in _SNAPSHOT_KEYS}, where="snapshot")
    except json.JSONDecodeError as exc:
        raise InputError(sidecar, f"is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ConfigError as exc:
        raise InputError(sidecar, str(exc)) from None
    return PartialSnapshot.of(snap, str(sidecar))


def write_sidecar(directory: str | Path, snapshot: Snapshot, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``snapshot.json`` atomically into ``directory``."""
    return write_json(Path(directory) / SIDECAR_NAME, snapshot.to_dict() | dict(extra or {}), indent=2)

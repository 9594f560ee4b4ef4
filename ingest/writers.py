"""Writing halo and galaxy catalogs in the real MultiDark / UniverseMachine formats, chunk by chunk.

A writer is opened on its final path, appends column chunks (canonical names and units, as in
:mod:`ingest.schema`) to a hidden temporary file beside it, and renames it into place on :meth:`commit`.
Closed without a commit (an exception, a kill) it leaves no file under the final name.

Formats: halos as ``hlist`` (Rockstar ASCII), ``csv`` (CosmoSim) or ``hdf5``; galaxies as ``um-binary``
(``sfr_catalog`` packed records), ``um-ascii`` or ``hdf5``. Each format writes the canonical columns it has a
place for and ignores the others: HDF5 every schema column, the UniverseMachine formats the struct's fields
(:data:`ingest.universemachine.UM_FIELDS`; so not ``mag_r`` and ``g_r``), hlist/CSV Rockstar's columns.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np
import pandas as pd

from ingest.schema import GALAXIES, HALOS, Schema
from ingest.universemachine import UM_ASCII_COLUMNS, UM_ASCII_NAMES, to_records
from pipeline.files import discard_hdf5, open_hdf5_unbuffered, output_error
from pipeline.snapshot import Snapshot

#: Rockstar hlist / CosmoSim names for the canonical halo columns, in the order written.
ROCKSTAR_NAMES: dict[str, tuple[str, str]] = {
    # canonical: (hlist name, CosmoSim name)
    "scale": ("scale", "scale"),
    "halo_id": ("id", "rockstarId"),
    "desc_id": ("desc_id", "descId"),
    "pid": ("pid", "pId"),
    "upid": ("upid", "upId"),
    "mvir": ("mvir", "Mvir"),
    "rvir": ("rvir", "Rvir"),
    "rs": ("rs", "Rs"),
    "vrms": ("vrms", "vrms"),
    "vmax": ("vmax", "vmax"),
    "x": ("x", "x"),
    "y": ("y", "y"),
    "z": ("z", "z"),
    "vx": ("vx", "vx"),
    "vy": ("vy", "vy"),
    "vz": ("vz", "vz"),
    "m200b": ("M200b", "M200b"),
    "m200c": ("M200c", "M200c"),
    "m500c": ("M500c", "M500c"),
    "mpeak": ("Mpeak", "Mpeak"),
}
_KPC = {"rvir", "rs"}  # written in comoving kpc/h, as Rockstar does

HALO_FORMATS = ("hdf5", "hlist", "csv")
GALAXY_FORMATS = ("hdf5", "um-binary", "um-ascii")
EXTENSIONS = {"hdf5": ".h5", "hlist": ".list", "csv": ".csv", "um-binary": ".bin", "um-ascii": ".txt"}


class CatalogWriter:
    """Append-only, atomic writer of one catalog file. Use as a context manager, then :meth:`commit`."""

    def __init__(self, path: str | os.PathLike[str], schema: Schema, fmt: str, snapshot: Snapshot) -> None:
        allowed = HALO_FORMATS if schema is HALOS else GALAXY_FORMATS
        if fmt not in allowed:
            raise ValueError(f"cannot write {schema.name}s as '{fmt}'; expected one of {allowed}")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.schema = schema
        self.format = fmt
        self.snapshot = snapshot
        self.rows = 0
        self._columns: list[str] | None = None
        self._h5: h5py.File | None = None
        self._fh: io.BufferedWriter | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "hdf5":
            self._h5 = open_hdf5_unbuffered(self.tmp)
            _write_snapshot_attrs(self._h5, snapshot, schema)
        else:
            self._fh = open(self.tmp, "wb")

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        if exc_type is not None or self.tmp.exists():
            self.abort()

    # -- writing ---------------------------------------------------------------------------------------------
    def append(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append one chunk: canonical column name -> array (canonical units). Every chunk has the same columns."""
        names = [c for c in self._file_order() if c in columns]
        if self._columns is None:
            missing = [c for c in self.schema.required if c not in columns]
            if missing:
                raise ValueError(f"cannot write {self.schema.name}s without required column(s) {missing}")
            self._columns = names
            self._start()
        elif names != self._columns:
            raise ValueError(f"chunk columns {names} differ from the first chunk's {self._columns}")
        n = len(columns[names[0]])
        if any(len(columns[c]) != n for c in names):
            raise ValueError("columns of one chunk must have the same length")
        if n == 0:
            return
        arrays = {c: np.asarray(columns[c], dtype=self.schema[c].numpy_dtype) for c in names}
        with _naming(self.path):
            if self.format == "hdf5":
                self._append_hdf5(arrays, n)
            elif self.format == "um-binary":
                assert self._fh is not None
                self._fh.write(to_records(arrays).tobytes())
            else:
                self._append_text(arrays)
        self.rows += n

    def commit(self) -> Path:
        """Finish the file and move it to its final name."""
        if self._columns is None:  # nothing appended: still write a valid, empty file
            self._columns = list(self.schema.required)
            self._start()
        with _naming(self.path):
            if self._h5 is not None:
                self._h5.attrs["n_rows"] = self.rows
                self._h5.close()
                self._h5 = None
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._h5 is not None:
            discard_hdf5(self._h5, self.tmp)  # emptied first: the closing flush cannot fail again; never raises
            self._h5 = None
        if self._fh is not None:
            with contextlib.suppress(OSError):  # a full disk fails the last flush too
                self._fh.close()
            self._fh = None
        self.tmp.unlink(missing_ok=True)

    # -- formats ---------------------------------------------------------------------------------------------
    def _file_order(self) -> list[str]:
        """Column order on disk: Rockstar's for hlist/CSV, the struct's for UniverseMachine, else the schema's."""
        if self.format in ("hlist", "csv"):
            return list(ROCKSTAR_NAMES)
        if self.format in ("um-binary", "um-ascii"):
            return list(UM_ASCII_COLUMNS)
        return self.schema.names

    def _start(self) -> None:
        assert self._columns is not None
        if self.format == "hdf5":
            assert self._h5 is not None
            for c in self._columns:
                spec = self.schema[c]
                ds = self._h5.create_dataset(
                    c, shape=(0,), maxshape=(None,), dtype=spec.numpy_dtype, chunks=(min(1 << 18, 1 << 20),)
                )
                ds.attrs["unit"] = spec.unit
                ds.attrs["description"] = spec.description
        elif self.format in ("hlist", "um-ascii", "csv"):
            assert self._fh is not None
            self._fh.write(self._text_header().encode())

    def _append_hdf5(self, arrays: dict[str, np.ndarray], n: int) -> None:
        assert self._h5 is not None
        for c, values in arrays.items():
            ds = self._h5[c]
            ds.resize((self.rows + n,))
            ds[self.rows :] = values

    def _text_header(self) -> str:
        assert self._columns is not None
        snap = self.snapshot
        cosmo = snap.cosmology
        if self.format == "csv":
            return ",".join(ROCKSTAR_NAMES[c][1] for c in self._columns) + "\n"
        if self.format == "hlist":
            names = [ROCKSTAR_NAMES[c][0] for c in self._columns]
        else:
            names = [UM_ASCII_NAMES[UM_ASCII_COLUMNS.index(c)] for c in self._columns]
        lines = [
            "#" + " ".join(f"{n}({i})" for i, n in enumerate(names)),
            f"#a = {snap.scale_factor:.6f}",
            f"#Omega_M = {cosmo.Om0:.6f}; Omega_L = {cosmo.Ode0:.6f}; h0 = {cosmo.h:.6f}",
            f"#Full box size = {snap.box_size:.6f} Mpc/h",
            f"#clustermass cosmology: Ob0 = {cosmo.Ob0:.6f}; ns = {cosmo.ns:.6f}; sigma8 = {cosmo.sigma8:.6f}",
        ]
        if self.format == "hlist":
            lines += [
                "#Units: Masses in Msun / h",
                "#Units: Positions in Mpc / h (comoving)",
                "#Units: Velocities in km / s (physical, peculiar)",
                "#Units: Halo Distances, Lengths, and Radii in kpc / h (comoving)",
            ]
        else:
            lines += [
                "#Units: positions comoving Mpc/h; velocities km/s; halo masses Msun/h; r comoving kpc/h;",
                "#Units: stellar masses Msun (no h); SFR Msun/yr",
            ]
        return "\n".join(lines) + "\n"

    def _append_text(self, arrays: dict[str, np.ndarray]) -> None:
        assert self._fh is not None
        data = {}
        for c, values in arrays.items():
            data[c] = values * 1e3 if (c in _KPC or (self.format == "um-ascii" and c == "r")) else values
        frame = pd.DataFrame(data)
        sep = "," if self.format == "csv" else " "
        text = frame.to_csv(sep=sep, header=False, index=False, float_format="%.7g", lineterminator="\n")
        self._fh.write(text.encode())


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A full disk while writing ``path`` becomes ``OutputError(path, "no space left on device")``."""
    try:
        yield
    except Exception as exc:
        error = output_error(path, exc)
        if error is exc:
            raise
        raise error from exc


def _write_snapshot_attrs(h5: h5py.File, snapshot: Snapshot, schema: Schema) -> None:
    h5.attrs["catalog"] = f"{schema.name}s"
    h5.attrs["box_size"] = snapshot.box_size
    h5.attrs["box_size_unit"] = "Mpc/h"
    h5.attrs["scale_factor"] = snapshot.scale_factor
    h5.attrs["redshift"] = snapshot.redshift
    h5.attrs["cosmology"] = json.dumps(snapshot.cosmology.to_dict())
    if snapshot.name:
        h5.attrs["simulation"] = snapshot.name


def write_catalog(
    path: str | os.PathLike[str],
    columns: Mapping[str, np.ndarray],
    *,
    kind: str,
    fmt: str,
    snapshot: Snapshot,
) -> Path:
    """Write one in-memory table (canonical columns) as a halo (``kind="halo"``) or galaxy catalog, atomically."""
    schema = HALOS if kind == "halo" else GALAXIES
    with CatalogWriter(path, schema, fmt, snapshot) as writer:
        writer.append(columns)
        return writer.commit()

"""Canonical columns of halo and galaxy catalogs, their units, and the names they go by in each format.

Every reader returns these canonical names, in these units, whatever the file called them:

* halos (Rockstar semantics): masses Msun/h, positions comoving Mpc/h, radii comoving Mpc/h
  (Rockstar writes Rvir and Rs in kpc/h; :mod:`ingest.units` converts), velocities physical peculiar km/s.
* galaxies (UniverseMachine semantics): positions comoving Mpc/h, velocities km/s, halo masses Msun/h,
  stellar masses and star formation **without** h (Msun, Msun/yr), UV magnitudes in mag, optical absolute
  magnitudes (``mag_r``) and colours (``g_r``) in AB mag, not h-scaled (for the h of the cosmology).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError


@dataclass(frozen=True)
class Column:
    """One canonical column.

    ``aliases`` are the names it goes by in files (matched case-insensitively, canonical name included).
    ``kind`` is what the values must be: ``"id"`` (integer), ``"int"``, ``"mass"`` (non-negative, finite),
    ``"length"`` (a radius: non-negative, finite), ``"position"`` (finite, inside the box), ``"float"`` (finite),
    ``"any"`` (NaN allowed).
    """

    name: str
    dtype: str
    unit: str
    description: str
    required: bool = False
    aliases: tuple[str, ...] = ()
    kind: str = "float"

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def matches(self, source_name: str) -> bool:
        key = _norm(source_name)
        return key == _norm(self.name) or key in {_norm(a) for a in self.aliases}


def _norm(name: str) -> str:
    return name.strip().strip('"').lower()


@dataclass(frozen=True)
class Schema:
    name: str
    columns: tuple[Column, ...]
    id_column: str

    def __getitem__(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def units(self) -> dict[str, str]:
        return {c.name: c.unit for c in self.columns}

    def match(
        self, source_names: Sequence[str], path: str, wanted: Iterable[str] | None = None
    ) -> dict[str, str]:
        """Map canonical names to the file's names for the columns present.

        Raises :class:`InputError` naming the file and the missing column (with the closest name the file
        has) when a required column, or one in ``wanted``, is absent.
        """
        found: dict[str, str] = {}
        for col in self.columns:
            for src in source_names:
                if col.matches(src):
                    found[col.name] = src
                    break
        need = list(self.required) + [w for w in (wanted or []) if w not in self.required]
        for name in need:
            if name not in self.names:
                raise InputError(path, f"unknown {self.name} column requested; canonical columns are {self.names}",
                                 column=name)
            if name not in found:
                col = self[name]
                candidates = [col.name, *col.aliases]
                close = difflib.get_close_matches(
                    _norm(col.name), [_norm(s) for s in source_names], n=1, cutoff=0.6
                )
                hint = f" (found '{close[0]}': misspelt?)" if close else ""
                raise InputError(
                    path,
                    f"missing required {self.name} column; expected one of {candidates} [{col.unit or 'no unit'}]"
                    f"{hint}",
                    column=col.name,
                )
        return found


def _c(name, dtype, unit, desc, *, required=False, aliases=(), kind="float") -> Column:
    return Column(name, dtype, unit, desc, required, tuple(aliases), kind)


HALOS = Schema(
    "halo",
    (
        _c("halo_id", "i8", "", "Rockstar halo id, unique", required=True, aliases=("id", "rockstarId"), kind="id"),
        _c("pid", "i8", "", "id of the least massive host (-1: distinct halo)", aliases=("pId",), kind="int"),
        _c("upid", "i8", "", "id of the most massive host (-1: host halo)", required=True, aliases=("upId",),
           kind="int"),
        _c("desc_id", "i8", "", "descendant id", aliases=("descId", "desc_id"), kind="int"),
        _c("scale", "f4", "", "scale factor of the halo", aliases=("scale",), kind="any"),
        _c("mvir", "f4", "Msun/h", "virial mass (Bryan & Norman 1998)", aliases=("Mvir",), kind="mass"),
        _c("m200c", "f4", "Msun/h", "mass inside 200 x critical density", required=True, aliases=("M200c",),
           kind="mass"),
        _c("m200b", "f4", "Msun/h", "mass inside 200 x mean matter density", aliases=("M200b",), kind="mass"),
        _c("m500c", "f4", "Msun/h", "mass inside 500 x critical density", aliases=("M500c",), kind="mass"),
        _c("mpeak", "f4", "Msun/h", "peak virial mass over the history", aliases=("Mpeak",), kind="mass"),
        _c("rvir", "f4", "Mpc/h", "virial radius, comoving (files: kpc/h)", aliases=("Rvir",), kind="length"),
        _c("rs", "f4", "Mpc/h", "NFW scale radius, comoving (files: kpc/h)", aliases=("Rs",), kind="length"),
        _c("vmax", "f4", "km/s", "maximum circular velocity", aliases=("vmax", "Vmax"), kind="float"),
        _c("vrms", "f4", "km/s", "particle velocity dispersion (3D rms)", aliases=("vrms", "Vrms"), kind="any"),
        _c("x", "f4", "Mpc/h", "comoving position", required=True, aliases=("x",), kind="position"),
        _c("y", "f4", "Mpc/h", "comoving position", required=True, aliases=("y",), kind="position"),
        _c("z", "f4", "Mpc/h", "comoving position", required=True, aliases=("z",), kind="position"),
        _c("vx", "f4", "km/s", "physical peculiar velocity", required=True, aliases=("vx",)),
        _c("vy", "f4", "km/s", "physical peculiar velocity", required=True, aliases=("vy",)),
        _c("vz", "f4", "km/s", "physical peculiar velocity", required=True, aliases=("vz",)),
    ),
    id_column="halo_id",
)

GALAXIES = Schema(
    "galaxy",
    (
        _c("galaxy_id", "i8", "", "UniverseMachine id (the halo or subhalo hosting the galaxy)", required=True,
           aliases=("id",), kind="id"),
        _c("desc_id", "i8", "", "descendant id", aliases=("descid",), kind="int"),
        _c("upid", "i8", "", "id of the host halo (-1: central)", required=True, aliases=("upid",), kind="int"),
        _c("flags", "i4", "", "UniverseMachine flags; objects with (flags & 16) are to be ignored",
           aliases=("flags",), kind="int"),
        _c("uparent_dist", "f4", "Mpc/h", "distance to the host centre", aliases=("uparent_dist",), kind="any"),
        _c("x", "f4", "Mpc/h", "comoving position", required=True, kind="position"),
        _c("y", "f4", "Mpc/h", "comoving position", required=True, kind="position"),
        _c("z", "f4", "Mpc/h", "comoving position", required=True, kind="position"),
        _c("vx", "f4", "km/s", "physical peculiar velocity", required=True),
        _c("vy", "f4", "km/s", "physical peculiar velocity", required=True),
        _c("vz", "f4", "km/s", "physical peculiar velocity", required=True),
        _c("vmp", "f4", "km/s", "vmax at the time of peak vmax", aliases=("vmp",), kind="any"),
        _c("lvmp", "f4", "", "log10 of vmp", aliases=("lvmp",), kind="any"),
        _c("mp", "f4", "Msun/h", "peak halo mass", aliases=("mp",), kind="any"),
        _c("m", "f4", "Msun/h", "current halo mass (virial)", aliases=("m",), kind="any"),
        _c("v", "f4", "km/s", "current halo vmax", aliases=("v",), kind="any"),
        _c("r", "f4", "Mpc/h", "halo radius, comoving (UniverseMachine files: kpc/h)", aliases=("r",), kind="any"),
        _c("rank1", "f4", "", "halo assembly rank", aliases=("rank1",), kind="any"),
        _c("rank2", "f4", "", "halo assembly rank", aliases=("rank2",), kind="any"),
        _c("ra", "f4", "", "random variable for SFR assignment", aliases=("ra",), kind="any"),
        _c("rarank", "f4", "", "rank of ra", aliases=("rarank",), kind="any"),
        _c("a_uv", "f4", "mag", "UV attenuation", aliases=("A_UV", "t_tdyn"), kind="any"),
        _c("sm", "f4", "Msun", "true stellar mass (no h)", aliases=("sm", "SM"), kind="mass"),
        _c("icl", "f4", "Msun", "intracluster light mass (no h)", aliases=("icl",), kind="any"),
        _c("sfr", "f4", "Msun/yr", "true star formation rate", aliases=("sfr",), kind="any"),
        _c("obs_sm", "f4", "Msun", "observed stellar mass (no h), with measurement scatter", required=True,
           aliases=("obs_sm",), kind="mass"),
        _c("obs_sfr", "f4", "Msun/yr", "observed star formation rate", aliases=("obs_sfr",), kind="any"),
        _c("obs_uv", "f4", "mag", "observed UV magnitude", aliases=("obs_uv",), kind="any"),
        _c("mag_r", "f4", "mag",
           "rest-frame SDSS r-band absolute magnitude, AB; plain M_r for the h of the cosmology, NOT h-scaled "
           "(M_r - 5 log10 h = mag_r + 5 log10 h); not in UniverseMachine files",
           aliases=("mag_r", "M_r"), kind="any"),
        _c("g_r", "f4", "mag", "rest-frame SDSS g-r colour, AB; not in UniverseMachine files", aliases=("g_r",),
           kind="any"),
    ),
    id_column="galaxy_id",
)

#: UniverseMachine's IGNORE_FLAG: galaxies with ``flags & UM_IGNORE_FLAG`` are dropped on reading.
UM_IGNORE_FLAG = 16


def empty_frame_meta(schema: Schema, columns: Sequence[str]):
    """An empty pandas DataFrame with the canonical dtypes of ``columns`` (dask meta)."""
    import pandas as pd

    return pd.DataFrame({c: np.empty(0, dtype=schema[c].numpy_dtype) for c in columns})


def select_columns(
    schema: Schema, available: Mapping[str, str], wanted: Iterable[str] | None, *, path: str | None = None
) -> list[str]:
    """The canonical columns to load: ``wanted`` (plus the required ones), else every one available.

    Raises :class:`InputError` (naming ``path`` where given) for a wanted column that is not canonical or that the
    file does not have (e.g. ``mag_r`` of a UniverseMachine binary file, whose records have no room for it).
    """
    if wanted is None:
        return [c for c in schema.names if c in available]
    cols = list(dict.fromkeys([*schema.required, *wanted]))
    for name in cols:
        if name not in schema.names:
            raise InputError(path, f"unknown {schema.name} column requested; canonical columns are {schema.names}",
                             column=name)
        if name not in available:
            have = [c for c in schema.names if c in available]
            raise InputError(path, f"{schema.name} column requested but not in this file ({schema[name].description}); "
                             f"the file has {have}", column=name)
    return [c for c in schema.names if c in cols]

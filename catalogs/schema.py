"""The posterior mass catalog: its columns (name, dtype, unit, description), its grid and its provenance.

One table, the same in both formats (README, "Posterior mass catalog"):

* scalar columns, one value per row (cluster x line of sight);
* ``log10_m200c_pdf``: a float32 vector of length G per row, the posterior density **per dex** on the shared grid
  ``log10_m200c_grid`` (float64, G points, strictly increasing);
* provenance: a flat ``{str: str | int | float | bool}`` dict passed in by the caller (code_version, config_digest,
  model_digest, target_prior, training_prior, cosmology and snapshot as JSON strings, created as ISO time ...).

Units. Each column's ``unit`` is the exact astropy string (the HDF5 ``unit`` attribute, FITS ``CMUNITn``, and
what :func:`~catalogs.io.read_catalog` returns), chosen so that ``str(astropy.units.Unit(s)) == s``:

* log10 M200c columns and the grid: ``"dex(solMass / littleh)"``, log10 of M200c in Msun/h. ``littleh`` is astropy's
  unit for h (``astropy.cosmology.units.littleh``); astropy parses the string once those units are enabled
  (``u.add_enabled_units(astropy.cosmology.units)``, which :func:`parse_unit` does) and refuses it otherwise,
  never silently misreading it. Do **not** write ``"dex(Msun/h)"``: astropy parses it without complaint as
  dex(solar mass per *hour*).
* ``log10_m200c_std``: ``"dex"``; ``log10_m200c_pdf``: ``"1 / dex"``; ``sigma_v``: ``"km / s"`` (physical
  line-of-sight velocity dispersion).
* ``cluster_id``, ``los``, ``n_members``, ``ood_score``, ``edge_mass``, ``flags``, ``model_inputs``: ``""`` (no
  unit; :func:`read_catalog` gives ``unit=None``).

FITS ``TUNITn`` holds :func:`fits_unit` of it instead: the FITS-standard string where one exists (``"km s-1"``),
blank where none does. FITS units (standard 4.0, section 4.3) have no ``dex`` and no little h (FITS ``h`` is the
hour), and astropy's FITS unit parser accepts neither them nor the standard's ``log()`` function (astropy 8.0),
so ``astropy.table.Table.read`` would warn (a ``UnitsWarning`` per column) for any of them; survey catalogs leave
such TUNITs blank and say "log10" and "h^-1 Msun" in words, as the ``TUNITn`` comment, ``TCOMMn`` (the
description) and a header COMMENT do here (:func:`unit_comment`).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import InputError

#: Version of this layout, written to every file (HDF5 attribute ``clustermass_catalog``, FITS keyword CMSCHEMA).
#: 2: FITS TUNITn FITS-standard (blank for log units; exact units in CMUNITn) and GRID an image extension, so that
#: a plain ``Table.read`` of the FITS file is silent. 2.1: the target and training priors on the grid (``PRIORS``);
#: a 2.0 file lacks them, which :func:`~catalogs.io.read_posteriors` refuses and ``read_catalog`` tolerates.
SCHEMA_VERSION = "2.1"
#: Major versions the readers accept: this one only (no catalog of an earlier layout exists outside this
#: repository's history, so no reader of one is kept).
READABLE_VERSIONS = ("2",)

LOG_MASS_UNIT = "dex(solMass / littleh)"
DEX_UNIT = "dex"
PDF_UNIT = "1 / dex"
VELOCITY_UNIT = "km / s"

GRID_NAME = "log10_m200c_grid"
PDF_NAME = "log10_m200c_pdf"


class CatalogError(InputError, ValueError):
    """A bad catalog block, declaration, file name or file: one line naming the file and the column.

    Both an :class:`~pipeline.errors.InputError` (the CLI prints it as ``error: <line>``) and a ``ValueError``.
    """


@dataclass(frozen=True)
class CatalogColumn:
    """One column: ``vector`` columns hold G values per row (G = the grid's length)."""

    name: str
    dtype: str
    unit: str
    description: str
    required: bool = True
    vector: bool = False

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


def _summary(stat: str, what: str, *, uncorrected: bool = False) -> CatalogColumn:
    prior = "uncorrected (training prior)" if uncorrected else "target prior"
    name = f"log10_m200c_uncorrected_{stat}" if uncorrected else f"log10_m200c_{stat}"
    return CatalogColumn(name, "float32", LOG_MASS_UNIT, f"{what} of log10 M200c [Msun/h], {prior}")


#: The columns, in file order (the order README lists them in).
COLUMNS: tuple[CatalogColumn, ...] = (
    CatalogColumn("cluster_id", "int64", "", "host halo id"),
    CatalogColumn("los", "int16", "", "line-of-sight index"),
    CatalogColumn("n_members", "int32", "", "member galaxies in the cylinder"),
    CatalogColumn("sigma_v", "float32", VELOCITY_UNIT, "LOS velocity dispersion of the members [km/s]"),
    _summary("mode", "mode"),
    _summary("median", "median"),
    _summary("mean", "mean"),
    _summary("p16", "16th percentile"),
    _summary("p84", "84th percentile"),
    _summary("p025", "2.5th percentile"),
    _summary("p975", "97.5th percentile"),
    CatalogColumn(
        "log10_m200c_std", "float32", DEX_UNIT, "std of log10 M200c [dex], target prior",
        required=False,
    ),
    _summary("mode", "mode", uncorrected=True),
    _summary("mean", "mean", uncorrected=True),
    CatalogColumn(
        PDF_NAME, "float32", PDF_UNIT, "posterior density per dex on log10_m200c_grid, target prior", vector=True
    ),
    CatalogColumn(
        "log10_m200c_true", "float32", LOG_MASS_UNIT, "true log10 M200c [Msun/h] (mocks only)", required=False
    ),
    CatalogColumn("ood_score", "float32", "", "typicality of the features against the training set, 0-1 "
                  "(inference.diagnostics)", required=False),
    CatalogColumn("edge_mass", "float32", "", "posterior probability within 0.05 dex of either grid edge",
                  required=False),
    CatalogColumn("flags", "int32", "", "diagnostic bits: 1 out of distribution, 2 grid edge, 4 few members, "
                  "8 redshift, 16 richness extrapolated, 32 invalid network output (NaN pdf and summaries), "
                  "64 no support on the grid (flat pdf)", required=False),
    CatalogColumn("model_inputs", "int16", "", "which model answered: 1 dynamics only, 2 + richness, "
                  "3 + stellar masses", required=False),
)

#: The shared grid (a dataset in HDF5, the extension GRID in FITS).
GRID = CatalogColumn(GRID_NAME, "float64", LOG_MASS_UNIT, "log10 M200c [Msun/h] grid of log10_m200c_pdf")

TARGET_PRIOR_NAME = "target_prior"
TRAINING_PRIOR_NAME = "training_prior"
#: The priors the PDFs were made under, on the grid (HDF5 datasets beside the grid; FITS image extensions
#: TARGET_PRIOR and TRAINING_PRIOR after GRID). A consumer forms each cluster's likelihood on the grid as
#: L_i(M) = p_i(M) / target_prior(M) (up to a constant).
PRIORS: tuple[CatalogColumn, ...] = (
    CatalogColumn(TARGET_PRIOR_NAME, "float64", PDF_UNIT,
                  "target prior of log10_m200c_pdf per dex on log10_m200c_grid, normalised on the grid"),
    CatalogColumn(TRAINING_PRIOR_NAME, "float64", PDF_UNIT,
                  "training (interim) prior per dex on log10_m200c_grid: KDE of the training log10 M200c"),
)
PRIOR_NAMES: tuple[str, ...] = tuple(c.name for c in PRIORS)
#: |integral of a finite PDF row over the grid - 1| a reader accepts (float32 values, trapezoid rule)
PDF_NORM_TOLERANCE = 1e-3

#: What each non-FITS unit means, in words, for the comment of its blank FITS TUNITn (and the header COMMENT).
_UNIT_WORDS = {
    LOG_MASS_UNIT: "log10(M200c / (h^-1 Msun)), h = H0/100",
    DEX_UNIT: "dex (a width in log10)",
    PDF_UNIT: "per dex (density in log10 M)",
}

_BY_NAME = {c.name: c for c in COLUMNS}
NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
REQUIRED: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.required)
OPTIONAL: tuple[str, ...] = tuple(c.name for c in COLUMNS if not c.required)

#: HDF5 root attributes and FITS keywords the writers own; provenance keys may not use them.
RESERVED_KEYS = frozenset({"clustermass_catalog", "n_rows", "cmschema", "cmprov"})
_FITS_RESERVED = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|TFIELDS|THEAP|EXTNAME|EXTVER|EXTLEVEL|BLANK|BSCALE|BZERO|"
    r"BUNIT|END|COMMENT|HISTORY|CONTINUE|CHECKSUM|DATASUM|HIERARCH|"
    r"T(TYPE|FORM|UNIT|DIM|NULL|SCAL|ZERO|DISP|DMIN|DMAX|LMIN|LMAX)\d+)$"
)
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")


def column(name: str) -> CatalogColumn:
    """The column called ``name`` (the grid and the priors included)."""
    if name == GRID_NAME:
        return GRID
    for prior in PRIORS:
        if name == prior.name:
            return prior
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(name) from None


@functools.lru_cache(maxsize=64)
def parse_unit(unit: str):
    """``astropy.units.Unit`` of a unit string as written here (``""`` -> ``None``), with ``littleh`` enabled.

    Unknown strings (a file written by someone else) become ``UnrecognizedUnit`` rather than an error. Cached:
    enabling the cosmology units costs ~50 ms.
    """
    if not unit:
        return None
    import astropy.cosmology.units as cu
    import astropy.units as u

    with u.add_enabled_units(cu):
        return u.Unit(unit, parse_strict="silent")


@functools.lru_cache(maxsize=64)
def fits_unit(unit: str) -> str:
    """The FITS-standard ``TUNITn`` / ``BUNIT`` string of an exact unit string; ``""`` where FITS has none.

    ``"km / s"`` -> ``"km s-1"``; ``"dex(solMass / littleh)"``, ``"dex"``, ``"1 / dex"`` -> ``""`` (FITS units
    have no dex and no h; see the module docstring). The result is one that astropy's FITS unit parser reads
    silently.
    """
    parsed = parse_unit(unit)
    if parsed is None:
        return ""
    import astropy.units as u

    try:
        text = parsed.to_string(format="fits")
        u.Unit(text, format="fits", parse_strict="raise")  # an unrecognised unit's name comes back as it was
    except (ValueError, TypeError):  # function units (dex), units FITS lacks (littleh, dex)
        return ""
    return text


def unit_comment(unit: str) -> str:
    """Words for the comment of a blank FITS ``TUNITn`` standing for ``unit`` (``""`` for standard units)."""
    if not unit or fits_unit(unit):
        return ""
    return f"{_UNIT_WORDS.get(unit, unit)}; not a FITS unit"


def order_columns(columns: Iterable[str], path: str | os.PathLike[str] | None) -> tuple[str, ...]:
    """The declared columns in file order; every required one present, no unknown or repeated one."""
    names = list(columns)
    if isinstance(columns, str):
        raise CatalogError(path, f"columns must be a list of names, not the string {columns!r}")
    seen: set[str] = set()
    for name in names:
        if name == GRID_NAME:
            raise CatalogError(path, "the grid is passed as grid=, not as a column", column=name)
        if name not in _BY_NAME:
            raise CatalogError(path, f"unknown catalog column; expected one of {list(NAMES)}", column=str(name))
        if name in seen:
            raise CatalogError(path, "column declared twice", column=name)
        seen.add(name)
    missing = [c for c in REQUIRED if c not in seen]
    if missing:
        raise CatalogError(path, f"required column missing (all missing: {missing})", column=missing[0])
    return tuple(c for c in NAMES if c in seen)


def check_grid(grid: Any, path: str | os.PathLike[str] | None) -> np.ndarray:
    """The grid as a read-only float64 array: 1-D, at least 2 points, finite, strictly increasing."""
    try:
        g = np.array(grid, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CatalogError(path, f"grid is not numeric ({exc})", column=GRID_NAME) from None
    if g.ndim != 1 or len(g) < 2:
        raise CatalogError(path, f"grid must be 1-D with at least 2 points, got shape {g.shape}", column=GRID_NAME)
    if not np.all(np.isfinite(g)) or not np.all(np.diff(g) > 0):
        raise CatalogError(path, "grid must be finite and strictly increasing", column=GRID_NAME)
    g.flags.writeable = False
    return g


def _printable(s: str) -> bool:
    return all(32 <= ord(ch) <= 126 for ch in s)


def check_provenance(provenance: Mapping[str, Any] | None, path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """A copy of ``provenance`` with plain Python values, checked so that both formats store it exactly.

    Keys: an identifier (letter first, then letters, digits, ``_``; at most 40 characters, so that a FITS
    HIERARCH card fits), not one the writers own and not a structural FITS keyword. Values: ``str`` (printable
    ASCII, as FITS headers require: write structured values as JSON, whose default output is ASCII), ``bool``,
    ``int`` (int64) or finite ``float``.
    """
    if provenance is None:
        return {}
    if not isinstance(provenance, Mapping):
        raise CatalogError(path, f"provenance must be a dict of str -> str/number, got {type(provenance).__name__}")
    out: dict[str, Any] = {}
    for key, value in provenance.items():
        where = f"provenance key {key!r}"
        if not isinstance(key, str) or not _KEY.match(key):
            raise CatalogError(path, f"{where}: keys are identifiers of at most 40 characters (letters, digits, _)")
        if key.lower() in RESERVED_KEYS or _FITS_RESERVED.match(key.upper()):
            raise CatalogError(path, f"{where}: reserved for the file structure; choose another name")
        if key.lower() in {k.lower() for k in out}:
            raise CatalogError(path, f"{where}: repeats another key up to case (FITS keywords ignore case)")
        if isinstance(value, (bool, np.bool_)):
            out[key] = bool(value)
        elif isinstance(value, numbers.Integral):
            if not -(2**63) <= int(value) < 2**63:
                raise CatalogError(path, f"{where}: integer {value} does not fit in int64")
            out[key] = int(value)
        elif isinstance(value, numbers.Real):
            if not math.isfinite(float(value)):
                raise CatalogError(path, f"{where}: {value} is not finite (FITS headers cannot hold it)")
            out[key] = float(value)
        elif isinstance(value, str):
            if not _printable(value):
                raise CatalogError(path, f"{where}: strings must be printable ASCII (encode structure as JSON)")
            out[key] = value
        else:
            raise CatalogError(path, f"{where}: values are str, bool, int or float, not {type(value).__name__}")
    return out


def check_priors(priors: Mapping[str, Any] | None, n_grid: int, path: str | os.PathLike[str] | None
                 ) -> dict[str, np.ndarray]:
    """The priors on the grid (``{"target_prior": (G,), "training_prior": (G,)}``, per dex) as float64 arrays:
    both or none, each of the grid's length, finite and non-negative, the target's integral over the grid > 0."""
    if priors is None:
        return {}
    if not isinstance(priors, Mapping):
        raise CatalogError(path, f"priors must be a dict of name -> array, got {type(priors).__name__}")
    extra = [k for k in priors if k not in PRIOR_NAMES]
    if extra:
        raise CatalogError(path, f"unknown prior; expected {list(PRIOR_NAMES)}", column=str(extra[0]))
    out: dict[str, np.ndarray] = {}
    for name in PRIOR_NAMES:
        if name not in priors:
            raise CatalogError(path, f"prior missing: expected both {list(PRIOR_NAMES)} on the grid", column=name)
        try:
            values = np.array(priors[name], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CatalogError(path, f"prior is not numeric ({exc})", column=name) from None
        if values.shape != (n_grid,):
            raise CatalogError(path, f"prior has shape {values.shape}, expected ({n_grid},): one value per grid "
                                     "point", column=name)
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise CatalogError(path, "prior must be finite and non-negative (a density per dex)", column=name)
        if not np.any(values > 0):
            raise CatalogError(path, "prior is zero everywhere on the grid", column=name)
        values.setflags(write=False)
        out[name] = values
    return out

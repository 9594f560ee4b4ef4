"""Unit normalisation, in one place.

Files state units in different ways: Rockstar and CosmoSim write Rvir/Rs in comoving kpc/h, UniverseMachine
writes halo radii in kpc/h, HDF5 files carry a ``unit`` attribute per dataset. Readers ask
:func:`conversion_factor` for the factor that takes a file's unit to the canonical unit of
:mod:`ingest.schema`, and fail with a clear error on a unit they cannot convert.
"""

from __future__ import annotations

import math

from pipeline.errors import InputError

# Canonical unit -> {spelling in files: multiplicative factor to the canonical unit}
_EQUIVALENT: dict[str, dict[str, float]] = {
    "Mpc/h": {"mpc/h": 1.0, "h^-1 mpc": 1.0, "mpc h^-1": 1.0, "kpc/h": 1e-3, "h^-1 kpc": 1e-3, "kpc h^-1": 1e-3},
    "Msun/h": {"msun/h": 1.0, "h^-1 msun": 1.0, "msun h^-1": 1.0, "1e10 msun/h": 1e10, "m_sun/h": 1.0},
    "Msun": {"msun": 1.0, "m_sun": 1.0, "solmass": 1.0},
    "Msun/yr": {"msun/yr": 1.0, "m_sun/yr": 1.0, "solmass/yr": 1.0},
    "km/s": {"km/s": 1.0, "km s^-1": 1.0, "km / s": 1.0},
    "mag": {"mag": 1.0},
    "": {"": 1.0, "dimensionless": 1.0, "none": 1.0},
}

#: Units of the Rockstar / CosmoSim text formats where they differ from the canonical ones.
ROCKSTAR_FILE_UNITS: dict[str, str] = {"rvir": "kpc/h", "rs": "kpc/h"}
#: Units of the UniverseMachine binary and ASCII formats where they differ from the canonical ones.
UNIVERSEMACHINE_FILE_UNITS: dict[str, str] = {"r": "kpc/h"}


#: Units a real members or centres file (``clustermass query`` / ``infer``) may state, per canonical unit of
#: :mod:`inference.member_table`: spelling (lower case, no spaces) -> multiplicative factor to the canonical unit.
_MEMBER_EQUIVALENT: dict[str, dict[str, float]] = {
    "Mpc/h": {"mpc/h": 1.0, "h^-1mpc": 1.0, "mpch^-1": 1.0, "mpch-1": 1.0, "mpc/littleh": 1.0, "kpc/h": 1e-3,
              "h^-1kpc": 1e-3, "kpch^-1": 1e-3, "kpch-1": 1e-3, "kpc/littleh": 1e-3},
    "km/s": {"km/s": 1.0, "kms^-1": 1.0, "kms-1": 1.0, "m/s": 1e-3, "ms^-1": 1e-3, "ms-1": 1e-3, "cm/s": 1e-5,
             "cms-1": 1e-5},
    "deg": {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "rad": 180.0 / math.pi, "arcmin": 1.0 / 60.0,
            "arcsec": 1.0 / 3600.0},
    "": {"": 1.0, "dimensionless": 1.0, "none": 1.0, "redshift": 1.0},
    "dex(Msun)": {"dex(msun)": 1.0, "dex(solmass)": 1.0, "dex(m_sun)": 1.0, "log(msun)": 1.0, "log10(msun)": 1.0,
                  "log(solmass)": 1.0, "log10(solmass)": 1.0, "dex": 1.0},
    "mag": {"mag": 1.0, "mag(ab)": 1.0, "abmag": 1.0, "ab": 1.0},
}
#: comoving lengths stated without h: factor to Mpc, then times h to reach Mpc/h
_LENGTH_WITHOUT_H: dict[str, float] = {"mpc": 1.0, "kpc": 1e-3, "pc": 1e-6, "gpc": 1e3}


def member_conversion_factor(file_unit: str | None, canonical: str, *, path: str, column: str,
                             h: float | None = None) -> float:
    """Factor taking a members or centres file's column in ``file_unit`` to ``canonical`` (one of ``Mpc/h``,
    ``km/s``, ``deg``, ``""`` (redshift), ``dex(Msun)``, ``mag``); None or an empty unit: the file states none, the
    canonical unit is assumed. A length without h (``kpc``, ``Mpc``) needs ``h`` (the model's cosmology): 100 kpc
    at h = 0.7 is 0.07 Mpc/h. Any other unit is refused with one line naming the file and the column."""
    if file_unit is None or not str(file_unit).strip():
        return 1.0
    key = "".join(str(file_unit).lower().split())
    table = _MEMBER_EQUIVALENT[canonical]
    if key in table:
        return table[key]
    if canonical == "Mpc/h" and key in _LENGTH_WITHOUT_H:
        if h is None:  # pragma: no cover - callers always pass the model's h
            raise InputError(path, f"unit '{file_unit}' needs the Hubble parameter h to convert to Mpc/h",
                             column=column)
        return _LENGTH_WITHOUT_H[key] * h
    spellings = sorted({*(k for k in table if k), *(_LENGTH_WITHOUT_H if canonical == "Mpc/h" else ())})
    raise InputError(path, f"unit '{file_unit}' cannot be converted to {canonical or 'a dimensionless redshift'}; "
                           f"expected one of {spellings}", column=column)


def conversion_factor(file_unit: str | None, canonical: str, *, path: str, column: str) -> float:
    """Factor taking values in ``file_unit`` to ``canonical`` (None: the file states no unit; assume canonical)."""
    if file_unit is None:
        return 1.0
    table = _EQUIVALENT.get(canonical)
    if table is None:  # pragma: no cover - a schema bug, not user input
        raise KeyError(f"no conversions known for canonical unit {canonical!r}")
    key = " ".join(file_unit.strip().lower().split())
    if key in table:
        return table[key]
    raise InputError(
        path,
        f"unit '{file_unit}' cannot be converted to {canonical or 'a dimensionless number'}; "
        f"expected one of {sorted(k for k in table if k)}",
        column=column,
    )

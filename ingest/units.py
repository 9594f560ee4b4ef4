"""Unit normalisation, in one place.

Files state units in different ways: Rockstar and CosmoSim write Rvir/Rs in comoving kpc/h, UniverseMachine
writes halo radii in kpc/h, HDF5 files carry a ``unit`` attribute per dataset. Readers ask
:func:`conversion_factor` for the factor that takes a file's unit to the canonical unit of
:mod:`ingest.schema`, and fail with a clear error on a unit they cannot convert.
"""

from __future__ import annotations

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

"""The snapshot a catalog belongs to: periodic box size, scale factor and cosmology.

Never assumed silently: it comes from catalog headers, a metadata sidecar, or the configuration,
and :func:`resolve_snapshot` refuses sources that disagree.
Units: box size in comoving Mpc/h.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.cosmology import Cosmology
from pipeline.errors import ConfigError, InputError


@dataclass(frozen=True)
class Snapshot:
    """A periodic simulation snapshot.

    Attributes
    ----------
    box_size : comoving side length, Mpc/h
    scale_factor : a = 1 / (1 + z)
    cosmology : flat Lambda-CDM parameters
    name : simulation label (e.g. ``"MDPL2"``), carried into provenance
    """

    box_size: float
    scale_factor: float
    cosmology: Cosmology
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not (isinstance(self.box_size, int | float) and math.isfinite(self.box_size) and self.box_size > 0):
            raise ConfigError(f"snapshot: box_size must be a positive length in Mpc/h, got {self.box_size!r}")
        a = self.scale_factor
        if not (isinstance(a, int | float) and math.isfinite(a) and 0.0 < a <= 1.0 + 1e-9):
            raise ConfigError(f"snapshot: scale_factor must be in (0, 1], got {a!r}")

    @property
    def redshift(self) -> float:
        return 1.0 / self.scale_factor - 1.0

    def hubble(self) -> float:
        """H(z) at the snapshot, km/s/Mpc (physical)."""
        return self.cosmology.hubble(self.redshift)

    def hubble_per_comoving(self) -> float:
        """Hubble-flow velocity per unit comoving separation: a H(z) / h, in (km/s) / (Mpc/h)."""
        return self.scale_factor * self.hubble() / self.cosmology.h

    def agrees_with(self, other: Snapshot, rtol: float = 1e-4) -> bool:
        """Same box, scale factor and cosmology (h, Om0) to ``rtol``; names may differ."""
        return (
            math.isclose(self.box_size, other.box_size, rel_tol=rtol)
            and math.isclose(self.scale_factor, other.scale_factor, rel_tol=rtol)
            and self.cosmology.agrees_with(other.cosmology)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "box_size": self.box_size,
            "box_size_unit": "Mpc/h (comoving)",
            "scale_factor": self.scale_factor,
            "redshift": self.redshift,
            "cosmology": self.cosmology.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "snapshot") -> Snapshot:
        data = dict(data)
        data.pop("box_size_unit", None)
        known = {"name", "box_size", "scale_factor", "redshift", "cosmology"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        if "box_size" not in data:
            raise ConfigError(f"{where}: box_size (comoving Mpc/h) is required")
        if "scale_factor" in data:
            a = float(data["scale_factor"])
            if "redshift" in data and not math.isclose(1 / a - 1, float(data["redshift"]), abs_tol=1e-4):
                raise ConfigError(f"{where}: scale_factor {a} and redshift {data['redshift']} disagree")
        elif "redshift" in data:
            a = 1.0 / (1.0 + float(data["redshift"]))
        else:
            raise ConfigError(f"{where}: scale_factor (or redshift) is required")
        if "cosmology" not in data:
            raise ConfigError(f"{where}: cosmology is required (a preset name such as 'mdpl2' or parameters)")
        cosmo = data["cosmology"]
        if isinstance(cosmo, str):
            cosmo = {"name": cosmo}
        if not isinstance(cosmo, Mapping):
            raise ConfigError(f"{where}: cosmology must be a name or a table, got {cosmo!r}")
        return cls(
            box_size=float(data["box_size"]),
            scale_factor=a,
            cosmology=Cosmology.from_dict(cosmo, where=f"{where}.cosmology"),
            name=str(data.get("name", "")),
        )


#: The name :func:`resolve_snapshot` gives to what the configuration says.
CONFIG_SOURCE = "the configuration"


@dataclass(frozen=True)
class PartialSnapshot:
    """What one source (a header, a file name, a sidecar, the configuration) says about the snapshot.

    Any field may be unknown (None). ``h``/``Om0`` are what Rockstar headers carry when the full cosmology
    is not given. ``source`` names where it came from, for error messages.
    """

    source: str
    box_size: float | None = None
    scale_factor: float | None = None
    cosmology: Cosmology | None = None
    name: str | None = None
    h: float | None = None
    Om0: float | None = None

    @classmethod
    def of(cls, snap: Snapshot, source: str) -> PartialSnapshot:
        return cls(source, snap.box_size, snap.scale_factor, snap.cosmology, snap.name)


def resolve_snapshot(*parts: PartialSnapshot | None, rtol: float = 1e-4) -> Snapshot:
    """Combine what several sources say; fail when two disagree or a quantity is known by none.

    ``rtol`` applies to the box size and scale factor; cosmologies are compared on h and Om0. When no source
    gives a full cosmology but a header gives h and Om0 that match a preset (e.g. MDPL2) to 1e-3, that
    preset is used, and its name says so in the provenance.
    """
    given = [p for p in parts if p is not None]
    resolved: dict[str, tuple[Any, str]] = {}

    def _agree(key: str, value: Any, source: str) -> None:
        if key not in resolved:
            resolved[key] = (value, source)
            return
        old, old_src = resolved[key]
        same = old.agrees_with(value) if key == "cosmology" else math.isclose(old, value, rel_tol=rtol)
        if not same:
            # Name the file at fault first: the configuration is what the user asked for.
            (file_src, file_val), (other_src, other_val) = sorted(
                [(old_src, old), (source, value)], key=lambda sv: sv[0] == CONFIG_SOURCE
            )
            raise InputError(
                _path_of(file_src),
                f"{key} {_describe(key, file_val)} ({_what_of(file_src)}) disagrees with "
                f"{_describe(key, other_val)} from {other_src}",
            )

    for part in given:
        for key in ("box_size", "scale_factor", "cosmology"):
            value = getattr(part, key)
            if value is not None:
                _agree(key, value, part.source)
        if part.name and "name" not in resolved:
            resolved["name"] = (part.name, part.source)
    # h / Om0 from headers: checked against the full cosmology, or used to identify a preset.
    for part in given:
        if part.h is None or part.Om0 is None:
            continue
        if "cosmology" in resolved:
            cosmo, src = resolved["cosmology"]
            if not (math.isclose(cosmo.h, part.h, rel_tol=1e-3) and math.isclose(cosmo.Om0, part.Om0, rel_tol=1e-3)):
                raise InputError(
                    _path_of(part.source),
                    f"cosmology (h={part.h:g}, Om0={part.Om0:g}) disagrees with "
                    f"{_describe('cosmology', cosmo)} from {src}",
                )
        else:
            preset = _preset_matching(part.h, part.Om0)
            if preset is not None:
                resolved["cosmology"] = (preset, f"{part.source}, identified as preset '{preset.name}'")
    missing = [k for k in ("box_size", "scale_factor", "cosmology") if k not in resolved]
    if missing:
        sources = ", ".join(p.source for p in given) or "no source"
        raise ConfigError(
            f"snapshot {', '.join(missing)} unknown (looked in: {sources}); "
            "give them in the configuration [snapshot] table (box_size in Mpc/h, scale_factor, cosmology)"
        )
    return Snapshot(
        box_size=float(resolved["box_size"][0]),
        scale_factor=float(resolved["scale_factor"][0]),
        cosmology=resolved["cosmology"][0],
        name=str(resolved.get("name", ("", ""))[0]),
    )


def _preset_matching(h: float, Om0: float) -> Cosmology | None:
    from pipeline.cosmology import PRESETS

    for preset in PRESETS.values():
        if math.isclose(preset.h, h, rel_tol=1e-3) and math.isclose(preset.Om0, Om0, rel_tol=1e-3):
            return preset
    return None


def _path_of(source: str) -> str | None:
    return None if source == CONFIG_SOURCE else source.partition(" (")[0]


def _what_of(source: str) -> str:
    return source.partition(" (")[2].rstrip(")") or source


def _describe(key: str, value: Any) -> str:
    if key == "cosmology":
        return f"(h={value.h:g}, Om0={value.Om0:g})"
    if key == "box_size":
        return f"{value:g} Mpc/h"
    return f"{value:g}"

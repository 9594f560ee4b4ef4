"""The one place where cosmologies are defined, parsed and handed to astropy and colossus.

Units: H0 in km/s/Mpc, densities in (Msun/h) / (Mpc/h)^3 (physical, not comoving), distances in Mpc/h.
Nothing here keeps global state; colossus (which does) is only touched inside :func:`colossus_cosmology`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pipeline.errors import ConfigError

# Critical density today in h^2 Msun / Mpc^3, i.e. in (Msun/h) / (Mpc/h)^3 once h is folded in
# (3 H0^2 / 8 pi G with H0 = 100 h km/s/Mpc, G = 4.30091727e-9 Mpc (km/s)^2 / Msun).
RHO_CRIT0_H2 = 3.0 * 100.0**2 / (8.0 * math.pi * 4.30091727e-9)
# Newton's constant in Mpc (km/s)^2 / Msun.
G_MPC_KMS2_MSUN = 4.30091727e-9


@dataclass(frozen=True)
class Cosmology:
    """A flat Lambda-CDM cosmology.

    Attributes
    ----------
    h : dimensionless Hubble parameter, H0 / (100 km/s/Mpc)
    Om0, Ob0 : matter and baryon density parameters today
    ns, sigma8 : primordial spectral index and the amplitude of fluctuations (8 Mpc/h spheres)
    Tcmb0 : CMB temperature today, K
    name : a label carried into provenance
    """

    h: float
    Om0: float
    Ob0: float
    ns: float
    sigma8: float
    Tcmb0: float = 2.7255
    name: str = "custom"

    def __post_init__(self) -> None:
        checks = {
            "h": 0.2 < self.h < 2.0,
            "Om0": 0.01 < self.Om0 < 1.0,
            "Ob0": 0.0 <= self.Ob0 < self.Om0,
            "ns": 0.5 < self.ns < 1.5,
            "sigma8": 0.1 < self.sigma8 < 2.0,
            "Tcmb0": 0.0 <= self.Tcmb0 < 10.0,
        }
        for key, ok in checks.items():
            value = getattr(self, key)
            if not (isinstance(value, int | float) and math.isfinite(value) and ok):
                raise ConfigError(f"cosmology '{self.name}': {key} = {value!r} is outside its physical range")

    @property
    def Ode0(self) -> float:
        """Dark-energy density parameter today (flat universe, radiation neglected)."""
        return 1.0 - self.Om0

    def efunc(self, z: float) -> float:
        """E(z) = H(z) / H0 (radiation neglected, as in the MultiDark runs)."""
        return math.sqrt(self.Om0 * (1.0 + z) ** 3 + self.Ode0)

    def hubble(self, z: float) -> float:
        """H(z) in km/s/Mpc (physical Mpc, not Mpc/h)."""
        return 100.0 * self.h * self.efunc(z)

    def critical_density(self, z: float) -> float:
        """Critical density at z in (Msun/h) / (Mpc/h)^3, physical."""
        return RHO_CRIT0_H2 * self.efunc(z) ** 2

    def omega_m(self, z: float) -> float:
        """Matter density parameter at z."""
        a3 = (1.0 + z) ** 3
        return self.Om0 * a3 / (self.Om0 * a3 + self.Ode0)

    def to_astropy(self):  # -> astropy.cosmology.FlatLambdaCDM (import kept lazy: astropy is slow)
        """This cosmology as an astropy ``FlatLambdaCDM`` (massless neutrinos)."""
        from astropy.cosmology import FlatLambdaCDM

        return FlatLambdaCDM(H0=100.0 * self.h, Om0=self.Om0, Ob0=self.Ob0, Tcmb0=self.Tcmb0, name=self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "cosmology") -> Cosmology:
        """Build from a mapping; a known name alone (``{"name": "mdpl2"}``) selects a preset."""
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        name = str(data.get("name", "custom"))
        if set(data) <= {"name"}:
            return named_cosmology(name)
        missing = [k for k in ("h", "Om0", "Ob0", "ns", "sigma8") if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing} (or give only a known name: {sorted(PRESETS)})")
        for key, value in data.items():
            if key != "name" and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        return cls(**data)

    def agrees_with(self, other: Cosmology, rtol: float = 1e-3) -> bool:
        """True when h, Om0 agree to ``rtol`` (what catalog headers carry)."""
        return math.isclose(self.h, other.h, rel_tol=rtol) and math.isclose(self.Om0, other.Om0, rel_tol=rtol)


#: MultiDark Planck 2 (cosmosim.org MDPL2 pages).
MDPL2 = Cosmology(h=0.6777, Om0=0.307115, Ob0=0.048206, ns=0.96, sigma8=0.8228, name="mdpl2")
#: Bolshoi-Planck / SMDPL share the MDPL2 cosmology.
PRESETS: dict[str, Cosmology] = {"mdpl2": MDPL2, "smdpl": MDPL2, "bolshoi-planck": MDPL2}


def identify(cosmo: Cosmology, rtol: float = 1e-4) -> Cosmology:
    """The preset with the same parameters as ``cosmo`` (so provenance names it), else ``cosmo`` itself."""
    for preset in PRESETS.values():
        if all(
            math.isclose(getattr(preset, k), getattr(cosmo, k), rel_tol=rtol)
            for k in ("h", "Om0", "Ob0", "ns", "sigma8")
        ):
            return preset
    return cosmo


def named_cosmology(name: str) -> Cosmology:
    """A preset by (case-insensitive) name."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown cosmology '{name}'; known: {sorted(PRESETS)}") from None


@contextlib.contextmanager
def colossus_cosmology(cosmo: Cosmology, cache_dir: str | None = None) -> Iterator[Any]:
    """Make ``cosmo`` colossus's current cosmology inside the block, restoring the previous one after.

    colossus keeps its cosmology in a module global; this is the only place that touches it.
    ``cache_dir``: where colossus may persist its interpolation tables (None: nothing is written).
    """
    from colossus import settings
    from colossus.cosmology import cosmology as ccosmo

    previous = ccosmo.current_cosmo
    old_base = settings.BASE_DIR
    if cache_dir is not None:
        settings.BASE_DIR = cache_dir
    params = {
        "flat": True,
        "H0": 100.0 * cosmo.h,
        "Om0": cosmo.Om0,
        "Ob0": cosmo.Ob0,
        "sigma8": cosmo.sigma8,
        "ns": cosmo.ns,
        "Tcmb0": cosmo.Tcmb0,
        "relspecies": False,
        "persistence": "rw" if cache_dir is not None else "",
    }
    try:
        yield ccosmo.setCosmology(f"clustermass-{cosmo.name}", **params)
    finally:
        settings.BASE_DIR = old_base
        if previous is not None:
            ccosmo.setCurrent(previous)

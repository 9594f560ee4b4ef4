"""NFW haloes: Duffy et al. (2008) concentrations, radius sampling, and mass-definition conversions.

Units: masses in Msun/h; radii in comoving Mpc/h unless a name says ``physical``; densities in
(Msun/h) / (Mpc/h)^3 physical (as :meth:`pipeline.cosmology.Cosmology.critical_density`); velocities km/s.
Overdensities ``Delta`` are always relative to the *critical* density at the snapshot redshift.

Conversions between M200c and other overdensities assume an NFW profile with concentration c = c200c
(R200c / r_s). They are tabulated once over c (:class:`MassConversion`) and applied to any number of haloes
by interpolation: no per-halo root finding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from scipy.special import lambertw

from pipeline.cosmology import G_MPC_KMS2_MSUN, Cosmology
from pipeline.errors import ConfigError

#: Duffy et al. (2008), full sample, Delta = 200c, z = 0-2: c = A (M / M_pivot)^B (1+z)^C, M in Msun/h.
DUFFY08_A = 5.71
DUFFY08_B = -0.084
DUFFY08_C = -0.47
DUFFY08_PIVOT = 2.0e12
#: Concentrations drawn with scatter are clipped into this range (the conversion tables cover it).
CONCENTRATION_RANGE = (1.0, 100.0)

#: Radius of the maximum of the NFW circular velocity in units of r_s: the root of
#: d/dx [mu(x)/x] = 0, x = 2.16258...
X_VMAX = 2.1625815870646098


def mu(x: np.ndarray | float) -> np.ndarray:
    """NFW mass function mu(x) = ln(1+x) - x/(1+x): M(<r) = 4 pi rho_s r_s^3 mu(r/r_s)."""
    x = np.asarray(x, dtype=np.float64)
    return np.log1p(x) - x / (1.0 + x)


#: vmax / V200 = VMAX_FACTOR * sqrt(c / mu(c)), with VMAX_FACTOR = sqrt(mu(X_VMAX) / X_VMAX) = 0.46499.
VMAX_FACTOR = float(np.sqrt(mu(X_VMAX) / X_VMAX))


def enclosed_fraction(x: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """M(< x R200c) / M200c = mu(c x) / mu(c) for an NFW halo of concentration c (x = r / R200c)."""
    c = np.asarray(c, dtype=np.float64)
    return mu(c * np.asarray(x, dtype=np.float64)) / mu(c)


def duffy08_concentration(m200c: np.ndarray | float, redshift: float) -> np.ndarray:
    """Median c200c of Duffy et al. (2008): 5.71 (M200c / 2e12 Msun/h)^-0.084 (1+z)^-0.47."""
    m = np.asarray(m200c, dtype=np.float64)
    return DUFFY08_A * (m / DUFFY08_PIVOT) ** DUFFY08_B * (1.0 + redshift) ** DUFFY08_C


def sample_concentration(
    rng: np.random.Generator, m200c: np.ndarray, redshift: float, scatter_dex: float = 0.15
) -> np.ndarray:
    """c200c drawn lognormally around Duffy+08 (``scatter_dex`` in log10 c), clipped to CONCENTRATION_RANGE.

    ``m200c`` in Msun/h. One normal variate is drawn per halo even when ``scatter_dex`` is 0, so that the
    random stream does not depend on the scatter.
    """
    median = duffy08_concentration(m200c, redshift)
    eps = rng.standard_normal(median.shape)
    return np.clip(median * 10.0 ** (scatter_dex * eps), *CONCENTRATION_RANGE)


def radius_quantile(u: np.ndarray, c: np.ndarray | float) -> np.ndarray:
    """r / R200c whose enclosed NFW mass fraction is ``u`` (inverse CDF of the NFW profile inside R200c).

    Closed form: with q = u mu(c), r / r_s = -1 - 1 / W0(-exp(-1 - q)), W0 the principal Lambert W.
    """
    c = np.asarray(c, dtype=np.float64)
    q = np.asarray(u, dtype=np.float64) * mu(c)
    w = lambertw(-np.exp(-1.0 - q), 0).real
    y = -1.0 - 1.0 / w
    return y / c


def sample_radius(rng: np.random.Generator, c: np.ndarray) -> np.ndarray:
    """r / R200c for tracers of an NFW profile truncated at R200c, one per entry of ``c`` (c200c)."""
    c = np.asarray(c, dtype=np.float64)
    return radius_quantile(rng.random(c.shape), c)


# --------------------------------------------------------------------------------------------------
# Overdensities, radii and velocities


def bryan_norman_delta_c(cosmology: Cosmology, redshift: float) -> float:
    """Virial overdensity of Bryan & Norman (1998) wrt critical: 18 pi^2 + 82 x - 39 x^2, x = Om(z) - 1."""
    x = cosmology.omega_m(redshift) - 1.0
    return 18.0 * math.pi**2 + 82.0 * x - 39.0 * x * x


def overdensity(mdef: str, cosmology: Cosmology, redshift: float) -> float:
    """Delta relative to the critical density for a mass definition: ``"vir"``, ``"<N>c"`` or ``"<N>m"``/``"<N>b"``.

    ``"200b"`` (= ``"200m"``) is 200 x the mean matter density = 200 Om(z) x critical.
    """
    key = mdef.strip().lower()
    if key == "vir":
        return bryan_norman_delta_c(cosmology, redshift)
    try:
        value = float(key[:-1])
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"unknown mass definition '{mdef}'; expected 'vir', e.g. '200c', '500c' or '200b'")
    if key.endswith("c"):
        return value
    if key.endswith(("b", "m")):
        return value * cosmology.omega_m(redshift)
    raise ConfigError(f"unknown mass definition '{mdef}'; expected 'vir', e.g. '200c', '500c' or '200b'")


def radius_from_mass(
    mass: np.ndarray | float, delta_c: float, cosmology: Cosmology, redshift: float
) -> np.ndarray:
    """Comoving radius (Mpc/h) enclosing mean density ``delta_c`` x rho_crit(z) for ``mass`` (Msun/h).

    rho_crit(z) is physical, so the physical radius (3 M / 4 pi Delta rho_crit)^(1/3) is divided by
    a = 1 / (1 + z) to make it comoving.
    """
    rho = delta_c * cosmology.critical_density(redshift)
    r_phys = np.cbrt(3.0 * np.asarray(mass, dtype=np.float64) / (4.0 * math.pi * rho))
    return r_phys * (1.0 + redshift)


def circular_velocity(
    mass: np.ndarray | float, radius: np.ndarray | float, redshift: float
) -> np.ndarray:
    """sqrt(G M / R_phys) in km/s for ``mass`` (Msun/h) inside comoving ``radius`` (Mpc/h).

    The factors of h cancel in M / R; R_phys = R_comoving / (1 + z).
    """
    r_phys = np.asarray(radius, dtype=np.float64) / (1.0 + redshift)
    return np.sqrt(G_MPC_KMS2_MSUN * np.asarray(mass, dtype=np.float64) / r_phys)


def v200c(m200c: np.ndarray | float, cosmology: Cosmology, redshift: float) -> np.ndarray:
    """V200 = sqrt(G M200c / R200c_phys) in km/s, M200c in Msun/h."""
    return circular_velocity(m200c, radius_from_mass(m200c, 200.0, cosmology, redshift), redshift)


def vmax_nfw(
    m200c: np.ndarray | float, c: np.ndarray | float, cosmology: Cosmology, redshift: float
) -> np.ndarray:
    """Maximum circular velocity (km/s) of an NFW halo: VMAX_FACTOR x V200 x sqrt(c / mu(c)).

    VMAX_FACTOR = sqrt(mu(2.1626) / 2.1626) = 0.46499 (exact for NFW; 0.4625 is sometimes quoted).
    """
    c = np.asarray(c, dtype=np.float64)
    return VMAX_FACTOR * v200c(m200c, cosmology, redshift) * np.sqrt(c / mu(c))


# --------------------------------------------------------------------------------------------------
# Tabulated conversions M200c -> M_Delta


def _solve_radius_ratio(c: np.ndarray, delta_c: float, iterations: int = 80) -> np.ndarray:
    """x = R_Delta / R200c solving 200 mu(c x) / (mu(c) x^3) = delta_c, vectorised bisection over c."""
    target = delta_c / 200.0
    lo = np.full(c.shape, 1e-3)
    hi = np.full(c.shape, 50.0)
    for _ in range(iterations):
        mid = np.sqrt(lo * hi)
        dense = enclosed_fraction(mid, c) / mid**3 > target  # mean density decreases outward
        lo = np.where(dense, mid, lo)
        hi = np.where(dense, hi, mid)
    return np.sqrt(lo * hi)


@dataclass(frozen=True, eq=False)
class MassConversion:
    """NFW conversion of M200c to other overdensities, tabulated over log10 c200c.

    Attributes
    ----------
    redshift : snapshot redshift
    deltas : mass definition -> Delta wrt critical at ``redshift``
    log10_c : ascending grid of log10 c200c covering CONCENTRATION_RANGE
    log10_mass_ratio : mass definition -> log10(M_Delta / M200c) on the grid
    log10_radius_ratio : mass definition -> log10(R_Delta / R200c) on the grid
    """

    redshift: float
    deltas: Mapping[str, float]
    log10_c: np.ndarray
    log10_mass_ratio: Mapping[str, np.ndarray]
    log10_radius_ratio: Mapping[str, np.ndarray]

    @classmethod
    def build(
        cls,
        cosmology: Cosmology,
        redshift: float,
        mdefs: Iterable[str] = ("vir", "200b", "500c"),
        n_grid: int = 1001,
    ) -> MassConversion:
        log10_c = np.linspace(math.log10(CONCENTRATION_RANGE[0]), math.log10(CONCENTRATION_RANGE[1]), n_grid)
        c = 10.0**log10_c
        deltas, mass_ratio, radius_ratio = {}, {}, {}
        for mdef in mdefs:
            delta = overdensity(mdef, cosmology, redshift)
            x = _solve_radius_ratio(c, delta)
            deltas[mdef] = delta
            mass_ratio[mdef] = np.log10(enclosed_fraction(x, c))
            radius_ratio[mdef] = np.log10(x)
            mass_ratio[mdef].setflags(write=False)
            radius_ratio[mdef].setflags(write=False)
        log10_c.setflags(write=False)
        return cls(
            float(redshift),
            MappingProxyType(deltas),
            log10_c,
            MappingProxyType(mass_ratio),
            MappingProxyType(radius_ratio),
        )

    def mass_ratio(self, c200c: np.ndarray | float, mdef: str) -> np.ndarray:
        """M_Delta / M200c for NFW haloes of concentration ``c200c``."""
        return 10.0 ** np.interp(np.log10(c200c), self.log10_c, self.log10_mass_ratio[mdef])

    def radius_ratio(self, c200c: np.ndarray | float, mdef: str) -> np.ndarray:
        """R_Delta / R200c for NFW haloes of concentration ``c200c``."""
        return 10.0 ** np.interp(np.log10(c200c), self.log10_c, self.log10_radius_ratio[mdef])

    def mass(self, m200c: np.ndarray | float, c200c: np.ndarray | float, mdef: str) -> np.ndarray:
        """M_Delta in Msun/h from M200c (Msun/h) and c200c."""
        return np.asarray(m200c, dtype=np.float64) * self.mass_ratio(c200c, mdef)

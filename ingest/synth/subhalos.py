"""Subhaloes hosting satellite galaxies: peak masses, tidal stripping and the stripped vmax.

Masses in Msun/h (M200c unless named otherwise), velocities km/s.

Choices (document in the README):

* peak masses M200c,peak follow the unevolved subhalo mass function dN/dm ∝ m^-slope (slope 1.9 by default)
  between ``m_min`` (default 1e11 Msun/h, the resolution of distinct haloes) and ``max_fraction`` x M200c of
  the host (default 0.1). For hosts so small that ``max_fraction x M_host <= 2 m_min`` the lower limit becomes
  half the upper one (only hosts below ~2e12 Msun/h, which have few satellites).
* the present mass is the peak mass stripped by 10^-(s), s = U(0, 1) x max_strip_dex x (1 - r / (2 R200c)):
  up to ``max_strip_dex`` (0.6 dex) at the centre, up to half of that at R200c. So mpeak >= m always.
* vmax follows the Penarrubia et al. (2008) tidal track for NFW cusps,
  vmax / vmax,peak = 2^0.4 f^0.3 / (1 + f)^0.4 with f = m / mpeak (1 at f = 1).
"""

from __future__ import annotations

import numpy as np

SUBHALO_SLOPE = 1.9
SUBHALO_MAX_FRACTION = 0.1
MAX_STRIP_DEX = 0.6


def subhalo_mass_limits(
    host_m200c: np.ndarray, m_min: float, max_fraction: float = SUBHALO_MAX_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) limits in Msun/h of the subhalo peak mass for each host M200c (Msun/h)."""
    hi = max_fraction * np.asarray(host_m200c, dtype=np.float64)
    lo = np.minimum(m_min, 0.5 * hi)
    return lo, hi


def sample_peak_masses(
    rng: np.random.Generator,
    host_m200c: np.ndarray,
    m_min: float,
    slope: float = SUBHALO_SLOPE,
    max_fraction: float = SUBHALO_MAX_FRACTION,
) -> np.ndarray:
    """Peak M200c (Msun/h) of one subhalo per entry of ``host_m200c`` (Msun/h), dN/dm ∝ m^-slope, inverse CDF."""
    lo, hi = subhalo_mass_limits(host_m200c, m_min, max_fraction)
    u = rng.random(lo.shape)
    if abs(slope - 1.0) < 1e-12:
        return lo * (hi / lo) ** u
    k = 1.0 - slope
    return (lo**k + u * (hi**k - lo**k)) ** (1.0 / k)


def sample_stripping(
    rng: np.random.Generator, r_over_r200c: np.ndarray, max_strip_dex: float = MAX_STRIP_DEX
) -> np.ndarray:
    """Retained mass fraction f = m / mpeak in (0, 1] for subhaloes at ``r_over_r200c`` of their host."""
    x = np.clip(np.asarray(r_over_r200c, dtype=np.float64), 0.0, 1.0)
    return 10.0 ** (-rng.random(x.shape) * max_strip_dex * (1.0 - 0.5 * x))


def stripped_vmax(vmax_peak: np.ndarray, retained_fraction: np.ndarray) -> np.ndarray:
    """vmax (km/s) after stripping to ``retained_fraction`` of the peak mass (Penarrubia+08 tidal track)."""
    f = np.asarray(retained_fraction, dtype=np.float64)
    return np.asarray(vmax_peak, dtype=np.float64) * 2.0**0.4 * f**0.3 / (1.0 + f) ** 0.4

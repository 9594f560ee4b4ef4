"""Subhaloes hosting satellite galaxies: peak masses, tidal stripping and the stripped vmax.

Masses in Msun/h (M200c unless named otherwise), velocities km/s.

Choices (document in the README):

* by default (:func:`sample_subhalos`) the subhaloes of each host and their peak masses are drawn from the surviving
  subhalo peak-mass function of Jiang & van den Bosch (2016); with a HOD given to the box instead, one subhalo per
  HOD satellite gets a peak mass from :func:`sample_peak_masses`, where
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


# ---- satellites from the subhalo mass function (the default; see ingest.synth.box) --------------------------
#: Jiang & van den Bosch (2016, MNRAS 458, 2848), Table A1: the *unevolved surviving* subhalo mass function, i.e. the
#: peak (accretion) masses of the subhaloes that survive to z = 0, dN/dln psi = gamma psi^alpha exp(-beta psi^omega)
#: with psi = m_peak / M_host and gamma = 0.286 f_s^0.7, f_s = 0.325 / N_tau^0.6 - 0.075 (N_tau: the host's dynamical
#: times since its half-mass redshift). alpha, beta, omega as published; gamma is the box's ``subhalo_norm``.
JVDB16_ALPHA = -0.87
JVDB16_BETA = 40.0
JVDB16_OMEGA = 5.0
#: the default normalisation: f_s = 0.27 (N_tau ~ 1, dynamically young cluster-mass hosts), inside JvdB16's range;
#: with it cylinders hold UniverseMachine-like numbers of satellites (README, "The synthetic box")
SUBHALO_NORM = 0.11
_LOG_PSI = np.linspace(-8.0, 0.0, 1601)


def _cumulative(norm: float) -> np.ndarray:
    """N(< psi) of the JvdB16 function from psi = 1e-8, on :data:`_LOG_PSI` (trapezoids in log10 psi)."""
    psi = 10.0**_LOG_PSI
    per_dex = norm * np.log(10.0) * psi**JVDB16_ALPHA * np.exp(-JVDB16_BETA * psi**JVDB16_OMEGA)
    return np.concatenate(([0.0], np.cumsum(0.5 * (per_dex[1:] + per_dex[:-1]) * np.diff(_LOG_PSI))))


def mean_subhalos(host_m200c: np.ndarray, m_min: float, norm: float = SUBHALO_NORM) -> np.ndarray:
    """Mean number of surviving subhaloes with peak mass >= ``m_min`` (Msun/h) in hosts of ``host_m200c`` (Msun/h).

    psi is taken on M200c for both (the mass definition cancels to first order in the ratio).
    """
    cum = _cumulative(norm)
    lo = np.log10(np.clip(m_min / np.asarray(host_m200c, dtype=np.float64), 10.0**_LOG_PSI[0], 1.0))
    return cum[-1] - np.interp(lo, _LOG_PSI, cum)


def sample_subhalos(rng: np.random.Generator, host_m200c: np.ndarray, m_min: float,
                    norm: float = SUBHALO_NORM, abundance: np.ndarray | float = 1.0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Poisson numbers of surviving subhaloes above peak mass ``m_min`` per host, and their peak M200c (Msun/h).

    ``abundance`` (one value, or one per host: the host's ``satellite_abundance`` of
    :mod:`.galaxy_physics`) multiplies the mean number of each host, norm x abundance being its JvdB16 gamma;
    it does not change the shape of the peak-mass function. Returns (host index per subhalo, peak M200c per
    subhalo); the peak masses follow the JvdB16 function between ``m_min`` and the host's mass (inverse CDF on a
    0.005-dex table).
    """
    m = np.asarray(host_m200c, dtype=np.float64)
    cum = _cumulative(norm)
    lo = np.log10(np.clip(m_min / m, 10.0**_LOG_PSI[0], 1.0))
    c_lo = np.interp(lo, _LOG_PSI, cum)
    counts = rng.poisson((cum[-1] - c_lo) * abundance)
    host = np.repeat(np.arange(len(m)), counts)
    u = rng.random(len(host))
    log_psi = np.interp(c_lo[host] + u * (cum[-1] - c_lo[host]), cum, _LOG_PSI)
    return host, 10.0**log_psi * m[host]

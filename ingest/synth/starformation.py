"""Star formation, dust and UV magnitudes of the synthetic galaxies (simple, plausible recipes).

Units: stellar masses Msun (no h), SFR Msun/yr, magnitudes AB mag, halo masses Msun/h, times Gyr.

* star-forming main sequence of Speagle et al. (2014):
  log SFR = (0.84 - 0.026 t) log m* - (6.51 - 0.11 t), t the age of the universe in Gyr, scatter 0.3 dex;
* quenched fraction f_q = Phi((log m* - 10.5) / 0.4) for centrals; satellites are in addition quenched
  environmentally with probability 0.5 Phi((log M200c,host - 12.5) / 0.5); quenched galaxies sit 1.5 dex below
  the main sequence with 0.4 dex scatter;
* the SFR scatter uses UniverseMachine's ``ra`` (a standard normal) so that ``ra`` and ``sfr`` correlate, and
  ``rarank`` = Phi(ra) in [0, 1]; rank1 and rank2 are independent standard normals;
* observed SFR = SFR x 10^N(0, 0.1); UV attenuation A_UV = clip(1 + 0.7 (log m* - 10) + N(0, 0.3), 0, 4.5) for
  star-forming and clip(0.2 + N(0, 0.1), 0, 4.5) for quenched galaxies; intrinsic UV magnitude from the
  Kennicutt (1998) conversion SFR = 1.4e-28 L_nu [erg/s/Hz]: M_UV = -18.04 - 2.5 log10 SFR; obs_uv = that + A_UV
  (from obs_sfr).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from pipeline.cosmology import Cosmology

#: 1 / (100 km/s/Mpc) in Gyr.
HUBBLE_TIME_GYR_H = 9.777922216807891
MS_SCATTER_DEX = 0.3
QUENCHED_OFFSET_DEX = 1.5
QUENCHED_SCATTER_DEX = 0.4
OBS_SFR_SCATTER_DEX = 0.1
#: M_UV = UV_ZEROPOINT - 2.5 log10(SFR / Msun/yr)   (Kennicutt 1998 K_UV = 1.4e-28, AB magnitudes)
UV_ZEROPOINT = 51.595 - 2.5 * math.log10(1.0 / 1.4e-28)


def cosmic_time_gyr(cosmology: Cosmology, redshift: float) -> float:
    """Age of a flat Lambda-CDM universe (radiation neglected) at ``redshift``, Gyr."""
    ol, om = cosmology.Ode0, cosmology.Om0
    a = 1.0 / (1.0 + redshift)
    return (2.0 / 3.0) * HUBBLE_TIME_GYR_H / cosmology.h / math.sqrt(ol) * math.asinh(math.sqrt(ol / om) * a**1.5)


def main_sequence_log_sfr(log_sm: np.ndarray, age_gyr: float) -> np.ndarray:
    """Speagle+14 main sequence: log10 SFR (Msun/yr) at log10 stellar mass (Msun)."""
    return (0.84 - 0.026 * age_gyr) * np.asarray(log_sm) - (6.51 - 0.11 * age_gyr)


def quenched_fraction(log_sm: np.ndarray, is_satellite: np.ndarray, host_m200c: np.ndarray) -> np.ndarray:
    """Probability of being quenched, from stellar mass (Msun) and, for satellites, host M200c (Msun/h)."""
    f_cen = ndtr((np.asarray(log_sm) - 10.5) / 0.4)
    env = 0.5 * ndtr((np.log10(host_m200c) - 12.5) / 0.5)
    return np.where(is_satellite, 1.0 - (1.0 - f_cen) * (1.0 - env), f_cen)


def uv_magnitude(sfr: np.ndarray) -> np.ndarray:
    """Intrinsic (dust-free) UV absolute magnitude (AB) for SFR in Msun/yr."""
    return UV_ZEROPOINT - 2.5 * np.log10(np.asarray(sfr, dtype=np.float64))


def sample_star_formation_state(
    rng: np.random.Generator,
    sm: np.ndarray,
    is_satellite: np.ndarray,
    host_m200c: np.ndarray,
    cosmology: Cosmology,
    redshift: float,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """SFR and companions for galaxies of stellar mass ``sm`` (Msun), and which galaxies are quenched.

    ``host_m200c`` (Msun/h) is the M200c of the distinct host (of the halo itself for centrals).
    Returns float64 arrays keyed by the UniverseMachine names: sfr, obs_sfr, a_uv, obs_uv, ra, rarank,
    rank1, rank2; and the boolean quenched flag (red sequence for :mod:`.photometry`).
    """
    n = len(sm)
    log_sm = np.log10(sm)
    age = cosmic_time_gyr(cosmology, redshift)
    ra = rng.standard_normal(n)
    quenched = rng.random(n) < quenched_fraction(log_sm, is_satellite, host_m200c)
    ms = main_sequence_log_sfr(log_sm, age)
    log_sfr = np.where(
        quenched, ms - QUENCHED_OFFSET_DEX + QUENCHED_SCATTER_DEX * ra, ms + MS_SCATTER_DEX * ra
    )
    sfr = 10.0**log_sfr
    obs_sfr = sfr * 10.0 ** (OBS_SFR_SCATTER_DEX * rng.standard_normal(n))
    dust_noise = rng.standard_normal(n)
    a_uv = np.where(
        quenched,
        np.clip(0.2 + 0.1 * dust_noise, 0.0, 4.5),
        np.clip(1.0 + 0.7 * (log_sm - 10.0) + 0.3 * dust_noise, 0.0, 4.5),
    )
    columns = {
        "sfr": sfr,
        "obs_sfr": obs_sfr,
        "a_uv": a_uv,
        "obs_uv": uv_magnitude(obs_sfr) + a_uv,
        "ra": ra,
        "rarank": ndtr(ra),
        "rank1": rng.standard_normal(n),
        "rank2": rng.standard_normal(n),
    }
    return columns, quenched

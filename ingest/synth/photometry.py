"""Optical photometry of the synthetic galaxies: rest-frame SDSS g-r colours and r-band absolute magnitudes.

Units: stellar masses Msun (no h, Chabrier IMF as the Moster+13 masses of :mod:`.smhm`), luminosities solar
r-band luminosities L_sun,r, magnitudes AB mag (rest frame, z = 0 SDSS bands).

* colour: galaxies quenched by :func:`.starformation.sample_star_formation_state` sit on a red sequence, the others
  in a blue cloud, each
  a Gaussian in g-r whose mean rises mildly with stellar mass:
  red  g-r = 0.76 + 0.04 (log10 M* - 10.5), scatter 0.03 mag;
  blue g-r = 0.50 + 0.10 (log10 M* - 10.0), scatter 0.08 mag; clipped to [0.1, 1.0].
  These are representative of SDSS colour-mass diagrams (e.g. Baldry et al. 2004, ApJ 600, 681; Blanton &
  Moustakas 2009, ARA&A 47, 159), not a fit taken from one paper.
* luminosity: the colour-based r-band mass-to-light ratio of Bell et al. (2003, ApJS 149, 289, Table 7),
  log10(M*/L_r) = -0.306 + 1.097 (g-r) for their "diet Salpeter" IMF, minus 0.1 dex for the Chabrier IMF of
  the stellar masses. Being colour-based, it already folds in the typical dust reddening of SDSS galaxies.
* magnitude: M_r = M_sun,r - 2.5 log10(L_r / L_sun,r) with M_sun,r = 4.65 (AB; Willmer 2018, ApJS 236, 47;
  Bell et al. 2003 used 4.67), plus 0.05 mag of Gaussian photometric scatter.
  M_r is the plain absolute magnitude for the h of the cosmology (the stellar masses carry no h): it is **not**
  h-scaled; ``M_r - 5 log10 h``, as quoted by many SDSS papers, is ``mag_r + 5 log10 h``.
"""

from __future__ import annotations

import numpy as np

# ---- colour-mass relation (representative of SDSS: Baldry et al. 2004; Blanton & Moustakas 2009) -------------
#: red sequence: g-r = RED_GR_ZERO + RED_GR_SLOPE (log10 M* - RED_GR_PIVOT), Gaussian scatter RED_GR_SCATTER (mag)
RED_GR_ZERO = 0.76
RED_GR_SLOPE = 0.04
RED_GR_PIVOT = 10.5
RED_GR_SCATTER = 0.03
#: blue cloud: g-r = BLUE_GR_ZERO + BLUE_GR_SLOPE (log10 M* - BLUE_GR_PIVOT), scatter BLUE_GR_SCATTER (mag)
BLUE_GR_ZERO = 0.50
BLUE_GR_SLOPE = 0.10
BLUE_GR_PIVOT = 10.0
BLUE_GR_SCATTER = 0.08
#: drawn colours are clipped to [GR_MIN, GR_MAX] (mag), the range of real SDSS galaxies
GR_MIN = 0.1
GR_MAX = 1.0

# ---- mass-to-light ratio (Bell et al. 2003, ApJS 149, 289, Table 7: SDSS g-r colour, r band) ---------------------
#: log10(M*/L_r) = BELL03_A_R + BELL03_B_R (g-r), "diet Salpeter" IMF, L_r in L_sun,r
BELL03_A_R = -0.306
BELL03_B_R = 1.097
#: diet Salpeter -> Chabrier (2003) IMF, dex (the usual -0.1 dex; the box's Moster+13 masses are Chabrier)
DIET_SALPETER_TO_CHABRIER_DEX = -0.1

# ---- magnitudes -------------------------------------------------------------------------------------------------
#: absolute magnitude of the Sun in the SDSS r band, AB (Willmer 2018, ApJS 236, 47, Table 3; Bell+03 used 4.67)
M_SUN_R_AB = 4.65
#: Gaussian photometric scatter added to M_r, mag (a typical SDSS model-magnitude error budget)
MAG_R_SCATTER = 0.05


def mean_gr_colour(log_sm: np.ndarray, quenched: np.ndarray) -> np.ndarray:
    """Mean rest-frame g-r (AB mag) of the red sequence (``quenched``) or blue cloud at log10 M* (Msun)."""
    log_sm = np.asarray(log_sm, dtype=np.float64)
    red = RED_GR_ZERO + RED_GR_SLOPE * (log_sm - RED_GR_PIVOT)
    blue = BLUE_GR_ZERO + BLUE_GR_SLOPE * (log_sm - BLUE_GR_PIVOT)
    return np.where(quenched, red, blue)


def sample_gr_colour(rng: np.random.Generator, log_sm: np.ndarray, quenched: np.ndarray) -> np.ndarray:
    """Rest-frame g-r (AB mag) per galaxy: :func:`mean_gr_colour` plus Gaussian scatter, clipped to [0.1, 1.0].

    Draws exactly ``len(log_sm)`` standard normals from ``rng``.
    """
    log_sm = np.asarray(log_sm, dtype=np.float64)
    noise = rng.standard_normal(len(log_sm))
    scatter = np.where(quenched, RED_GR_SCATTER, BLUE_GR_SCATTER)
    return np.clip(mean_gr_colour(log_sm, quenched) + scatter * noise, GR_MIN, GR_MAX)


def log_mass_to_light_r(gr: np.ndarray) -> np.ndarray:
    """log10(M*/L_r) in Msun / L_sun,r for a Chabrier IMF from rest-frame g-r (AB mag): Bell+03 Table 7 - 0.1 dex."""
    return BELL03_A_R + BELL03_B_R * np.asarray(gr, dtype=np.float64) + DIET_SALPETER_TO_CHABRIER_DEX


def log_luminosity_r(sm: np.ndarray, gr: np.ndarray) -> np.ndarray:
    """log10(L_r / L_sun,r) of galaxies of stellar mass ``sm`` (Msun, no h, Chabrier) and colour ``gr`` (mag)."""
    return np.log10(np.asarray(sm, dtype=np.float64)) - log_mass_to_light_r(gr)


def absolute_magnitude_r(sm: np.ndarray, gr: np.ndarray) -> np.ndarray:
    """Noise-free rest-frame SDSS r-band absolute magnitude (AB, not h-scaled) from stellar mass (Msun) and g-r."""
    return M_SUN_R_AB - 2.5 * log_luminosity_r(sm, gr)


def sample_photometry(
    rng: np.random.Generator, sm: np.ndarray, quenched: np.ndarray
) -> dict[str, np.ndarray]:
    """g-r colour and r-band absolute magnitude of galaxies of true stellar mass ``sm`` (Msun, no h).

    Returns float64 arrays keyed by the canonical galaxy columns: ``g_r`` (rest-frame g-r, AB mag) and ``mag_r``
    (rest-frame SDSS r-band absolute magnitude, AB, not h-scaled, with :data:`MAG_R_SCATTER` of photometric
    scatter). Draws ``len(sm)`` standard normals for the colours, then ``len(sm)`` for the magnitude scatter.
    """
    sm = np.asarray(sm, dtype=np.float64)
    gr = sample_gr_colour(rng, np.log10(sm), quenched)
    mag_r = absolute_magnitude_r(sm, gr) + MAG_R_SCATTER * rng.standard_normal(len(sm))
    return {"g_r": gr, "mag_r": mag_r}

"""From sky coordinates to the cylinder coordinates the models were trained on.

A member at (ra, dec, z) around a cluster centre (ra_c, dec_c, z_c):

* projected comoving separation r_proj = D_C(z_c) * theta, with theta the angular separation and D_C the comoving
  distance of the centre (small-angle, flat universe), in Mpc/h;
* line-of-sight velocity v_los = c (z - z_c) / (1 + z_c), in km/s — the Hubble flow over the line-of-sight
  separation plus the peculiar-velocity difference, exactly what the mock observations measure.

Pure functions on arrays; the cosmology is passed explicitly.
"""

from __future__ import annotations

import numpy as np

from pipeline.cosmology import Cosmology

C_KMS = 299_792.458


def angular_separation(ra: np.ndarray, dec: np.ndarray, ra_c: float, dec_c: float) -> np.ndarray:
    """Great-circle separation in radians (Vincenty formula; inputs in degrees)."""
    ra, dec = np.radians(ra), np.radians(dec)
    ra_c, dec_c = np.radians(ra_c), np.radians(dec_c)
    d = ra - ra_c
    num = np.hypot(np.cos(dec) * np.sin(d), np.cos(dec_c) * np.sin(dec) - np.sin(dec_c) * np.cos(dec) * np.cos(d))
    den = np.sin(dec_c) * np.sin(dec) + np.cos(dec_c) * np.cos(dec) * np.cos(d)
    return np.arctan2(num, den)


def comoving_distance(z: float, cosmology: Cosmology, n: int = 2049) -> float:
    """Comoving distance to redshift z in Mpc/h (flat LCDM, Simpson's rule)."""
    if z <= 0:
        return 0.0
    zz = np.linspace(0.0, z, n)
    integrand = 1.0 / np.sqrt(cosmology.Om0 * (1 + zz) ** 3 + cosmology.Ode0)
    h = zz[1] - zz[0]
    simpson = h / 3 * (integrand[0] + integrand[-1] + 4 * integrand[1:-1:2].sum() + 2 * integrand[2:-1:2].sum())
    return C_KMS / 100.0 * simpson


def project(ra: np.ndarray, dec: np.ndarray, z: np.ndarray, centre: tuple[float, float, float],
            cosmology: Cosmology) -> tuple[np.ndarray, np.ndarray]:
    """(r_proj [Mpc/h, comoving], v_los [km/s]) of members around ``centre`` = (ra_c, dec_c, z_c) in deg, deg, z."""
    ra_c, dec_c, z_c = centre
    r_proj = comoving_distance(z_c, cosmology) * angular_separation(ra, dec, ra_c, dec_c)
    v_los = C_KMS * (np.asarray(z, dtype=np.float64) - z_c) / (1.0 + z_c)
    return r_proj, v_los


def estimate_centre(ra: np.ndarray, dec: np.ndarray, z: np.ndarray) -> tuple[float, float, float]:
    """A robust centre: the median position (RA unwrapped around the circular mean) and the median redshift."""
    ra_rad = np.radians(ra)
    mean_ra = np.degrees(np.arctan2(np.mean(np.sin(ra_rad)), np.mean(np.cos(ra_rad))))
    unwrapped = (np.asarray(ra) - mean_ra + 180.0) % 360.0 - 180.0 + mean_ra
    return float(np.median(unwrapped) % 360.0), float(np.median(dec)), float(np.median(z))


def distance_modulus(z: float, cosmology: Cosmology) -> float:
    """5 log10(d_L / 10 pc) at redshift ``z`` [mag]: d_L = (1 + z) D_C, D_C of :func:`comoving_distance` / h in Mpc."""
    d_l = (1.0 + z) * comoving_distance(z, cosmology) / cosmology.h
    return 5.0 * np.log10(max(d_l, 1e-6)) + 25.0


def absolute_limit(r_limit: float, z: float, cosmology: Cosmology) -> float:
    """The absolute r-band magnitude [AB] a survey of apparent limit ``r_limit`` reaches at redshift ``z``
    (no K-correction: below z ~ 0.12 it is under 0.1 mag for most galaxies)."""
    return r_limit - distance_modulus(z, cosmology)

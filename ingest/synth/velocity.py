"""Velocities: the Evrard et al. (2008) dark-matter dispersion, merger tail, satellite and bulk velocities.

All velocities are physical peculiar velocities in km/s; halo masses M200c in Msun/h.
"""

from __future__ import annotations

import numpy as np

from pipeline.cosmology import Cosmology

#: Evrard+2008: sigma_DM = SIGMA_15 [h(z) M200c / 1e15 Msun]^ALPHA, 1-D, km/s.
EVRARD08_SIGMA_15 = 1082.9
EVRARD08_ALPHA = 0.3361
#: Evrard+2008 intrinsic scatter in ln sigma at fixed mass.
EVRARD08_LN_SCATTER = 0.043
#: A "merger" host has its dispersion raised by 10^U(lo, hi). Evrard et al. (2008)'s 4% scatter in ln sigma was
#: measured on all haloes, disturbed ones included, so the extra tail is kept small (at most +12%, mean +6%): enough
#: to give the distribution the mild high-side skew they report without double-counting the scatter.
MERGER_BOOST_DEX = (0.0, 0.05)


def evrard08_sigma_dm(m200c: np.ndarray | float, cosmology: Cosmology, redshift: float) -> np.ndarray:
    """Mean 1-D dark-matter velocity dispersion (km/s) of haloes with ``m200c`` in Msun/h.

    h(z) M200c[Msun] = (H(z) / 100 km/s/Mpc) M200c[Msun/h] / h = E(z) M200c[Msun/h].
    """
    m = np.asarray(m200c, dtype=np.float64)
    return EVRARD08_SIGMA_15 * (cosmology.efunc(redshift) * m / 1e15) ** EVRARD08_ALPHA


def sample_host_dispersion(
    rng: np.random.Generator,
    m200c: np.ndarray,
    cosmology: Cosmology,
    redshift: float,
    *,
    ln_scatter: float = EVRARD08_LN_SCATTER,
    merger_fraction: float = 0.1,
    merger_boost_dex: tuple[float, float] = MERGER_BOOST_DEX,
) -> np.ndarray:
    """Per-host 1-D dark-matter dispersion (km/s): Evrard+08 x exp(N(0, ln_scatter)), and for a random
    ``merger_fraction`` of hosts an extra factor 10^U(merger_boost_dex) (the high tail of disturbed systems).

    Three variates are drawn per host whatever the parameters (reproducible streams).
    """
    mean = evrard08_sigma_dm(m200c, cosmology, redshift)
    n = mean.shape
    gauss = rng.standard_normal(n)
    is_merger = rng.random(n) < merger_fraction
    boost = rng.uniform(*merger_boost_dex, n)
    return mean * np.exp(ln_scatter * gauss) * np.where(is_merger, 10.0**boost, 1.0)


def sample_satellite_velocities(
    rng: np.random.Generator, host_velocity: np.ndarray, host_sigma: np.ndarray, velocity_bias: float = 1.0
) -> np.ndarray:
    """Satellite velocities (km/s, shape ``(n, 3)``): host velocity + N(0, velocity_bias x host_sigma) per axis.

    ``host_velocity`` (n, 3) and ``host_sigma`` (n,) are already repeated per satellite.
    """
    scale = (velocity_bias * np.asarray(host_sigma, dtype=np.float64))[:, None]
    return np.asarray(host_velocity, dtype=np.float64) + scale * rng.standard_normal((len(scale), 3))


def sample_bulk_velocities(rng: np.random.Generator, n: int, sigma_1d: float = 300.0) -> np.ndarray:
    """Bulk (peculiar) velocities of distinct haloes, isotropic Gaussian with 1-D ``sigma_1d`` km/s, (n, 3)."""
    return sigma_1d * rng.standard_normal((n, 3))

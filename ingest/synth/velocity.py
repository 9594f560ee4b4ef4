"""Velocities: the Evrard et al. (2008) dark-matter dispersion, merger tail, satellite and bulk velocities.

All velocities are physical peculiar velocities in km/s; halo masses M200c in Msun/h.
"""

from __future__ import annotations

import numpy as np

from ingest.synth.galaxy_physics import GALAXY_PHYSICS, ScalarOrRange, sample_merger_boost
from pipeline.cosmology import Cosmology

#: Evrard+2008: sigma_DM = SIGMA_15 [h(z) M200c / 1e15 Msun]^ALPHA, 1-D, km/s.
EVRARD08_SIGMA_15 = 1082.9
EVRARD08_ALPHA = 0.3361
#: Evrard+2008 intrinsic scatter in ln sigma at fixed mass.
EVRARD08_LN_SCATTER = 0.043
#: A "merger" host has its dispersion raised by 10^U(lo, hi). Evrard et al. (2008)'s 4% scatter in ln sigma was
#: measured on all haloes, disturbed ones included, so the extra tail is kept small (at most +12%, mean +6%): enough
#: to give the distribution the mild high-side skew they report without double-counting the scatter. The box's
#: default lives with the other per-host ranges (:data:`.galaxy_physics.GALAXY_PHYSICS`).
MERGER_BOOST_DEX = GALAXY_PHYSICS.merger_boost_dex


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
    merger_fraction: np.ndarray | float = 0.1,
    merger_boost_dex: ScalarOrRange = MERGER_BOOST_DEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-host 1-D dark-matter dispersion (km/s) and its merger boost (dex): Evrard+08 x exp(N(0, ln_scatter)),
    and for a random ``merger_fraction`` of hosts (one value, or one per host) an extra factor 10^boost with the
    boost uniform in ``merger_boost_dex`` (a (low, high) range, or one value); the boost is 0 for the others.

    Three variates are drawn per host whatever the parameters (reproducible streams).
    """
    mean = evrard08_sigma_dm(m200c, cosmology, redshift)
    gauss = rng.standard_normal(mean.shape)
    boost = sample_merger_boost(rng, np.broadcast_to(merger_fraction, mean.shape), merger_boost_dex)
    return mean * np.exp(ln_scatter * gauss) * 10.0**boost, boost


def sample_satellite_velocities(
    rng: np.random.Generator,
    host_velocity: np.ndarray,
    host_sigma: np.ndarray,
    velocity_bias: np.ndarray | float = 1.0,
) -> np.ndarray:
    """Satellite velocities (km/s, shape ``(n, 3)``): host velocity + N(0, velocity_bias x host_sigma) per axis.

    ``host_velocity`` (n, 3), ``host_sigma`` (n,) and ``velocity_bias`` (one value, or (n,): the host's b_v) are
    already repeated per satellite.
    """
    scale = (velocity_bias * np.asarray(host_sigma, dtype=np.float64))[:, None]
    return np.asarray(host_velocity, dtype=np.float64) + scale * rng.standard_normal((len(scale), 3))


def sample_bulk_velocities(rng: np.random.Generator, n: int, sigma_1d: float = 300.0) -> np.ndarray:
    """Bulk (peculiar) velocities of distinct haloes, isotropic Gaussian with 1-D ``sigma_1d`` km/s, (n, 3)."""
    return sigma_1d * rng.standard_normal((n, 3))

"""Infall regions around massive hosts: relocating small distinct haloes next to clusters.

Uniformly scattered haloes put too few interlopers in the cylinders around clusters: real clusters sit at
the nodes of the cosmic web, with an overdense infall region out to a few R200c. A fraction of the small
haloes of a cell is therefore *moved* (not added: the mass function is untouched) into the infall regions of
the cell's massive hosts:

* movers: each distinct halo with M200c < ``mover_max_mass`` (default 10^12.5 Msun/h) with probability
  ``fraction``;
* target host: a distinct halo with M200c >= ``host_min_mass`` (default 10^13.5 Msun/h) of the same cell, chosen
  with probability ∝ its M200c;
* distance: s = r / R200c uniform in ln s on [1, 5] (number density ∝ r^-3 around each host), isotropic direction;
* velocity: host velocity + a radial infall -INFALL_SPEED x V200 x s^-1/2 (V200 at 1 R200c, about half at 5)
  + an isotropic 1-D dispersion INFALL_DISPERSION x V200.

Units: positions and radii comoving Mpc/h, velocities physical peculiar km/s, masses Msun/h.
"""

from __future__ import annotations

import numpy as np

from ingest.synth.geometry import isotropic_unit_vectors

MOVER_MAX_MASS = 10.0**12.5
HOST_MIN_MASS = 10.0**13.5
RADIUS_RANGE = (1.0, 5.0)
INFALL_SPEED = 1.0
INFALL_DISPERSION = 0.5


def relocate_into_infall(
    rng: np.random.Generator,
    m200c: np.ndarray,
    r200c: np.ndarray,
    v200: np.ndarray,
    positions: np.ndarray,
    velocities: np.ndarray,
    fraction: float,
    *,
    mover_max_mass: float = MOVER_MAX_MASS,
    host_min_mass: float = HOST_MIN_MASS,
    radius_range: tuple[float, float] = RADIUS_RANGE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move a ``fraction`` of the small haloes into the infall regions of the massive ones.

    Parameters
    ----------
    m200c : (n,) M200c of the distinct haloes, Msun/h
    r200c : (n,) R200c, comoving Mpc/h
    v200 : (n,) V200, km/s
    positions : (n, 3) comoving Mpc/h (not wrapped: moved haloes may leave the cell or the box)
    velocities : (n, 3) km/s

    Returns
    -------
    (positions, velocities, host) : new arrays (inputs untouched); ``host[i]`` is the index of the host that
    halo ``i`` was moved next to, -1 for haloes left in place.
    """
    n = len(m200c)
    positions = np.array(positions, dtype=np.float64, copy=True)
    velocities = np.array(velocities, dtype=np.float64, copy=True)
    host = np.full(n, -1, dtype=np.int64)
    chosen = rng.random(n) < fraction
    movers = np.flatnonzero(chosen & (m200c < mover_max_mass))
    hosts = np.flatnonzero(m200c >= host_min_mass)
    if len(movers) == 0 or len(hosts) == 0 or fraction <= 0.0:
        return positions, velocities, host
    k = len(movers)
    weights = np.cumsum(m200c[hosts])
    target = hosts[np.minimum(np.searchsorted(weights, rng.random(k) * weights[-1], side="right"), len(hosts) - 1)]
    s = np.exp(rng.uniform(np.log(radius_range[0]), np.log(radius_range[1]), k))
    direction = isotropic_unit_vectors(rng, k)
    positions[movers] = positions[target] + (s * r200c[target])[:, None] * direction
    v_scale = v200[target]
    radial = -INFALL_SPEED * v_scale / np.sqrt(s)
    velocities[movers] = (
        velocities[target]
        + radial[:, None] * direction
        + (INFALL_DISPERSION * v_scale)[:, None] * rng.standard_normal((k, 3))
    )
    host[movers] = target
    return positions, velocities, host

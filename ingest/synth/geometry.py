"""Geometry helpers of the synthetic box: isotropic directions and periodic wrapping.

Units: positions and lengths in comoving Mpc/h.
"""

from __future__ import annotations

import numpy as np


def isotropic_unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unit vectors drawn uniformly on the sphere, shape ``(n, 3)``, float64."""
    cos_theta = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    sin_theta = np.sqrt(np.clip(1.0 - cos_theta * cos_theta, 0.0, None))
    return np.column_stack((sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta))


def wrap_positions(positions: np.ndarray, box_size: float, dtype: np.dtype | str = "f4") -> np.ndarray:
    """Positions (comoving Mpc/h, any shape) wrapped into ``[0, box_size)`` and cast to ``dtype``.

    ``np.mod`` in float64 can return values that round up to ``box_size`` once cast to float32
    (e.g. ``-1e-9 mod 1000``); those are set to 0, so every value satisfies ``0 <= x < box_size``
    when compared in float64 against the (float64) box size.
    """
    wrapped = np.mod(np.asarray(positions, dtype=np.float64), box_size).astype(dtype)
    wrapped[wrapped.astype(np.float64) >= box_size] = 0
    return wrapped

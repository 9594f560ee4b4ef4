"""Stellar-to-halo mass relation of Moster, Naab & White (2013), with scatter and measurement noise.

Halo masses come in as M200c in Msun/h (Moster+13 define haloes at 200 x critical) and are converted to
Msun (no h) with the cosmology's h; stellar masses are in Msun (no h), as UniverseMachine's ``sm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Moster13:
    """Moster+2013 (their Table 1, eqs. 2 and 11-14): parameter p(z) = p10 + p11 z / (1 + z).

    m* / M = 2 N [(M / M1)^-beta + (M / M1)^gamma]^-1, M and M1 in Msun (no h).
    """

    m10: float = 11.590
    m11: float = 1.195
    n10: float = 0.0351
    n11: float = -0.0247
    beta10: float = 1.376
    beta11: float = -0.826
    gamma10: float = 0.608
    gamma11: float = 0.329

    def __post_init__(self) -> None:
        for key, value in self.__dict__.items():
            if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value)):
                raise ConfigError(f"Moster13: {key} must be a finite number, got {value!r}")

    def parameters(self, redshift: float) -> tuple[float, float, float, float]:
        """(log10 M1 [Msun], N, beta, gamma) at ``redshift``."""
        s = redshift / (1.0 + redshift)
        return (
            self.m10 + self.m11 * s,
            self.n10 + self.n11 * s,
            self.beta10 + self.beta11 * s,
            self.gamma10 + self.gamma11 * s,
        )

    def mean_stellar_mass(self, m200c: np.ndarray | float, h: float, redshift: float) -> np.ndarray:
        """Median stellar mass (Msun, no h) of haloes of ``m200c`` (Msun/h)."""
        log_m1, norm, beta, gamma = self.parameters(redshift)
        m = np.asarray(m200c, dtype=np.float64) / h  # Msun
        ratio = m / 10.0**log_m1
        return m * 2.0 * norm / (ratio**-beta + ratio**gamma)


#: Moster+2013 best fit, with its redshift evolution.
MOSTER13 = Moster13()
#: The box's default: Moster+2013 with its z = 0 parameters moved within their published 1-sigma errors (Table 1:
#: M10 = 11.590 +- 0.236, N10 = 0.0351 +- 0.0058, beta10 = 1.376 +- 0.153, gamma10 = 0.608 +- 0.059) so that centrals
#: *plus* the subhalo-function satellites (:func:`ingest.synth.subhalos.sample_subhalos`) reproduce Li & White
#: (2009)'s SMF over 10^9.5-10^11.5 Msun (the realism report checks it); beta10 is 1.1 sigma high.
MOSTER13_SHAM = Moster13(m10=11.68, n10=0.031, beta10=1.55, gamma10=0.63)


def sample_stellar_mass(
    rng: np.random.Generator,
    m200c: np.ndarray,
    h: float,
    redshift: float,
    scatter_dex: np.ndarray | float = 0.15,
    relation: Moster13 = MOSTER13,
) -> np.ndarray:
    """True stellar mass (Msun, no h): Moster+13 median x 10^N(0, scatter_dex), for ``m200c`` in Msun/h.

    ``scatter_dex`` is one value or one per halo (its host's ``smhm_scatter_dex``, :mod:`.galaxy_physics`).
    """
    median = relation.mean_stellar_mass(m200c, h, redshift)
    return median * 10.0 ** (scatter_dex * rng.standard_normal(median.shape))


def observe_stellar_mass(rng: np.random.Generator, sm: np.ndarray, scatter_dex: float = 0.1) -> np.ndarray:
    """Observed stellar mass (Msun): ``sm`` x 10^N(0, scatter_dex) (measurement scatter only, no bias)."""
    sm = np.asarray(sm, dtype=np.float64)
    return sm * 10.0 ** (scatter_dex * rng.standard_normal(sm.shape))


def intracluster_light(sm: np.ndarray, m200c: np.ndarray, is_central: np.ndarray) -> np.ndarray:
    """Intracluster stellar mass (Msun) attributed to centrals: 0.1 sm (M200c / 1e12 Msun/h)^0.3, capped at sm.

    A simple monotonic recipe (ICL fraction rising with halo mass); satellites carry none.
    """
    sm = np.asarray(sm, dtype=np.float64)
    icl = 0.1 * sm * np.clip(np.asarray(m200c, dtype=np.float64) / 1e12, 1e-3, None) ** 0.3
    return np.where(is_central, np.minimum(icl, sm), 0.0)

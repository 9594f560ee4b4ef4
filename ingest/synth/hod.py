"""Halo occupation distribution of Zheng et al. (2007), as parametrised in halotools' ``zheng07``.

Masses in Msun/h; the halo mass used here is M200c of distinct haloes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import erf

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Zheng07HOD:
    """Zheng+2007 HOD.

    <N_cen>(M) = 0.5 [1 + erf((log10 M - log_mmin) / sigma_logm)]
    <N_sat>(M) = <N_cen>(M) ((M - M0) / M1)^alpha for M > M0, else 0

    Attributes (log10 of masses in Msun/h): log_mmin, sigma_logm, log_m0, log_m1, alpha; ``name`` is a label.
    """

    log_mmin: float
    sigma_logm: float
    log_m0: float
    log_m1: float
    alpha: float
    name: str = "custom"

    def __post_init__(self) -> None:
        checks = {
            "log_mmin": 8.0 <= self.log_mmin <= 16.0,
            "sigma_logm": 0.0 < self.sigma_logm <= 3.0,
            "log_m0": 5.0 <= self.log_m0 <= 16.0,
            "log_m1": 8.0 <= self.log_m1 <= 17.0,
            "alpha": 0.0 < self.alpha <= 3.0,
        }
        for key, ok in checks.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and ok):
                raise ConfigError(f"HOD '{self.name}': {key} = {value!r} is outside its allowed range")

    def mean_ncen(self, m200c: np.ndarray | float) -> np.ndarray:
        """Mean number of centrals in haloes of mass ``m200c`` (Msun/h)."""
        logm = np.log10(np.asarray(m200c, dtype=np.float64))
        return 0.5 * (1.0 + erf((logm - self.log_mmin) / self.sigma_logm))

    def mean_nsat(self, m200c: np.ndarray | float) -> np.ndarray:
        """Mean number of satellites in haloes of mass ``m200c`` (Msun/h)."""
        m = np.asarray(m200c, dtype=np.float64)
        excess = np.clip((m - 10.0**self.log_m0) / 10.0**self.log_m1, 0.0, None)
        return self.mean_ncen(m) * excess**self.alpha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Zheng+2007 fits to SDSS Mr < -19 (halotools ``zheng07`` threshold -19): the verified threshold sample closest to
#: the 10^9.5 Msun stellar-mass cut of the reference study, so cylinders hold realistic numbers of members.
ZHENG07_MR19 = Zheng07HOD(11.60, 0.26, 11.49, 12.83, 1.02, name="zheng07_mr19")
#: Zheng+2007 fits to SDSS Mr < -20 (halotools ``zheng07`` threshold -20).
ZHENG07_MR20 = Zheng07HOD(12.02, 0.26, 11.38, 13.31, 1.06, name="zheng07_mr20")
#: Zheng+2007 fits to SDSS Mr < -21 (halotools ``zheng07`` threshold -21).
ZHENG07_MR21 = Zheng07HOD(12.79, 0.39, 11.92, 13.94, 1.15, name="zheng07_mr21")

HOD_PRESETS: dict[str, Zheng07HOD] = {h.name: h for h in (ZHENG07_MR19, ZHENG07_MR20, ZHENG07_MR21)}

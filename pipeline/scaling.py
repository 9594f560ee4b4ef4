"""The M-sigma test of Ho et al. (2019), shared by the synthetic box's realism report and the validation metrics.

Recipe (McWilliamsCenter/halo_cnn, ``halo_cnn2d_r_regr.py``; values printed in ``notebooks/paper.ipynb``): regress
log10 sigma_v on log10 M200c over 10^14.5-10^15.3 h^-1 Msun, invert the power law for the mass, and measure the
scatter of log10(M_est / M_true) over 10^14-10^15 h^-1 Msun. On UniverseMachine/MDPL2 cylinders Ho et al. found
0.141 dex with the dispersion of the true members ("pure") and 0.372 dex with that of all cylinder members
("contaminated", interlopers included). Units: M200c in Msun/h (log10), sigma_v in km/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FIT_RANGE = (14.5, 15.3)
TEST_RANGE = (14.0, 15.0)


@dataclass(frozen=True)
class Ho19MSigma:
    """log10 sigma_v = intercept + slope log10 M200c, fitted by least squares over :data:`FIT_RANGE`."""

    intercept: float
    slope: float
    n_fit: int

    def estimate(self, sigma_v: np.ndarray) -> np.ndarray:
        """log10 M200c [Msun/h] from the inverted power law; NaN where sigma_v <= 0 or is not finite."""
        s = np.asarray(sigma_v, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.isfinite(s) & (s > 0), (np.log10(s) - self.intercept) / self.slope, np.nan)

    def to_dict(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "slope": self.slope, "n_fit": self.n_fit, "fit_range": list(FIT_RANGE)}


def fit_ho19(log10_m200c: np.ndarray, sigma_v: np.ndarray, usable: np.ndarray | None = None) -> Ho19MSigma | None:
    """The fit over :data:`FIT_RANGE` of the ``usable`` rows with a positive dispersion (None below 10 rows)."""
    m = np.asarray(log10_m200c, dtype=np.float64)
    s = np.asarray(sigma_v, dtype=np.float64)
    ok = np.isfinite(s) & (s > 0) & (m >= FIT_RANGE[0]) & (m < FIT_RANGE[1])
    if usable is not None:
        ok &= usable
    if ok.sum() < 10:
        return None
    slope, intercept = np.polyfit(m[ok], np.log10(s[ok]), 1)
    return Ho19MSigma(float(intercept), float(slope), int(ok.sum()))


def ho19_scatter(log10_m200c: np.ndarray, sigma_v: np.ndarray, usable: np.ndarray | None = None) -> float | None:
    """Ho et al. (2019)'s M-sigma scatter [dex] over :data:`TEST_RANGE` (None when too few rows to fit or test)."""
    fit = fit_ho19(log10_m200c, sigma_v, usable)
    if fit is None:
        return None
    m = np.asarray(log10_m200c, dtype=np.float64)
    est = fit.estimate(sigma_v)
    test = np.isfinite(est) & (m >= TEST_RANGE[0]) & (m < TEST_RANGE[1])
    if usable is not None:
        test &= usable
    if test.sum() < 10:
        return None
    return float(np.std(est[test] - m[test]))

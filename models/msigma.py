"""The M-sigma power-law baseline: log10 M200c = a + b log10 sigma_v, fitted by least squares.

On the plain velocity dispersion of all cylinder members (interlopers included) this is the reference study's
contaminated baseline (Ho et al. 2019: 0.372 dex scatter). Units: M200c in Msun/h, sigma_v in km/s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class MSigmaFit:
    """log10 M = intercept + slope * log10(sigma_v / pivot); scatter is the rms residual (dex)."""

    intercept: float
    slope: float
    pivot: float
    scatter: float
    n: int

    def predict(self, sigma_v: np.ndarray) -> np.ndarray:
        """log10 M200c [Msun/h] for dispersions ``sigma_v`` [km/s]; NaN where sigma_v <= 0."""
        s = np.asarray(sigma_v, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(s > 0, self.intercept + self.slope * np.log10(s / self.pivot), np.nan)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_msigma(sigma_v: np.ndarray, log10_m: np.ndarray, *, pivot: float = 500.0) -> MSigmaFit:
    """Ordinary least squares of log10 M on log10 sigma_v (observations with sigma_v > 0 and finite values)."""
    s = np.asarray(sigma_v, dtype=np.float64)
    m = np.asarray(log10_m, dtype=np.float64)
    if s.shape != m.shape:
        raise ValueError(f"fit_msigma: expected sigma_v and log10_m of equal shape, got {s.shape} and {m.shape}")
    ok = np.isfinite(s) & np.isfinite(m) & (s > 0)
    if ok.sum() < 3:
        raise ValueError(f"fit_msigma: expected at least 3 usable observations, got {int(ok.sum())}")
    x = np.log10(s[ok] / pivot)
    design = np.column_stack([np.ones_like(x), x])
    (a, b), *_ = np.linalg.lstsq(design, m[ok], rcond=None)
    resid = m[ok] - (a + b * x)
    return MSigmaFit(float(a), float(b), pivot, float(np.sqrt(np.mean(resid**2))), int(ok.sum()))

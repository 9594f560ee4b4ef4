"""The M-sigma power-law baseline: log10 M200c = a + b log10 sigma_v, fitted on the training split.

Default fit (``method="scaling"``): the scaling relation as physics writes it, log10 sigma_v = alpha +
beta (log10 M - 14), by least squares over the training clusters, then inverted for the mass (as with Evrard et al.
2008's sigma_DM(M)). ``method="ols"`` instead regresses log10 M on log10 sigma_v directly; that minimises the
mass residuals in the training set but shrinks every estimate towards the mean training mass when sigma_v is
noisy, which on cylinders full of interlopers makes it little more than a constant.
On the plain velocity dispersion of all cylinder members (interlopers included) this is the reference study's
contaminated baseline (Ho et al. 2019: 0.372 dex scatter). Units: M200c in Msun/h, sigma_v in km/s.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: the feature the baseline reads: the plain dispersion of all cylinder members (the contaminated baseline), km/s
FEATURE = "sigma_v_std"
#: the truth column of the "pure" baseline: the dispersion of the cylinder's true members, km/s
PURE_FEATURE = "sigma_v_true_std"

@dataclass(frozen=True)
class MSigmaFit:
    """log10 M = intercept + slope * log10(sigma_v / pivot); scatter is the rms residual (dex) on the fit data."""

    intercept: float
    slope: float
    pivot: float
    scatter: float
    n: int
    method: str  # "scaling" or "ols" (fit_msigma)
    mass_range: tuple[float, float] | None = None  # log10 M200c [Msun/h] of the hosts fitted; None: all

    def predict(self, sigma_v: np.ndarray) -> np.ndarray:
        """log10 M200c [Msun/h] for dispersions ``sigma_v`` [km/s]; NaN where sigma_v <= 0."""
        s = np.asarray(sigma_v, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(s > 0, self.intercept + self.slope * np.log10(s / self.pivot), np.nan)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mass_range"] = None if self.mass_range is None else list(self.mass_range)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> MSigmaFit:
        """The fit :meth:`to_dict` wrote; every key is required (``KeyError`` names the first one missing)."""
        rng = data["mass_range"]
        return cls(float(data["intercept"]), float(data["slope"]), float(data["pivot"]), float(data["scatter"]),
                   int(data["n"]), str(data["method"]), None if rng is None else (float(rng[0]), float(rng[1])))


#: fewest observations inside ``mass_range`` to fit there; below it the whole range is fitted (tiny boxes)
MIN_IN_RANGE = 10


def fit_msigma(sigma_v: np.ndarray, log10_m: np.ndarray, *, pivot: float = 500.0,
               method: str = "scaling", mass_range: tuple[float, float] | None = None) -> MSigmaFit:
    """Fit the power law on observations with sigma_v > 0 and finite values (see the module docstring).

    ``mass_range``: fit only hosts with log10 M200c [Msun/h] in [lo, hi) — Ho et al. (2019) fit 10^14.5-10^15.3
    (:data:`pipeline.scaling.FIT_RANGE`), where interlopers matter least; with fewer than :data:`MIN_IN_RANGE`
    such observations the whole range is fitted and the fit records ``mass_range = None``.
    """
    s = np.asarray(sigma_v, dtype=np.float64)
    m = np.asarray(log10_m, dtype=np.float64)
    if s.shape != m.shape:
        raise ValueError(f"fit_msigma: expected sigma_v and log10_m of equal shape, got {s.shape} and {m.shape}")
    ok = np.isfinite(s) & np.isfinite(m) & (s > 0)
    if mass_range is not None:
        inside = ok & (m >= mass_range[0]) & (m < mass_range[1])
        if inside.sum() >= MIN_IN_RANGE:
            ok = inside
        else:
            mass_range = None
    if ok.sum() < 3:
        raise ValueError(f"fit_msigma: expected at least 3 usable observations, got {int(ok.sum())}")
    if method not in ("scaling", "ols"):
        raise ValueError(f"fit_msigma: method must be 'scaling' or 'ols', got {method!r}")
    x = np.log10(s[ok] / pivot)
    if method == "ols":
        (a, b), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(x), x]), m[ok], rcond=None)
    else:
        (alpha, beta), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(x), m[ok] - 14.0]), x, rcond=None)
        if beta == 0:
            raise ValueError("fit_msigma: sigma_v does not vary with mass in the training set; cannot invert")
        a, b = 14.0 - alpha / beta, 1.0 / beta
    resid = m[ok] - (a + b * x)
    return MSigmaFit(float(a), float(b), pivot, float(np.sqrt(np.mean(resid**2))), int(ok.sum()), method,
                     None if mass_range is None else (float(mass_range[0]), float(mass_range[1])))

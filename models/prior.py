"""The interim prior: the distribution of the training labels, p_train(log10 M200c).

An NLL-trained network learns q(M | x) ∝ p_train(M) p(x | M); inference divides p_train out and puts a chosen
prior in. It is estimated here with a Gaussian kernel density on a grid spanning the training range, and stored with
the model; its bandwidth is Silverman's normal-reference rule of thumb, h = 1.06 sigma n^(-1/5) (Silverman 1986,
*Density Estimation for Statistics and Data Analysis*, eq. 3.28; :func:`normal_reference_bandwidth`). Units: log10
M200c in dex of Msun/h; the density is per dex.

The lower edge is a hard cut: the training hosts are every halo above a mass (``[observe] host_log10_m200c_min``),
so p_train jumps from its largest values to zero there. A plain kernel estimate halves the density at such an edge
(half of every kernel falls below it), and the correction, which divides by p_train, would then double the
posteriors of the lightest clusters. The estimate reflects the labels about the lowest one (the boundary method
of Schuster 1985, Silverman 1986 §2.10 / §3.10.3: the density on [y_min, ...) is K_h * (labels + mirrored
labels)), which is unbiased at a flat edge. The upper edge is the mass function's natural tail, not a cut, and is
left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: the constant of :func:`normal_reference_bandwidth`, as Silverman (1986) eq. 3.28 rounds it
NORMAL_REFERENCE_FACTOR = 1.06


def normal_reference_bandwidth(y: np.ndarray) -> float:
    """Silverman's normal-reference rule of thumb, h = 1.06 sigma n^(-1/5) (Silverman 1986, eq. 3.28), in the units
    of ``y`` (here dex): the bandwidth of a Gaussian kernel that minimises the asymptotic mean integrated squared
    error when the data are normal with standard deviation sigma. sigma is the labels' standard deviation (ddof = 0),
    n their number.

    The exact constant is (4/3)^(1/5) = 1.0592; Scott (1992, *Multivariate Density Estimation*) gives the same
    normal-reference rule. It is neither Silverman's robust variant 0.9 min(sigma, IQR / 1.34) n^(-1/5) (eq. 3.31)
    nor ``scipy.stats.gaussian_kde``'s ``"scott"`` factor, sigma n^(-1/5) in one dimension (6% narrower).
    """
    return NORMAL_REFERENCE_FACTOR * y.std() * y.size ** (-1 / 5)


@dataclass(frozen=True)
class TrainingPrior:
    """p_train tabulated on ``grid`` (log10 M200c, Msun/h), normalised to integrate to 1 over the grid."""

    grid: tuple[float, ...]
    density: tuple[float, ...]
    bandwidth: float
    n_train: int

    @classmethod
    def estimate(cls, y: np.ndarray, *, n_grid: int = 512, pad: float = 0.0, bandwidth: float | None = None,
                 reflect_lower: bool = True) -> TrainingPrior:
        """KDE of the training labels on ``n_grid`` points from min(y) - pad to max(y) + pad; ``bandwidth`` (dex)
        defaults to :func:`normal_reference_bandwidth` of the labels (at least 0.001 dex). ``reflect_lower``: the
        lowest label is a hard cut (module docstring): the labels are reflected about it, the grid starts there
        (``pad`` then only extends the upper end) and the density is zero below it."""
        y = np.asarray(y, dtype=np.float64)
        if y.size < 2 or not np.all(np.isfinite(y)):
            raise ValueError(f"training prior: expected at least 2 finite labels, got {y.size}")
        bw = bandwidth if bandwidth is not None else normal_reference_bandwidth(y)
        bw = max(float(bw), 1e-3)
        lo = y.min() if reflect_lower else y.min() - pad
        grid = np.linspace(lo, y.max() + pad, n_grid)
        samples = np.concatenate([y, 2.0 * lo - y]) if reflect_lower else y
        # binned KDE: histogram on a fine grid convolved with the Gaussian kernel (exact enough, O(n + G^2))
        fine = np.linspace(grid[0] - 4 * bw, grid[-1] + 4 * bw, 4 * n_grid + 1)
        counts, edges = np.histogram(samples, bins=len(fine) - 1, range=(fine[0], fine[-1]))
        centres = 0.5 * (edges[1:] + edges[:-1])
        z = (grid[:, None] - centres[None, :]) / bw
        dens = (np.exp(-0.5 * z * z) @ counts) / (y.size * bw * np.sqrt(2 * np.pi))
        dens /= np.trapezoid(dens, grid)
        return cls(tuple(grid.tolist()), tuple(dens.tolist()), bw, int(y.size))

    def __call__(self, log10_m: np.ndarray) -> np.ndarray:
        """p_train at ``log10_m`` (per dex); 0 outside the grid."""
        return np.interp(log10_m, self.grid, self.density, left=0.0, right=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"grid": list(self.grid), "density": list(self.density), "bandwidth": self.bandwidth,
                "n_train": self.n_train, "unit": "log10 M200c [Msun/h]; density per dex"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingPrior:
        return cls(tuple(data["grid"]), tuple(data["density"]), float(data["bandwidth"]), int(data["n_train"]))

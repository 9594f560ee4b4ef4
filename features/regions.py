"""Splitting the box into columns along a line of sight, so each worker handles one region.

For line-of-sight axis k the two projected axes are cut into ``n x n`` columns that run through the whole box
along k. A column only needs its galaxies plus those within ``pad`` (the aperture) of its sides, so the overlap
is small (2 pad / width per axis) and no column needs the whole catalog. Inside a column positions are shifted to
a local frame starting ``pad`` below the column, where no periodic wrap is needed across the projected axes;
the line-of-sight axis keeps the box's period.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RegionGrid:
    """``n x n`` columns over the projected axes of a box of side ``box_size`` (comoving Mpc/h), padded by ``pad``."""

    box_size: float
    n: int
    pad: float

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("regions: n must be >= 1")
        if self.n > 1 and self.width <= 2 * self.pad:
            raise ValueError(f"regions: {self.n} columns of {self.width:g} Mpc/h are too narrow for padding "
                             f"{self.pad:g} Mpc/h; use fewer regions")

    @property
    def width(self) -> float:
        return self.box_size / self.n

    @property
    def count(self) -> int:
        return self.n * self.n

    def home(self, uv: np.ndarray) -> np.ndarray:
        """Region of each point (its own column), from projected coordinates (m, 2)."""
        cell = np.clip(np.floor(uv / self.width).astype(np.int64), 0, self.n - 1)
        return cell[:, 0] * self.n + cell[:, 1]

    def assign(self, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point index, region) pairs: every region whose padded column holds the point, each pair once."""
        m = len(uv)
        if self.n == 1:
            return np.arange(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
        cell = np.clip(np.floor(uv / self.width).astype(np.int64), 0, self.n - 1)
        frac = uv - cell * self.width
        pts, regs = [], []
        for da in (-1, 0, 1):
            near_a = np.ones(m, bool) if da == 0 else (frac[:, 0] < self.pad if da < 0 else
                                                       frac[:, 0] >= self.width - self.pad)
            for db in (-1, 0, 1):
                near_b = np.ones(m, bool) if db == 0 else (frac[:, 1] < self.pad if db < 0 else
                                                           frac[:, 1] >= self.width - self.pad)
                sel = np.flatnonzero(near_a & near_b)
                a = np.mod(cell[sel, 0] + da, self.n)
                b = np.mod(cell[sel, 1] + db, self.n)
                pts.append(sel)
                regs.append(a * self.n + b)
        p = np.concatenate(pts)
        r = np.concatenate(regs)
        key = np.unique(p * self.count + r)  # n = 2 maps both neighbours to one column: keep each pair once
        return key // self.count, key % self.count

    def origin(self, region: int) -> np.ndarray:
        """Lower corner of the region's local frame (projected axes), comoving Mpc/h."""
        a, b = divmod(int(region), self.n)
        return np.array([a * self.width - self.pad, b * self.width - self.pad])

    def to_local(self, uv: np.ndarray, region: int) -> np.ndarray:
        """Projected coordinates in the region's local frame (no wrap needed inside it)."""
        if self.n == 1:
            return np.asarray(uv, dtype=np.float64)
        return np.mod(np.asarray(uv, dtype=np.float64) - self.origin(region), self.box_size)

    @property
    def local_period(self) -> float:
        """Period of local projected coordinates: the box for one region, else large enough never to wrap."""
        return self.box_size if self.n == 1 else 2.0 * self.box_size

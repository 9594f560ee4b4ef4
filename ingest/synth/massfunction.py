"""Halo mass function of distinct halos: Tinker et al. (2008) for M200c, from colossus.

Units: masses M200c in Msun/h, number densities in (Mpc/h)^-3 (comoving), volumes in (Mpc/h)^3.

The table is built once per (cosmology, redshift, mass range) and then sampled many times (once per
cell of the box); colossus is only touched inside :func:`pipeline.cosmology.colossus_cosmology`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.cosmology import Cosmology, colossus_cosmology
from pipeline.errors import ConfigError

#: Grid spacing of the tabulated cumulative mass function, dex. Sampling interpolates n(>M) linearly
#: between grid points, i.e. masses are uniform in log M inside one 0.002-dex bin.
DEFAULT_STEP_DEX = 0.002


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class MassFunctionTable:
    """Cumulative halo mass function n(>M) on a fine log-mass grid.

    Attributes
    ----------
    redshift : redshift of the table
    log10_m : ascending grid of log10(M200c / (Msun/h)), from ``log10_mmin`` to ``log10_mmax``
    n_cum : n(>M) in (Mpc/h)^-3 at each grid mass, counting halos between M and ``10**log10_mmax``
        (so ``n_cum[-1] == 0``); strictly decreasing
    mdef, model : the colossus mass definition and mass-function model
    """

    redshift: float
    log10_m: np.ndarray
    n_cum: np.ndarray
    mdef: str = "200c"
    model: str = "tinker08"

    @classmethod
    def build(
        cls,
        cosmology: Cosmology,
        redshift: float,
        log10_mmin: float,
        log10_mmax: float = 16.0,
        *,
        step_dex: float = DEFAULT_STEP_DEX,
        mdef: str = "200c",
        model: str = "tinker08",
    ) -> MassFunctionTable:
        """Tabulate colossus's ``dn/dlnM`` between ``10**log10_mmin`` and ``10**log10_mmax`` Msun/h.

        n(>M) is the trapezoidal integral of dn/dlnM over ln M from M to the upper limit.
        """
        if not (math.isfinite(log10_mmin) and math.isfinite(log10_mmax) and log10_mmin < log10_mmax):
            raise ConfigError(
                f"mass function: need log10_mmin < log10_mmax, got {log10_mmin!r} and {log10_mmax!r}"
            )
        if not (redshift >= 0.0 and math.isfinite(redshift)):
            raise ConfigError(f"mass function: redshift must be >= 0, got {redshift!r}")
        n_steps = max(math.ceil((log10_mmax - log10_mmin) / step_dex), 16)
        log10_m = np.linspace(log10_mmin, log10_mmax, n_steps + 1)
        from colossus.lss import mass_function

        with colossus_cosmology(cosmology):
            dn_dlnm = np.asarray(
                mass_function.massFunction(10.0**log10_m, redshift, mdef=mdef, model=model, q_out="dndlnM"),
                dtype=np.float64,
            )
        if not np.all(np.isfinite(dn_dlnm) & (dn_dlnm > 0)):
            raise ConfigError("mass function: colossus returned non-positive or non-finite dn/dlnM")
        dlnm = np.diff(log10_m) * math.log(10.0)
        pieces = 0.5 * (dn_dlnm[1:] + dn_dlnm[:-1]) * dlnm
        n_cum = np.concatenate((np.cumsum(pieces[::-1])[::-1], [0.0]))
        return cls(float(redshift), _readonly(log10_m), _readonly(n_cum), mdef, model)

    @property
    def log10_mmin(self) -> float:
        return float(self.log10_m[0])

    @property
    def log10_mmax(self) -> float:
        return float(self.log10_m[-1])

    @property
    def n_total(self) -> float:
        """Number density of halos inside the tabulated mass range, (Mpc/h)^-3."""
        return float(self.n_cum[0])

    def cumulative(self, mass: np.ndarray | float) -> np.ndarray:
        """n(>M) in (Mpc/h)^-3 for M in Msun/h (clipped to the table's range)."""
        return np.interp(np.log10(mass), self.log10_m, self.n_cum)

    def expected_number(
        self, volume: float, lo: np.ndarray | float, hi: np.ndarray | float | None = None
    ) -> np.ndarray:
        """Expected number of halos with ``lo <= M200c < hi`` (Msun/h) in ``volume`` (Mpc/h)^3.

        ``hi=None`` means the table's upper limit.
        """
        upper = 0.0 if hi is None else self.cumulative(hi)
        return volume * (self.cumulative(lo) - upper)

    def sample(self, rng: np.random.Generator, volume: float) -> np.ndarray:
        """M200c (Msun/h, float64) of a Poisson realisation of the halos in ``volume`` (Mpc/h)^3.

        The total is Poisson(volume * n_total); masses by inverse CDF of n(>M). Not sorted.
        """
        n = rng.poisson(volume * self.n_total)
        u = rng.uniform(0.0, self.n_total, n)
        return 10.0 ** np.interp(u, self.n_cum[::-1], self.log10_m[::-1])

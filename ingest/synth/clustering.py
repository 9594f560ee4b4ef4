"""Halos that cluster: positions drawn from a biased lognormal density field (the two-halo term).

Each cell of the box gets its own Gaussian random field g on an ``n_grid``^3 mesh (periodic over the cell) with the
linear matter power spectrum P(k, z) of the box's cosmology (colossus, Eisenstein & Hu 1998 transfer function),
Gaussian-smoothed at the mesh spacing. A halo of linear bias b(M) (Tinker et al. 2010, colossus ``haloBias``, M200c)
lands in mesh voxel i with probability proportional to

    rho_b(i) = exp(b g_i - b^2 sigma_g^2 / 2)                (mean 1 over the cell)

and uniformly inside it. The halo-halo correlation of this lognormal model is xi_hh(r) = exp(b^2 xi_g(r)) - 1, which
is b^2 xi_lin(r) where xi is small (r >~ 10 h^-1 Mpc) and steeper below: the correlated large-scale structure that
puts interlopers in front of and behind clusters. Halo masses follow the mass function untouched; only positions
move. The box is clustered within each cell (cells are hundreds of h^-1 Mpc wide; structure across cell faces is
not correlated).

Units: comoving Mpc/h, wavenumbers h/Mpc, P(k) in (Mpc/h)^3, M200c in Msun/h.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cosmology import Cosmology, colossus_cosmology

#: mesh cells per side of a box cell (spacing side / N_GRID; ~2-3 h^-1 Mpc for the default box's cells)
N_GRID = 96
#: bias table: log10 M200c [Msun/h] grid
_LOG_M = np.linspace(9.0, 16.5, 151)


@dataclass(frozen=True, eq=False)
class ClusteringTables:
    """Per-configuration tables: the power spectrum on a k grid and b(M), both read-only."""

    log10_k: np.ndarray
    log10_pk: np.ndarray
    log10_m: np.ndarray
    bias: np.ndarray

    @classmethod
    def build(cls, cosmology: Cosmology, redshift: float) -> ClusteringTables:
        from colossus.lss import bias as cbias

        k = np.logspace(-4, 2, 600)
        with colossus_cosmology(cosmology) as cc:
            pk = cc.matterPowerSpectrum(k, redshift)
            b = cbias.haloBias(10.0**_LOG_M, redshift, mdef="200c", model="tinker10")
        return cls(np.log10(k), np.log10(pk), _LOG_M.copy(), np.asarray(b, dtype=np.float64))

    def power(self, k: np.ndarray) -> np.ndarray:
        """Linear P(k) [(Mpc/h)^3] at ``k`` [h/Mpc] (log-log interpolation; 0 at k = 0)."""
        k = np.asarray(k, dtype=np.float64)
        out = np.zeros_like(k)
        pos = k > 0
        out[pos] = 10.0 ** np.interp(np.log10(k[pos]), self.log10_k, self.log10_pk)
        return out

    def halo_bias(self, m200c: np.ndarray) -> np.ndarray:
        """Tinker+10 linear bias of halos of ``m200c`` [Msun/h]."""
        return np.interp(np.log10(np.asarray(m200c, dtype=np.float64)), self.log10_m, self.bias)


def gaussian_field(rng: np.random.Generator, tables: ClusteringTables, side: float,
                   n_grid: int = N_GRID) -> np.ndarray:
    """A periodic Gaussian field (n_grid^3, mean 0) on a cube of ``side`` h^-1 Mpc with the linear P(k), smoothed
    by a Gaussian of the mesh spacing (so the mesh does not alias)."""
    spacing = side / n_grid
    kf = 2.0 * np.pi * np.fft.fftfreq(n_grid, d=spacing)
    kz = 2.0 * np.pi * np.fft.rfftfreq(n_grid, d=spacing)
    k = np.sqrt(kf[:, None, None] ** 2 + kf[None, :, None] ** 2 + kz[None, None, :] ** 2)
    amplitude = np.sqrt(tables.power(k) * np.exp(-(k * spacing) ** 2) / side**3) * n_grid**3
    white = rng.standard_normal((n_grid, n_grid, n_grid))
    field = np.fft.irfftn(np.fft.rfftn(white) / n_grid**1.5 * amplitude, s=white.shape, axes=(0, 1, 2))
    return field - field.mean()


def place(rng: np.random.Generator, bias: np.ndarray, field: np.ndarray, side: float,
          n_bias_bins: int = 24) -> np.ndarray:
    """Positions (n, 3) in [0, side) of halos of linear ``bias`` in the lognormal field exp(b g - b^2 s^2 / 2).

    Halos are grouped in ``n_bias_bins`` bins of bias (each bin uses its median bias), then each halo picks a voxel
    with probability proportional to the bin's density and a uniform position inside it.
    """
    n = len(bias)
    out = np.empty((n, 3))
    if n == 0:
        return out
    n_grid = field.shape[0]
    flat = field.ravel()
    var = float(flat.var())
    edges = np.quantile(bias, np.linspace(0.0, 1.0, n_bias_bins + 1))
    which = np.clip(np.searchsorted(edges, bias, side="right") - 1, 0, n_bias_bins - 1)
    spacing = side / n_grid
    for b_bin in range(n_bias_bins):
        members = np.flatnonzero(which == b_bin)
        if len(members) == 0:
            continue
        b = float(np.median(bias[members]))
        log_w = b * flat - 0.5 * b * b * var
        w = np.exp(log_w - log_w.max())
        cdf = np.cumsum(w)
        voxel = np.searchsorted(cdf, rng.random(len(members)) * cdf[-1], side="right")
        voxel = np.minimum(voxel, len(flat) - 1)
        ijk = np.stack(np.unravel_index(voxel, field.shape), axis=1).astype(np.float64)
        out[members] = (ijk + rng.random((len(members), 3))) * spacing
    return out

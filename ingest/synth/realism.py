"""How much a synthetic box looks like the real universe where dynamical masses are decided.

Statistics of a box (halos + galaxies in canonical columns), each next to its published value and source:

* ``smf``: the stellar mass function of ``obs_sm`` in 0.25-dex bins over 10^9.5-10^11.5 Msun, as a ratio to Li &
  White (2009)'s triple-Schechter fit (:data:`LI_WHITE_2009`);
* ``satellite_fraction``: of galaxies with 10^9.5 <= obs_sm < 10^10.5 Msun (Yang, Mo & van den Bosch 2012: ~0.37);
* ``satellites_per_host``: median number of satellites with obs_sm >= 10^9.5 Msun within R200c (and within Rvir)
  of distinct hosts in bins of log10 M200c [Msun/h] (UniverseMachine on MDPL2, Ho et al. 2019's catalogs, counted
  within Rvir: ~17 / 42 / 112 / 280 for 10^13.5-14 / 14-14.5 / 14.5-15 / > 15);
* ``sigma_15``: the line-of-sight dispersion of true members (central + satellites above the cut within R200c, hosts
  with >= 30 of them, three axes) at h(z) M200c = 1e15 Msun, from a power-law fit (Evrard et al. 2008: 1082.9 km/s
  for dark matter; UniverseMachine galaxies ~1087 km/s, Ho et al. 2019's fit);
* ``msigma_pure``: Ho et al. (2019)'s M-sigma recipe (:mod:`pipeline.scaling`) on true members within R200c
  (hosts with >= 10 of them; Ho et al. 2019: 0.141 dex).

The box is generated cell by cell, so :class:`RealismAccumulator` takes one cell at a time (every satellite lives
in the cell of its host) and keeps only small per-host arrays. Units: M200c in Msun/h, stellar masses Msun (no h),
distances comoving Mpc/h, velocities physical km/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ingest.synth.nfw import radius_from_mass
from pipeline.cosmology import Cosmology
from pipeline.scaling import ho19_scatter

#: 0.25-dex stellar-mass bins of the SMF comparison, log10 Msun
SMF_EDGES = np.round(np.arange(9.5, 11.5001, 0.25), 4)
#: stellar-mass cut of members and satellites, log10 Msun (Ho et al. 2019's UniverseMachine cut)
MSTAR_CUT = 9.5
#: fewest true members a line of sight needs for the pure M-sigma test
PURE_MIN_MEMBERS = 10
#: host bins of the richness comparison, log10 M200c [Msun/h]
HOST_BINS = ((13.5, 14.0), (14.0, 14.5), (14.5, 15.0), (15.0, 16.5))

#: Li & White (2009, MNRAS 398, 2177) SMF, h = 1 units: masses h^-2 Msun, phi h^3 Mpc^-3 per ln(10) dex.
#: Three Schechter pieces (log10 M* lower edge of the piece, phi* [h^3 Mpc^-3], alpha, log10 M_char [h^-2 Msun]).
#: Transcribed in duncandc/lss_observations (stellar_mass_functions.py, LiWhite_2009_phi, their Table 1).
LI_WHITE_2009 = (
    (8.00, 0.01465, -1.1309, 9.6124),
    (9.33, 0.01327, -0.9004, 10.3702),
    (10.67, 0.0044, -1.9918, 10.7104),
)

PUBLISHED: dict[str, dict[str, Any]] = {
    "satellite_fraction": {"value": 0.37, "source": "Yang, Mo & van den Bosch 2012, ApJ 752, 41, Table 6 "
                                                    "(0.43 at 10^9.5, 0.37 at 10^10, 0.28 at 10^10.5 h^-2 Msun)"},
    "satellites_per_host": {"value": [17, 42, 112, 280],
                            "source": "UniverseMachine on MDPL2 (Ho et al. 2019 catalogs), within Rvir"},
    "sigma_15": {"value": 1082.9, "source": "Evrard et al. 2008 (dark matter); UniverseMachine galaxies ~1087"},
    "msigma_pure": {"value": 0.1406, "source": "Ho et al. 2019, M-sigma on true members (notebooks/paper.ipynb)"},
    "smf": {"value": 1.0, "source": "Li & White 2009, MNRAS 398, 2177 (ratio of the box's SMF to the fit)"},
}


def li_white_2009(log10_mstar: np.ndarray, h: float) -> np.ndarray:
    """Li & White (2009) SMF at log10 M* [Msun] in Mpc^-3 dex^-1 for a cosmology of Hubble parameter ``h``.

    The fit is in h = 1 units (M* in h^-2 Msun, phi in h^3 Mpc^-3): M*[h^-2 Msun] = M*[Msun] h^2 and
    phi[Mpc^-3] = phi[h^3 Mpc^-3] h^3. Each piece is ln(10) phi* x^(alpha+1) exp(-x), x = M / M_char.
    """
    logm_h = np.asarray(log10_mstar, dtype=np.float64) + 2.0 * np.log10(h)
    out = np.zeros_like(logm_h)
    edges = [p[0] for p in LI_WHITE_2009] + [np.inf]
    for (lo, phi, alpha, logmc), hi in zip(LI_WHITE_2009, edges[1:], strict=True):
        sel = (logm_h >= lo) & (logm_h < hi)
        x = 10.0 ** (logm_h[sel] - logmc)
        out[sel] = np.log(10.0) * phi * x ** (alpha + 1.0) * np.exp(-x)
    return out * h**3


def bin_smf(log10_obs_sm: np.ndarray) -> np.ndarray:
    """Galaxy counts per :data:`SMF_EDGES` bin."""
    return np.histogram(log10_obs_sm, bins=SMF_EDGES)[0]


@dataclass
class RealismAccumulator:
    """Per-cell sums of a synthetic box's statistics; :meth:`report` compares them with the published values.

    ``redshift`` and ``cosmology`` are the box's; ``box_size`` its side in comoving Mpc/h.
    """

    box_size: float
    redshift: float
    cosmology: Cosmology
    smf_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(SMF_EDGES) - 1, np.int64))
    sat_counts: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))  # satellites, all
    hosts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, halos: dict[str, np.ndarray], galaxies: dict[str, np.ndarray]) -> None:
        """Add one cell (every satellite's host is in the same cell)."""
        logsm = np.log10(np.maximum(galaxies["obs_sm"].astype(np.float64), 1e-30))
        self.smf_counts += bin_smf(logsm)
        mid = (logsm >= 9.5) & (logsm < 10.5)
        self.sat_counts += [int((mid & (galaxies["upid"] != -1)).sum()), int(mid.sum())]
        self.hosts.append(host_members(halos, galaxies, self.redshift, self.cosmology))

    def report(self) -> dict[str, Any]:
        """Every statistic with its published value, source, and the acceptance range the project holds it to."""
        h = self.cosmology.h
        volume = (self.box_size / h) ** 3  # Mpc^3
        centres = 0.5 * (SMF_EDGES[1:] + SMF_EDGES[:-1])
        phi = self.smf_counts / volume / np.diff(SMF_EDGES)
        ratio = phi / li_white_2009(centres, h)
        hosts = {k: np.concatenate([c[k] for c in self.hosts]) if self.hosts else np.empty(0)
                 for k in ("log10_m200c", "n_r200c", "n_rvir")}
        rich = []
        for lo, hi in HOST_BINS:
            sel = (hosts["log10_m200c"] >= lo) & (hosts["log10_m200c"] < hi)
            rich.append({"lo": lo, "hi": hi, "hosts": int(sel.sum()),
                         "median_r200c": float(np.median(hosts["n_r200c"][sel])) if sel.any() else None,
                         "median_rvir": float(np.median(hosts["n_rvir"][sel])) if sel.any() else None})
        los = {k: np.concatenate([c[k] for c in self.hosts]) if self.hosts else np.empty(0)
               for k in ("los_log10_m200c", "los_sigma", "los_n")}
        return {
            "smf": {"log10_mstar": centres.tolist(), "phi_per_mpc3_dex": phi.tolist(),
                    "li_white_2009": li_white_2009(centres, h).tolist(), "ratio": ratio.tolist(),
                    "accept": [0.8, 1.25], **PUBLISHED["smf"]},
            "satellite_fraction": {"measured": float(self.sat_counts[0] / max(self.sat_counts[1], 1)),
                                   "accept": [0.30, 0.45], **PUBLISHED["satellite_fraction"]},
            "satellites_per_host": {"bins": rich, "accept_r200c": [[12, 24], [30, 60], [80, 160], None],
                                    **PUBLISHED["satellites_per_host"]},
            "sigma_15": {"measured": sigma_15(los["los_log10_m200c"], los["los_sigma"], los["los_n"],
                                              self.cosmology.efunc(self.redshift)),
                         "accept": [1000.0, 1140.0], **PUBLISHED["sigma_15"]},
            "msigma_pure": {"measured": ho19_scatter(los["los_log10_m200c"], los["los_sigma"],
                                                     los["los_n"] >= PURE_MIN_MEMBERS),
                            "accept": [0.11, 0.18], **PUBLISHED["msigma_pure"]},
        }


def host_members(halos: dict[str, np.ndarray], galaxies: dict[str, np.ndarray], redshift: float,
                 cosmology: Cosmology, host_log10_min: float = HOST_BINS[0][0]) -> dict[str, np.ndarray]:
    """Per host above ``host_log10_min``: satellite counts above the cut within R200c and Rvir, and per axis the
    line-of-sight dispersion (ddof = 1) of its true members (central + satellites within R200c) and their number."""
    distinct = (halos["upid"] == -1) & (halos["m200c"] >= 10.0**host_log10_min)
    hid = halos["halo_id"][distinct]
    m200c = halos["m200c"][distinct].astype(np.float64)
    r200c = radius_from_mass(m200c, 200.0, cosmology, redshift)
    rvir = halos["rvir"][distinct].astype(np.float64)
    hv = np.stack([halos[k][distinct] for k in ("vx", "vy", "vz")], axis=1).astype(np.float64)
    if len(hid) == 0:
        empty = np.empty(0)
        return {"log10_m200c": empty, "n_r200c": empty, "n_rvir": empty, "los_log10_m200c": empty,
                "los_sigma": empty, "los_n": empty}
    order = np.argsort(hid)
    hid, m200c, r200c, rvir, hv = hid[order], m200c[order], r200c[order], rvir[order], hv[order]
    cut = galaxies["obs_sm"] >= 10.0**MSTAR_CUT
    is_sat = cut & (galaxies["upid"] != -1)
    is_cen = cut & (galaxies["upid"] == -1)
    g_host = np.where(is_sat, galaxies["upid"], galaxies["galaxy_id"])
    pos = np.searchsorted(hid, g_host)
    pos = np.clip(pos, 0, len(hid) - 1)
    known = (hid[pos] == g_host) & (is_sat | is_cen)
    d = galaxies["uparent_dist"].astype(np.float64)
    inside200 = known & (is_cen | (d <= r200c[pos]))
    inside_vir = known & is_sat & (d <= rvir[pos])
    n_r200c = np.bincount(pos[inside200 & is_sat], minlength=len(hid))
    n_rvir = np.bincount(pos[inside_vir], minlength=len(hid))
    gv = np.stack([galaxies[k] for k in ("vx", "vy", "vz")], axis=1).astype(np.float64)
    idx = pos[inside200]
    v = gv[inside200] - hv[idx]
    n = np.bincount(idx, minlength=len(hid)).astype(np.float64)
    sig = []
    for axis in range(3):
        s1 = np.bincount(idx, weights=v[:, axis], minlength=len(hid))
        s2 = np.bincount(idx, weights=v[:, axis] ** 2, minlength=len(hid))
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (s2 - s1**2 / n) / (n - 1.0)
        sig.append(np.sqrt(np.where(n > 1, np.maximum(var, 0.0), np.nan)))
    return {"log10_m200c": np.log10(m200c), "n_r200c": n_r200c, "n_rvir": n_rvir,
            "los_log10_m200c": np.tile(np.log10(m200c), 3), "los_sigma": np.concatenate(sig),
            "los_n": np.tile(n, 3)}


def sigma_15(log10_m200c: np.ndarray, sigma: np.ndarray, n: np.ndarray, efunc: float, min_members: int = 30
             ) -> float | None:
    """sigma_los [km/s] at h(z) M200c = 1e15 Msun from a least-squares fit of log sigma on log(E(z) M200c / 1e15)
    over lines of sight with >= ``min_members`` true members (h(z) M[Msun] = E(z) M[Msun/h])."""
    sel = (n >= min_members) & np.isfinite(sigma) & (sigma > 0)
    if sel.sum() < 10:
        return None
    x = log10_m200c[sel] + np.log10(efunc) - 15.0
    _, intercept = np.polyfit(x, np.log10(sigma[sel]), 1)
    return float(10.0**intercept)

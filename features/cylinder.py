"""Cylinder searches around host halos in a periodic box, in redshift space.

A galaxy is in the cylinder of a host along the unit vector ``n`` when its projected comoving distance is below
``r_aperture`` and its line-of-sight velocity relative to the host,

    v_los = (a H(z) / h) * (d . n) + (v_gal - v_host) . n            [km/s]

(the Hubble flow over the comoving separation d plus the peculiar-velocity difference), satisfies |v_los| < v_cut.
Moving every object to its redshift-space position ``s = x + (v . n) / (a H / h) n`` makes this an ordinary box
query: v_los = (a H / h) * (s_gal - s_host) . n, and the cylinder has half-depth ``D = v_cut / (a H / h)`` in s.
For the box axes the search scales the line-of-sight coordinate by R/D, so the cylinder sits inside a sphere of
radius R*sqrt(2) (1.9x the cylinder's volume) for a periodic KD-tree, then filters exactly.

Units: positions comoving Mpc/h, velocities physical km/s, ``hubble`` = a H(z) / h in (km/s) / (Mpc/h).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from features.balance import BalanceSpec
from features.centring import CentringSpec
from pipeline.errors import ConfigError
from pipeline.snapshot import Snapshot


@dataclass(frozen=True)
class CylinderSpec:
    """What a mock observation is (defaults: Ho et al. 2019).

    r_aperture : projected radius, comoving Mpc/h
    v_cut : half-width of the line-of-sight velocity window, km/s
    min_members : observations with fewer members are dropped (and counted)
    log10_mstar_min : galaxies with log10(obs_sm / Msun) below this are not observed
    host_log10_m200c_min : hosts are distinct halos with log10(M200c / (Msun/h)) at or above this (10^13: the groups
        real member lists hold, issue 20; Ho et al. 2019 started at 10^13.5)
    r_limit : None (default) or an apparent SDSS r-band limit (AB mag): galaxies fainter than it at the snapshot's
        redshift are not observed either (absolute limit r_limit - distance modulus, no K-correction; the galaxy
        catalog must carry ``mag_r``, as the synthetic box's HDF5 files do). SDSS's main sample: 17.77.
    """

    r_aperture: float = 1.6
    v_cut: float = 2500.0
    min_members: int = 10
    log10_mstar_min: float = 9.5
    host_log10_m200c_min: float = 13.0
    r_limit: float | None = None

    def __post_init__(self) -> None:
        if not (self.r_aperture > 0 and math.isfinite(self.r_aperture)):
            raise ConfigError(f"cylinder: r_aperture must be a positive length in Mpc/h, got {self.r_aperture}")
        if not (self.v_cut > 0 and math.isfinite(self.v_cut)):
            raise ConfigError(f"cylinder: v_cut must be a positive velocity in km/s, got {self.v_cut}")
        if self.min_members < 1:
            raise ConfigError(f"cylinder: min_members must be >= 1, got {self.min_members}")
        if self.r_limit is not None and not 10.0 < self.r_limit < 30.0:
            raise ConfigError(f"cylinder: r_limit must be an apparent AB magnitude in (10, 30), got {self.r_limit}")

    def half_depth(self, snapshot: Snapshot) -> float:
        """Half-depth of the cylinder in redshift space, comoving Mpc/h."""
        return self.v_cut / snapshot.hubble_per_comoving()

    def check(self, snapshot: Snapshot) -> None:
        """Refuse cylinders that would wrap onto themselves in the periodic box."""
        depth = 2.0 * self.half_depth(snapshot)
        if depth > snapshot.box_size / 2:
            raise ConfigError(
                f"cylinder: |v_los| < {self.v_cut:g} km/s spans {depth:.1f} Mpc/h in redshift space at z = "
                f"{snapshot.redshift:.3f}, deeper than half the {snapshot.box_size:g} Mpc/h box; expected a depth "
                f"<= {snapshot.box_size / 2:g} Mpc/h (lower v_cut or use a larger box)"
            )
        if 2.0 * self.r_aperture > snapshot.box_size / 2:
            raise ConfigError(
                f"cylinder: aperture {self.r_aperture:g} Mpc/h is too wide for the {snapshot.box_size:g} Mpc/h box"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LineOfSightSpec:
    """Lines of sight: the box axes (los index 0, 1, 2 = x, y, z) and, for hosts at or above
    ``extra_log10_m200c_min``, ``extra_directions`` random directions (los index 3, 4, ...) drawn from ``seed``."""

    axes: tuple[int, ...] = (0, 1, 2)
    extra_directions: int = 0
    extra_log10_m200c_min: float = 14.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not set(self.axes) <= {0, 1, 2} or len(set(self.axes)) != len(self.axes):
            raise ConfigError(f"lines of sight: axes must be distinct values of 0, 1, 2, got {self.axes}")
        if self.extra_directions < 0:
            raise ConfigError("lines of sight: extra_directions must be >= 0")

    def directions(self) -> np.ndarray:
        """Unit vectors of the extra directions, shape (extra_directions, 3), isotropic, from ``seed``."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0x105,)))
        v = rng.normal(size=(self.extra_directions, 3))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def to_dict(self) -> dict:
        return asdict(self) | {"extra_unit_vectors": self.directions().tolist()}


@dataclass(frozen=True)
class ObservationSpec:
    """The specification of a set of mock observations: the cylinder, the lines of sight, where each cylinder is
    centred (:class:`features.centring.CentringSpec`: by default with the published centring errors of real
    cluster lists), ``regions_per_side`` (columns per box side per line of sight of the region decomposition,
    :mod:`features.observe`) and ``balance`` (:class:`features.balance.BalanceSpec`: the abundant low-mass hosts
    subsampled to a flatter mass function); units as in :class:`CylinderSpec`.

    A spec like :class:`CylinderSpec` and :class:`LineOfSightSpec`, not a configuration section: the ``[observe]``
    section is :class:`features.config.ObserveSection`, which builds one (``observation_spec()``). It lives here, beside
    the specs it bundles, because both :mod:`features.config` and :mod:`features.observe` need it and
    :mod:`features.observe` imports :mod:`features.config`."""

    cylinder: CylinderSpec = field(default_factory=CylinderSpec)
    los: LineOfSightSpec = field(default_factory=LineOfSightSpec)
    regions_per_side: int = 4
    centring: CentringSpec = field(default_factory=CentringSpec)
    balance: BalanceSpec = field(default_factory=BalanceSpec)

    def to_dict(self) -> dict:
        return {"cylinder": self.cylinder.to_dict(), "los": self.los.to_dict(),
                "regions_per_side": self.regions_per_side, "centring": self.centring.to_dict(),
                "balance": self.balance.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> ObservationSpec:
        """The spec :meth:`to_dict` wrote (an observation set's ``config``). One written before centring errors
        existed (no ``centring``) was observed from the true halo centres: ``centring`` ``none``; one written before
        mass balancing existed (no ``balance``) kept every host: ``balance.below`` None."""
        los = {k: v for k, v in data["los"].items() if k != "extra_unit_vectors"}
        los["axes"] = tuple(los.get("axes", LineOfSightSpec().axes))
        centring = data.get("centring") or {"model": "none"}
        balance = data.get("balance") or {"below": None}
        return cls(cylinder=CylinderSpec(**data["cylinder"]), los=LineOfSightSpec(**los),
                   regions_per_side=int(data["regions_per_side"]), centring=CentringSpec(**centring),
                   balance=BalanceSpec(**balance))


@dataclass(frozen=True)
class Matches:
    """Members found for a set of hosts, grouped by host (hosts in input order).

    offsets : int64, n_hosts + 1; members of host i are ``index[offsets[i]:offsets[i+1]]``
    index : int64 indices into the galaxy arrays given to the search
    r_proj : projected comoving distance to the host's cylinder axis (its centre, :mod:`features.centring`), Mpc/h
    v_los : line-of-sight velocity relative to that centre, km/s
    """

    offsets: np.ndarray
    index: np.ndarray
    r_proj: np.ndarray
    v_los: np.ndarray


def wrap(d: np.ndarray, period: float | np.ndarray) -> np.ndarray:
    """Minimum-image separation: ``d`` mapped into [-period/2, period/2)."""
    return d - period * np.floor(d / period + 0.5)


def redshift_space(x: np.ndarray, v_los: np.ndarray, hubble: float, box_size: float) -> np.ndarray:
    """Redshift-space coordinate x + v / (a H / h), wrapped into [0, box_size): comoving Mpc/h."""
    s = np.mod(np.asarray(x, dtype=np.float64) + np.asarray(v_los, dtype=np.float64) / hubble, box_size)
    return np.where(s >= box_size, 0.0, s)


def search_axis(
    host_xy: np.ndarray,
    host_s: np.ndarray,
    gal_xy: np.ndarray,
    gal_s: np.ndarray,
    *,
    r_aperture: float,
    half_depth: float,
    hubble: float,
    period_xy: tuple[float, float],
    period_s: float,
) -> Matches:
    """Cylinder members along a box axis.

    ``host_xy``/``gal_xy``: projected coordinates (n, 2), comoving Mpc/h; ``host_s``/``gal_s``: redshift-space
    coordinate along the line of sight, comoving Mpc/h. ``period_xy``, ``period_s``: periods of those coordinates
    (the box size; a region's local frame passes a period larger than twice its extent to switch wrapping off).
    Membership is strict: r_proj < r_aperture and |v_los| < hubble * half_depth.
    """
    n_hosts = len(host_s)
    if n_hosts == 0 or len(gal_s) == 0:
        return _empty(n_hosts)
    scale = r_aperture / half_depth
    gal = np.column_stack([gal_xy[:, 0], gal_xy[:, 1], np.asarray(gal_s, dtype=np.float64) * scale])
    hosts = np.column_stack([host_xy[:, 0], host_xy[:, 1], np.asarray(host_s, dtype=np.float64) * scale])
    periods = np.array([period_xy[0], period_xy[1], period_s * scale], dtype=np.float64)
    gal = np.mod(gal, periods)
    hosts = np.mod(hosts, periods)
    tree = cKDTree(gal, boxsize=periods, balanced_tree=False, compact_nodes=False)
    radius = r_aperture * math.sqrt(2.0) * (1.0 + 1e-9)
    lists = tree.query_ball_point(hosts, radius, return_sorted=False)
    host_of, cand = _flatten(lists)
    dx = wrap(gal_xy[cand, 0] - host_xy[host_of, 0], period_xy[0])
    dy = wrap(gal_xy[cand, 1] - host_xy[host_of, 1], period_xy[1])
    ds = wrap(np.asarray(gal_s, dtype=np.float64)[cand] - np.asarray(host_s, dtype=np.float64)[host_of], period_s)
    r2 = dx * dx + dy * dy
    keep = (r2 < r_aperture * r_aperture) & (np.abs(ds) < half_depth)
    return _group(n_hosts, host_of[keep], cand[keep], np.sqrt(r2[keep]), ds[keep] * hubble)


def search_direction(
    host_s: np.ndarray,
    gal_s: np.ndarray,
    n_hat: np.ndarray,
    *,
    r_aperture: float,
    half_depth: float,
    hubble: float,
    box_size: float,
) -> Matches:
    """Cylinder members along an arbitrary unit vector ``n_hat``.

    ``host_s``/``gal_s``: redshift-space positions (n, 3) along ``n_hat`` (x + (v . n) / (a H / h) n, wrapped),
    comoving Mpc/h. Candidates come from a periodic sphere query of radius sqrt(R^2 + D^2), then the exact filter
    on the minimum-image separation.
    """
    n_hosts = len(host_s)
    if n_hosts == 0 or len(gal_s) == 0:
        return _empty(n_hosts)
    gal = np.mod(np.asarray(gal_s, dtype=np.float64), box_size)
    hosts = np.mod(np.asarray(host_s, dtype=np.float64), box_size)
    tree = cKDTree(gal, boxsize=box_size, balanced_tree=False, compact_nodes=False)
    radius = math.hypot(r_aperture, half_depth) * (1.0 + 1e-9)
    host_of, cand = _flatten(tree.query_ball_point(hosts, radius, return_sorted=False))
    d = wrap(gal[cand] - hosts[host_of], box_size)
    along = d @ np.asarray(n_hat, dtype=np.float64)
    r2 = np.maximum(np.einsum("ij,ij->i", d, d) - along * along, 0.0)
    keep = (r2 < r_aperture * r_aperture) & (np.abs(along) < half_depth)
    return _group(n_hosts, host_of[keep], cand[keep], np.sqrt(r2[keep]), along[keep] * hubble)


def _flatten(lists) -> tuple[np.ndarray, np.ndarray]:
    counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    host_of = np.repeat(np.arange(len(lists), dtype=np.int64), counts)
    cand = np.concatenate(lists).astype(np.int64, copy=False) if counts.sum() else np.empty(0, np.int64)
    return host_of, cand


def _group(n_hosts: int, host_of, cand, r_proj, v_los) -> Matches:
    # stable order: by host, then by galaxy index, so results do not depend on the tree's traversal order
    order = np.lexsort((cand, host_of))
    counts = np.bincount(host_of, minlength=n_hosts)
    offsets = np.zeros(n_hosts + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Matches(offsets, cand[order], r_proj[order].astype(np.float32), v_los[order].astype(np.float32))


def _empty(n_hosts: int) -> Matches:
    z = np.empty(0, dtype=np.float32)
    return Matches(np.zeros(n_hosts + 1, dtype=np.int64), np.empty(0, dtype=np.int64), z, z)

"""The features stage's configuration section ``[observe]``: what a mock observation is and how it is computed.

Every default comes from the specs it configures: :class:`features.cylinder.CylinderSpec` (the cylinder, after
Ho et al. 2019), :class:`features.cylinder.LineOfSightSpec` and :class:`features.cylinder.ObservationSpec`.
Every key is checked on its own when the section is built (:meth:`ObserveSection.__post_init__`), and against the
box once the snapshot is known (:func:`check_geometry`: at load when the configuration gives the box, else when
the catalogs are opened), so that no bad value reaches the streaming pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from features.balance import BalanceSpec
from features.centring import CENTRING_MODELS, CentringSpec
from features.cylinder import CylinderSpec, LineOfSightSpec, ObservationSpec
from pipeline.config import check_choice, check_number, default
from pipeline.errors import ConfigError
from pipeline.snapshot import Snapshot

#: keys that change only speed, never a result (left out of digests and cache keys)
SPEED_ONLY = ("workers",)
#: the most columns per box side: 3 n^2 bucket files per run (64: 12,288)
MAX_REGIONS_PER_SIDE = 64
#: the most random lines of sight per massive host (each is one more pass over its galaxies)
MAX_EXTRA_DIRECTIONS = 1000
#: the most threads running region tasks
MAX_WORKERS = 256
#: log10 M200c [Msun/h] a host cut may take: below, "hosts" are galaxies; above, no halo in any universe
HOST_MASS_RANGE = (10.0, 16.0)
#: log10 M* [Msun] a stellar-mass cut may take (as [synth] min_log10_mstar)
MSTAR_RANGE = (0.0, 13.0)


@dataclass(frozen=True)
class ObserveSection:
    """``[observe]``: the cylinder, the lines of sight and the region decomposition, flat as in the TOML file.

    r_aperture : comoving Mpc/h, (0, 50]; v_cut : km/s, (0, 20000]; min_members : fewest members an observation
    keeps, 1-100000; log10_mstar_min : log10 Msun, [0, 13]; r_limit : apparent r-band limit at the snapshot's
    redshift, (10, 30) (absent: none); host_log10_m200c_min, extra_log10_m200c_min : log10 Msun/h, [10, 16];
    extra_directions : random lines of sight per host above extra_log10_m200c_min, 0-1000; los_seed : their seed,
    >= 0; regions_per_side : columns per box side per line of sight, 1-64 (and each column wider than twice the
    aperture); centring : where each cylinder is centred, ``"zhang19-lauer14"`` (default: the published centring
    errors of real cluster lists, position after Zhang et al. 2019 and velocity after Lauer et al. 2014,
    :mod:`features.centring`) or ``"none"`` (the true halo position and velocity); centring_seed : the seed of
    those draws, >= 0; balance_below : log10 M200c [Msun/h] below which the abundant hosts are subsampled to a
    flatter mass function (every 0.1-dex bin keeps at most as many hosts as the bin just above it,
    :mod:`features.balance`; at or below host_log10_m200c_min: every host kept), [10, 16]; balance_seed : the seed
    of which hosts are kept, >= 0; workers : threads running regions (speed only), 1-256.
    """

    r_aperture: float = default(CylinderSpec, "r_aperture")
    v_cut: float = default(CylinderSpec, "v_cut")
    min_members: int = default(CylinderSpec, "min_members")
    log10_mstar_min: float = default(CylinderSpec, "log10_mstar_min")
    host_log10_m200c_min: float = default(CylinderSpec, "host_log10_m200c_min")
    r_limit: float | None = default(CylinderSpec, "r_limit")
    extra_directions: int = default(LineOfSightSpec, "extra_directions")
    extra_log10_m200c_min: float = default(LineOfSightSpec, "extra_log10_m200c_min")
    los_seed: int = default(LineOfSightSpec, "seed")
    regions_per_side: int = default(ObservationSpec, "regions_per_side")
    centring: str = default(CentringSpec, "model")
    centring_seed: int = default(CentringSpec, "seed")
    balance_below: float = default(BalanceSpec, "below")
    balance_seed: int = default(BalanceSpec, "seed")
    workers: int = 2

    def __post_init__(self) -> None:
        check_number("r_aperture", self.r_aperture, low=0.0, high=50.0, low_open=True, unit="comoving Mpc/h")
        check_number("v_cut", self.v_cut, low=0.0, high=20000.0, low_open=True, unit="km/s")
        check_number("min_members", self.min_members, low=1, high=100_000, integer=True)
        check_number("log10_mstar_min", self.log10_mstar_min, low=MSTAR_RANGE[0], high=MSTAR_RANGE[1],
                     unit="log10 Msun")
        check_number("host_log10_m200c_min", self.host_log10_m200c_min, low=HOST_MASS_RANGE[0],
                     high=HOST_MASS_RANGE[1], unit="log10 Msun/h")
        if self.r_limit is not None:
            check_number("r_limit", self.r_limit, low=10.0, high=30.0, low_open=True, high_open=True,
                         unit="apparent AB mag")
        check_number("extra_directions", self.extra_directions, low=0, high=MAX_EXTRA_DIRECTIONS, integer=True)
        check_number("extra_log10_m200c_min", self.extra_log10_m200c_min, low=HOST_MASS_RANGE[0],
                     high=HOST_MASS_RANGE[1], unit="log10 Msun/h")
        check_number("los_seed", self.los_seed, low=0, integer=True)
        check_number("regions_per_side", self.regions_per_side, low=1, high=MAX_REGIONS_PER_SIDE, integer=True)
        check_choice("centring", self.centring, CENTRING_MODELS)
        check_number("centring_seed", self.centring_seed, low=0, integer=True)
        check_number("balance_below", self.balance_below, low=HOST_MASS_RANGE[0], high=HOST_MASS_RANGE[1],
                     unit="log10 Msun/h")
        check_number("balance_seed", self.balance_seed, low=0, integer=True)
        check_number("workers", self.workers, low=1, high=MAX_WORKERS, integer=True)
        self.observation_spec()  # the cylinder's and lines of sight's own checks, before anything runs

    def observation_spec(self) -> ObservationSpec:
        """The :class:`ObservationSpec` this section describes."""
        return ObservationSpec(
            cylinder=CylinderSpec(r_aperture=self.r_aperture, v_cut=self.v_cut, min_members=self.min_members,
                                  log10_mstar_min=self.log10_mstar_min,
                                  host_log10_m200c_min=self.host_log10_m200c_min, r_limit=self.r_limit),
            los=LineOfSightSpec(extra_directions=self.extra_directions,
                                extra_log10_m200c_min=self.extra_log10_m200c_min, seed=self.los_seed),
            regions_per_side=self.regions_per_side,
            centring=CentringSpec(model=self.centring, seed=self.centring_seed),
            balance=BalanceSpec(below=float(self.balance_below), seed=self.balance_seed),
        )

    def check_box(self, snapshot: Snapshot) -> None:
        """Refuse a cylinder or a region grid that does not fit the box of ``snapshot`` (see :func:`check_geometry`)."""
        check_geometry(self.observation_spec(), snapshot)

    def science_dict(self) -> dict[str, Any]:
        """Every key that can change a result (the cache key of the features stage)."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items() if k not in SPEED_ONLY}


def check_geometry(config: ObservationSpec, snapshot: Snapshot) -> None:
    """Refuse mock observations that do not fit the periodic box of ``snapshot``, naming the ``[observe]`` key.

    The cylinder must not wrap onto itself: its redshift-space depth 2 v_cut / (a H / h) [Mpc/h] (``v_cut``) and
    its diameter (``r_aperture``) at most half the box side; and each of the ``regions_per_side`` columns must be
    wider than the aperture on both sides (box / n > 2 r_aperture).
    """
    spec, box = config.cylinder, snapshot.box_size
    depth = 2.0 * spec.half_depth(snapshot)
    if depth > box / 2:
        raise ConfigError(
            f"|v_los| < {spec.v_cut:g} km/s spans {depth:.1f} Mpc/h in redshift space at z = {snapshot.redshift:.3f}, "
            f"deeper than half the {box:g} Mpc/h box; expected a depth <= {box / 2:g} Mpc/h (lower v_cut or use a "
            "larger box)", key="v_cut")
    if 2.0 * spec.r_aperture > box / 2:
        raise ConfigError(f"expected an aperture diameter <= half the {box:g} Mpc/h box (r_aperture <= {box / 4:g} "
                          f"Mpc/h), got {spec.r_aperture:g} Mpc/h", key="r_aperture")
    n = config.regions_per_side
    if n > 1 and box / n <= 2.0 * spec.r_aperture:
        most = max(1, math.ceil(box / (2.0 * spec.r_aperture)) - 1)
        raise ConfigError(f"expected at most {most} columns per side of the {box:g} Mpc/h box (each wider than the "
                          f"aperture's diameter, {2 * spec.r_aperture:g} Mpc/h), got {n}", key="regions_per_side")

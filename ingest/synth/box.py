"""The synthetic MultiDark-style periodic box: distinct haloes, subhaloes and galaxies, cell by cell.

What is generated (units: masses Msun/h, stellar masses Msun without h, positions comoving Mpc/h in
``[0, box_size)``, radii comoving Mpc/h, velocities physical peculiar km/s):

* distinct haloes (``upid = pid = -1``): M200c from the Tinker+08 mass function (:mod:`.massfunction`),
  positions from a lognormal density field with the linear power spectrum and the Tinker+10 bias of their mass
  (:mod:`.clustering`; ``clustering = False``: uniform in their cell), bulk velocities N(0, 300 km/s) per axis,
  Duffy+08 concentrations with lognormal scatter, other mass definitions and radii from NFW (:mod:`.nfw`),
  vrms = sqrt(3) x the host's Evrard+08 dispersion (with its scatter and merger tail, :mod:`.velocity`); a fraction
  of the small haloes is moved into the infall regions of the massive ones (:mod:`.infall`);
* satellites: the surviving subhaloes of each distinct halo, Poisson numbers and peak masses from the subhalo
  peak-mass function of Jiang & van den Bosch (2016) above the peak mass whose galaxies can pass the stellar-mass
  cut (:func:`.subhalos.sample_subhalos`) — or, with ``hod`` given, Poisson(<N_sat>(M200c)) of a Zheng+07 HOD
  (:mod:`.hod`) with peak masses dN/dm ∝ m^-1.9; NFW radii inside Rvir (the radius UniverseMachine counts members
  in) with the host's concentration times its satellite concentration ratio, isotropic directions, velocities
  host + N(0, b_v sigma_host) per axis; each lives in a subhalo (``upid = pid = host id``);
* galaxies (UniverseMachine semantics): one central per distinct halo (``galaxy_id`` = halo id, ``upid = -1``),
  one satellite per subhalo (``galaxy_id`` = subhalo id, ``upid`` = host id); Moster+13 stellar masses from
  M200c (centrals) or peak M200c (satellites) with lognormal scatter, observed stellar masses with measurement
  scatter (:mod:`.smhm`), star formation from :mod:`.starformation`, rest-frame g-r colours (red sequence if
  quenched, blue cloud if not) and SDSS r-band absolute magnitudes from the true stellar mass through a colour-based
  mass-to-light ratio (:mod:`.photometry`). Only galaxies with
  ``obs_sm >= 10**min_log10_mstar`` are emitted;
* the galaxy-halo connection of each distinct halo (:mod:`.galaxy_physics`): its satellite abundance multiplier,
  velocity bias b_v, satellite concentration ratio, stellar-to-halo scatter (of its central and satellites) and
  merger tail are drawn per host, uniformly within the configured ranges (by default the published uncertainty
  ranges of :data:`.galaxy_physics.GALAXY_PHYSICS`), or fixed where the configuration gives a scalar. The values of
  the hosts with subhaloes are the cell's ``hosts`` table (:data:`.galaxy_physics.HOST_PHYSICS`), written beside
  the catalogs, never a catalog column.

The box is cut into ``cells_per_side**3`` cubes; cell ``i`` is generated from its own random stream
``SeedSequence(seed, spawn_key=(i,))`` (= ``SeedSequence(seed).spawn(n)[i]``), independently of the others, so a
box is reproducible cell by cell, never needs to sit in memory whole, and cells can be generated in parallel. The
per-host galaxy physics of cell ``i`` comes from a second stream, ``SeedSequence(seed, spawn_key=(i, 1))``
(:func:`physics_rng`), so that changing its ranges changes nothing else, and a box with every per-host key fixed
at its former single value is the former box.
The realisation depends on ``cells_per_side`` (the cells partition the Poisson draws), which is therefore part
of the configuration; ``None`` picks it from the expected halo count only (deterministic).
Halo ids are ``cell_index * 2**32 + k`` with k = 1, 2, ... over the cell's distinct haloes then subhaloes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from ingest.schema import GALAXIES, HALOS, Schema
from ingest.synth.clustering import ClusteringTables, gaussian_field, place
from ingest.synth.galaxy_physics import (
    GALAXY_PHYSICS,
    HOST_PHYSICS,
    STREAM_KEYS,
    ScalarOrRange,
    bounds,
    draw_host_physics,
    parse_setting,
)
from ingest.synth.galaxy_physics import KEYS as GALAXY_KEYS
from ingest.synth.geometry import isotropic_unit_vectors, wrap_positions
from ingest.synth.hod import HOD_PRESETS, Zheng07HOD
from ingest.synth.infall import relocate_into_infall
from ingest.synth.massfunction import MassFunctionTable
from ingest.synth.nfw import (
    VMAX_FACTOR,
    MassConversion,
    circular_velocity,
    radius_from_mass,
    sample_concentration,
    sample_radius,
    vmax_nfw,
)
from ingest.synth.nfw import mu as nfw_mu
from ingest.synth.photometry import sample_photometry
from ingest.synth.smhm import (
    MOSTER13_SHAM,
    Moster13,
    intracluster_light,
    observe_stellar_mass,
    sample_stellar_mass,
)
from ingest.synth.starformation import sample_star_formation_state
from ingest.synth.subhalos import (
    SUBHALO_NORM,
    sample_peak_masses,
    sample_stripping,
    sample_subhalos,
    stripped_vmax,
)
from ingest.synth.velocity import (
    evrard08_sigma_dm,
    sample_bulk_velocities,
    sample_host_dispersion,
    sample_satellite_velocities,
)
from pipeline.cosmology import MDPL2, Cosmology, named_cosmology
from pipeline.errors import ConfigError
from pipeline.snapshot import Snapshot

#: With ``cells_per_side=None`` the box is cut so that a cell holds at most about this many distinct haloes.
TARGET_HALOS_PER_CELL = 1_000_000
#: Halo ids of cell i are i * ID_STRIDE + 1, 2, ...
ID_STRIDE = 2**32
#: mpeak / mvir of distinct haloes is 10^Exponential(MPEAK_EXCESS_DEX) (>= 1: Rockstar's Mpeak >= Mvir).
MPEAK_EXCESS_DEX = 0.02
#: The per-host galaxy physics of cell i is drawn from SeedSequence(seed, spawn_key=(i, PHYSICS_STREAM)).
PHYSICS_STREAM = 1


def _build(kind: type, data: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
    try:
        return kind(**data)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines one synthetic box. Two equal configs give identical catalogs.

    Attributes
    ----------
    box_size : comoving side, Mpc/h
    seed : non-negative integer seed of the whole box
    scale_factor : a of the snapshot (MDPL2's 0.8951, z = 0.117, by default)
    cosmology : flat Lambda-CDM cosmology (MDPL2 by default)
    log10_mmin, log10_mmax : range of log10 M200c (Msun/h) of the distinct haloes
    hod : None (default): satellites are the surviving subhaloes of the Jiang & van den Bosch (2016) peak-mass
        function with normalisation ``subhalo_norm``, their galaxies' stellar masses from ``smhm`` on the peak mass
        (subhalo abundance matching); or a Zheng+07 occupation of satellites (halo mass M200c)
    subhalo_norm : gamma of the subhalo function (:data:`.subhalos.SUBHALO_NORM`), the base normalisation that
        ``satellite_abundance`` multiplies per host
    smhm : Moster+13 stellar-to-halo relation (:data:`.smhm.MOSTER13_SHAM`)
    obs_sm_scatter_dex : measurement scatter of the observed stellar mass, dex
    concentration_scatter_dex : lognormal scatter of c200c around Duffy+08, dex
    sigma_ln_scatter : Evrard+08 scatter in ln sigma_DM at fixed M200c

    The galaxy-halo connection, per host (:mod:`.galaxy_physics`; each a scalar, the same for every host, or a
    (low, high) range drawn uniformly and independently per distinct halo; defaults: the published ranges of
    :data:`.galaxy_physics.GALAXY_PHYSICS`, centred on the box's former single values):

    satellite_abundance : multiplier on the mean number of satellites (``subhalo_norm``, or the HOD's <N_sat>);
        (0.7, 1.3)
    velocity_bias : satellite velocity bias b_v (satellite / dark-matter 1-D dispersion); (0.9, 1.1)
    satellite_concentration : satellites' NFW concentration / the host's dark matter's; (0.5, 1.5)
    smhm_scatter_dex : lognormal scatter of true M* at fixed (peak) M200c, dex, of the host's central and
        satellites; (0.10, 0.20)
    merger_fraction : probability that a host's dispersion is raised by 10^``merger_boost_dex`` (:mod:`.velocity`);
        (0.05, 0.15)
    merger_boost_dex : log10 boost of a merger host's dispersion, dex; (0.0, 0.05)

    bulk_velocity_sigma : 1-D dispersion of distinct-halo bulk velocities, km/s
    min_log10_mstar : galaxies with obs_sm < 10^this Msun are not emitted (None: every galaxy)
    cells_per_side : cells along each axis (None: automatic, <= ~1e6 haloes per cell)
    infall_fraction : fraction of haloes below 10^12.5 Msun/h moved into the infall regions (1-5 R200c) of
        the hosts above 10^13.5 Msun/h of their cell
    log10_msub_min : lower limit of the subhalo peak-M200c function, log10 Msun/h (with ``hod = None`` raised to the
        peak mass below which no galaxy reaches ``min_log10_mstar``: 4 sigma of the stellar-mass scatter)
    subhalo_slope : dN/dm ∝ m^-subhalo_slope for subhalo peak masses
    subhalo_max_fraction : upper limit of a subhalo's peak M200c, as a fraction of its host's M200c (HOD only)
    clustering : place distinct haloes in a biased lognormal field (the two-halo term), or uniformly
    name : label of the snapshot (carried into provenance)
    """

    box_size: float
    seed: int = 0
    scale_factor: float = 0.8951
    cosmology: Cosmology = MDPL2
    log10_mmin: float = 11.0
    log10_mmax: float = 16.0
    hod: Zheng07HOD | None = None
    subhalo_norm: float = SUBHALO_NORM
    satellite_abundance: ScalarOrRange = GALAXY_PHYSICS.satellite_abundance
    smhm: Moster13 = MOSTER13_SHAM
    smhm_scatter_dex: ScalarOrRange = GALAXY_PHYSICS.smhm_scatter_dex
    obs_sm_scatter_dex: float = 0.1
    concentration_scatter_dex: float = 0.15
    satellite_concentration: ScalarOrRange = GALAXY_PHYSICS.satellite_concentration
    velocity_bias: ScalarOrRange = GALAXY_PHYSICS.velocity_bias
    sigma_ln_scatter: float = 0.043
    merger_fraction: ScalarOrRange = GALAXY_PHYSICS.merger_fraction
    merger_boost_dex: ScalarOrRange = GALAXY_PHYSICS.merger_boost_dex
    bulk_velocity_sigma: float = 300.0
    min_log10_mstar: float | None = 9.5
    cells_per_side: int | None = None
    infall_fraction: float = 0.05
    log10_msub_min: float = 10.5
    subhalo_slope: float = 1.9
    subhalo_max_fraction: float = 0.1
    clustering: bool = True
    name: str = field(default="synthetic")

    def __post_init__(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"synth: {key} = {getattr(self, key)!r} {why}")

        if not (_is_number(self.box_size) and self.box_size > 0):
            raise bad("box_size", "must be a positive length in Mpc/h")
        if not (isinstance(self.seed, int | np.integer) and not isinstance(self.seed, bool) and self.seed >= 0):
            raise bad("seed", "must be a non-negative integer")
        if not (_is_number(self.scale_factor) and 0.0 < self.scale_factor <= 1.0):
            raise bad("scale_factor", "must be in (0, 1]")
        if not isinstance(self.cosmology, Cosmology):
            raise bad("cosmology", "must be a pipeline.cosmology.Cosmology")
        if self.hod is not None and not isinstance(self.hod, Zheng07HOD):
            raise bad("hod", "must be None or a Zheng07HOD")
        if not isinstance(self.smhm, Moster13):
            raise bad("smhm", "must be a Moster13")
        ranges = {
            "log10_mmin": (8.0, 15.5),
            "log10_mmax": (10.0, 16.5),
            "obs_sm_scatter_dex": (0.0, 1.0),
            "concentration_scatter_dex": (0.0, 0.5),
            "subhalo_norm": (0.0, 1.0),
            "sigma_ln_scatter": (0.0, 1.0),
            "bulk_velocity_sigma": (0.0, 3000.0),
            "infall_fraction": (0.0, 0.99),
            "log10_msub_min": (8.0, 15.0),
            "subhalo_slope": (1.01, 3.0),
            "subhalo_max_fraction": (1e-3, 1.0),
        }
        for key, (lo, hi) in ranges.items():
            value = getattr(self, key)
            if not (_is_number(value) and lo <= value <= hi):
                raise bad(key, f"must be a number in [{lo:g}, {hi:g}]")
        for key in GALAXY_KEYS:  # a scalar or a [low, high] range (lists from TOML / JSON become tuples)
            object.__setattr__(self, key, parse_setting(key, getattr(self, key)))
        if self.log10_mmax <= self.log10_mmin:
            raise bad("log10_mmax", f"must exceed log10_mmin = {self.log10_mmin!r}")
        if self.min_log10_mstar is not None and not (
            _is_number(self.min_log10_mstar) and 0.0 <= self.min_log10_mstar <= 13.0
        ):
            raise bad("min_log10_mstar", "must be None or a number in [0, 13] (log10 Msun)")
        if self.cells_per_side is not None and not (
            isinstance(self.cells_per_side, int | np.integer)
            and not isinstance(self.cells_per_side, bool)
            and 1 <= self.cells_per_side <= 1024
        ):
            raise bad("cells_per_side", "must be None or an integer in [1, 1024]")
        if not isinstance(self.clustering, bool):
            raise bad("clustering", "must be true or false")
        if not isinstance(self.name, str):
            raise bad("name", "must be a string")
        # normalise numbers (ints given for floats, numpy scalars) so equal configs compare and hash equal
        for key in (*ranges, "box_size", "scale_factor"):
            object.__setattr__(self, key, float(getattr(self, key)))
        object.__setattr__(self, "seed", int(self.seed))
        if self.min_log10_mstar is not None:
            object.__setattr__(self, "min_log10_mstar", float(self.min_log10_mstar))
        if self.cells_per_side is not None:
            object.__setattr__(self, "cells_per_side", int(self.cells_per_side))

    @property
    def redshift(self) -> float:
        return 1.0 / self.scale_factor - 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description (cosmology, HOD and SMHM as tables); :meth:`from_dict` inverts it."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["cosmology"] = self.cosmology.to_dict()
        out["hod"] = None if self.hod is None else self.hod.to_dict()
        out["smhm"] = asdict(self.smhm)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "synth") -> SynthConfig:
        """Build from a mapping of field names; ``cosmology`` may be a preset name or a table, ``hod`` a preset
        name (``"zheng07_mr20"``, ``"zheng07_mr21"``) or a table, ``smhm`` a table of Moster13 parameters."""
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        if "box_size" not in data:
            raise ConfigError(f"{where}: box_size (comoving Mpc/h) is required")
        cosmo = data.get("cosmology")
        if isinstance(cosmo, str):
            data["cosmology"] = named_cosmology(cosmo)
        elif isinstance(cosmo, Mapping):
            data["cosmology"] = Cosmology.from_dict(cosmo, where=f"{where}.cosmology")
        hod = data.get("hod")
        if isinstance(hod, str):
            if hod.lower() not in HOD_PRESETS:
                raise ConfigError(f"{where}: unknown HOD '{hod}'; known: {sorted(HOD_PRESETS)}")
            data["hod"] = HOD_PRESETS[hod.lower()]
        elif isinstance(hod, Mapping):
            data["hod"] = _build(Zheng07HOD, hod, f"{where}.hod")
        if isinstance(data.get("smhm"), Mapping):
            data["smhm"] = _build(Moster13, data["smhm"], f"{where}.smhm")
        return cls(**data)

    @property
    def snapshot(self) -> Snapshot:
        """The :class:`~pipeline.snapshot.Snapshot` (box size, scale factor, cosmology) of this box."""
        return Snapshot(box_size=float(self.box_size), scale_factor=float(self.scale_factor),
                        cosmology=self.cosmology, name=self.name)


class Cell(NamedTuple):
    """One generated cell: canonical halo and galaxy columns (:data:`ingest.schema.HALOS` / ``GALAXIES``), and the
    per-host galaxy physics of its distinct haloes with subhaloes (:data:`.galaxy_physics.HOST_PHYSICS`)."""

    index: int
    halos: dict[str, np.ndarray]
    galaxies: dict[str, np.ndarray]
    hosts: dict[str, np.ndarray]


class Catalogs(NamedTuple):
    """A whole box: canonical halo and galaxy columns."""

    halos: dict[str, np.ndarray]
    galaxies: dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class SynthTables:
    """Tables built once per configuration and shared by every cell (read-only, safe across threads)."""

    mass_function: MassFunctionTable
    conversion: MassConversion
    cells_per_side: int
    clustering: ClusteringTables | None = None


@lru_cache(maxsize=16)
def _mass_function(cosmology: Cosmology, redshift: float, lo: float, hi: float) -> MassFunctionTable:
    return MassFunctionTable.build(cosmology, redshift, lo, hi)


@lru_cache(maxsize=16)
def _clustering(cosmology: Cosmology, redshift: float) -> ClusteringTables:
    return ClusteringTables.build(cosmology, redshift)


@lru_cache(maxsize=16)
def _conversion(cosmology: Cosmology, redshift: float) -> MassConversion:
    return MassConversion.build(cosmology, redshift, ("vir", "200b", "500c"))


def build_tables(config: SynthConfig) -> SynthTables:
    """The mass-function and NFW-conversion tables of ``config`` and its number of cells per side."""
    mf = _mass_function(config.cosmology, config.redshift, float(config.log10_mmin), float(config.log10_mmax))
    if config.cells_per_side is not None:
        n_side = int(config.cells_per_side)
    else:
        expected = mf.n_total * float(config.box_size) ** 3
        n_side = max(1, math.ceil((expected / TARGET_HALOS_PER_CELL) ** (1.0 / 3.0) - 1e-9))
    clustering = _clustering(config.cosmology, config.redshift) if config.clustering else None
    return SynthTables(mf, _conversion(config.cosmology, config.redshift), n_side, clustering)


def cell_count(config: SynthConfig) -> int:
    """Number of cells the box is generated in (``cells_per_side**3``)."""
    return build_tables(config).cells_per_side ** 3


def cell_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of cell ``index``: ``SeedSequence(seed, spawn_key=(index,))``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def physics_rng(seed: int, index: int) -> np.random.Generator:
    """The per-host galaxy-physics stream of cell ``index``: ``SeedSequence(seed, spawn_key=(index, 1))``."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), PHYSICS_STREAM)))


def _columns(schema: Schema, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [c for c in schema.names if c not in values]
    extra = [c for c in values if c not in schema.names]
    if missing or extra:  # a programming error, not a user error
        raise AssertionError(f"{schema.name} columns: missing {missing}, unexpected {extra}")
    return {c: np.ascontiguousarray(values[c], dtype=schema[c].numpy_dtype) for c in schema.names}


def subhalo_min_mass(config: SynthConfig) -> float:
    """Lightest subhalo peak M200c (Msun/h) drawn: 10^log10_msub_min, raised to where the median galaxy is 4 sigma
    (intrinsic scatter, the largest a host may draw, and measurement scatter) below ``min_log10_mstar``, so no galaxy
    that could pass the cut is missed."""
    floor = 10.0**config.log10_msub_min
    if config.min_log10_mstar is None:
        return floor
    sigma = math.hypot(bounds(config.smhm_scatter_dex)[1], config.obs_sm_scatter_dex)  # the widest host's
    grid = np.logspace(8.0, 16.0, 801)
    logms = np.log10(config.smhm.mean_stellar_mass(grid, config.cosmology.h, config.redshift))
    reach = float(np.interp(config.min_log10_mstar - 4.0 * sigma, logms, np.log10(grid)))
    return max(floor, 10.0**reach)


class _Distinct(NamedTuple):
    """The distinct haloes of one cell (arrays of length n; masses Msun/h, lengths comoving Mpc/h, km/s)."""

    m200c: np.ndarray
    pos: np.ndarray  # (n, 3), not yet wrapped into the box
    vel: np.ndarray  # (n, 3) bulk velocities
    conc: np.ndarray  # c200c
    sigma: np.ndarray  # 1-D dark-matter dispersion (with scatter and merger boost)
    boost: np.ndarray  # the merger boost drawn per host, dex
    r200c: np.ndarray
    mvir: np.ndarray
    mpeak: np.ndarray
    vmax: np.ndarray
    phys: dict[str, np.ndarray]  # the per-host galaxy-halo connection (galaxy_physics)

    @property
    def n(self) -> int:
        return len(self.m200c)


class _Satellites(NamedTuple):
    """The subhaloes of one cell, one satellite galaxy each (arrays of length ns, units as :class:`_Distinct`)."""

    host: np.ndarray  # index of the host in the cell's distinct haloes
    m200c_peak: np.ndarray
    dist: np.ndarray  # distance to the host's centre
    pos: np.ndarray  # (ns, 3), not yet wrapped
    vel: np.ndarray  # (ns, 3)
    conc: np.ndarray  # c200c of the peak profile
    kept: np.ndarray  # the retained fraction of the peak mass after stripping
    mpeak: np.ndarray
    mvir: np.ndarray
    m200c: np.ndarray
    vmp: np.ndarray  # vmax at peak
    vmax: np.ndarray

    @property
    def n(self) -> int:
        return len(self.host)


def _cell_origin(index: int, n_side: int, side: float) -> np.ndarray:
    """The lower corner of cell ``index``, comoving Mpc/h."""
    return np.array(np.unravel_index(index, (n_side, n_side, n_side)), dtype=np.float64) * side


def _distinct_haloes(
    config: SynthConfig, tables: SynthTables, index: int, rng: np.random.Generator, origin: np.ndarray, side: float
) -> _Distinct:
    """Draw the cell's distinct haloes: masses, positions, velocities, concentrations, dispersions, their per-host
    galaxy physics (from the cell's physics stream), the infall relocation, and the other mass definitions."""
    cosmo, z, conv = config.cosmology, config.redshift, tables.conversion
    m200c = tables.mass_function.sample(rng, side**3)
    n = len(m200c)
    if tables.clustering is None:
        pos = origin + side * rng.random((n, 3))
    else:
        field = gaussian_field(rng, tables.clustering, side)
        pos = origin + place(rng, tables.clustering.halo_bias(m200c), field, side)
    vel = sample_bulk_velocities(rng, n, config.bulk_velocity_sigma)
    conc = sample_concentration(rng, m200c, z, config.concentration_scatter_dex)
    # the galaxy-halo connection of each distinct halo, from the cell's physics stream (galaxy_physics)
    phys = draw_host_physics(physics_rng(config.seed, index), n, {k: getattr(config, k) for k in STREAM_KEYS})
    sigma, boost = sample_host_dispersion(
        rng, m200c, cosmo, z, ln_scatter=config.sigma_ln_scatter, merger_fraction=phys["merger_fraction"],
        merger_boost_dex=config.merger_boost_dex,
    )
    r200c = radius_from_mass(m200c, 200.0, cosmo, z)
    v200 = circular_velocity(m200c, r200c, z)
    pos, vel, _ = relocate_into_infall(rng, m200c, r200c, v200, pos, vel, config.infall_fraction)
    mvir = conv.mass(m200c, conc, "vir")
    mpeak = mvir * 10.0 ** rng.exponential(MPEAK_EXCESS_DEX, n)
    vmax = VMAX_FACTOR * v200 * np.sqrt(conc / nfw_mu(conc))
    return _Distinct(m200c, pos, vel, conc, sigma, boost, r200c, mvir, mpeak, vmax, phys)


def _satellites(
    config: SynthConfig, tables: SynthTables, index: int, rng: np.random.Generator, d: _Distinct
) -> _Satellites:
    """Draw the subhaloes of the distinct haloes ``d``: their number and peak masses (subhalo function or HOD),
    NFW radii inside the host's Rvir, velocities, concentrations and stripping."""
    cosmo, z, conv = config.cosmology, config.redshift, tables.conversion
    if config.hod is None:
        host, m200c_peak = sample_subhalos(rng, d.m200c, subhalo_min_mass(config), config.subhalo_norm,
                                           d.phys["satellite_abundance"])
    else:
        host = np.repeat(np.arange(d.n), rng.poisson(config.hod.mean_nsat(d.m200c) * d.phys["satellite_abundance"]))
        m200c_peak = sample_peak_masses(
            rng, d.m200c[host], 10.0**config.log10_msub_min, config.subhalo_slope, config.subhalo_max_fraction
        )
    ns = len(host)
    if d.n + ns >= ID_STRIDE:
        raise ConfigError(f"synth: cell {index} holds {d.n + ns} haloes, more than ids allow; use more cells")
    rvir = radius_from_mass(d.mvir, conv.deltas["vir"], cosmo, z)
    c_vir = d.conc * rvir / d.r200c  # the NFW profile continued to Rvir: r_s = R200c / c200c = Rvir / c_vir
    # satellites trace an NFW profile of concentration c_sat = ratio x c_DM (scale radius r_s / ratio)
    dist = sample_radius(rng, c_vir[host] * d.phys["satellite_concentration"][host]) * rvir[host]
    x_sat = dist / d.r200c[host]
    pos = d.pos[host] + dist[:, None] * isotropic_unit_vectors(rng, ns)
    vel = sample_satellite_velocities(rng, d.vel[host], d.sigma[host], d.phys["velocity_bias"][host])
    conc = sample_concentration(rng, m200c_peak, z, config.concentration_scatter_dex)
    kept = sample_stripping(rng, x_sat)
    mpeak = conv.mass(m200c_peak, conc, "vir")
    vmp = vmax_nfw(m200c_peak, conc, cosmo, z)
    return _Satellites(host, m200c_peak, dist, pos, vel, conc, kept, mpeak, kept * mpeak, kept * m200c_peak, vmp,
                       stripped_vmax(vmp, kept))


def _halo_ids(index: int, d: _Distinct, s: _Satellites) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the distinct haloes then subhaloes (``index * ID_STRIDE + 1, 2, ...``) and the ``upid`` of each
    (-1 for distinct haloes, the host's id for subhaloes)."""
    base = index * ID_STRIDE + 1
    halo_id = base + np.arange(d.n + s.n, dtype=np.int64)
    upid = np.concatenate((np.full(d.n, -1, dtype=np.int64), halo_id[s.host]))
    return halo_id, upid


def _halo_columns(
    config: SynthConfig, tables: SynthTables, d: _Distinct, s: _Satellites, halo_id: np.ndarray, upid: np.ndarray
) -> dict[str, np.ndarray]:
    """The :data:`ingest.schema.HALOS` columns of the distinct haloes then subhaloes (positions wrapped)."""
    cosmo, z, conv = config.cosmology, config.redshift, tables.conversion
    n_all = d.n + s.n
    all_conc = np.concatenate((d.conc, s.conc))
    all_mvir = np.concatenate((d.mvir, s.mvir))
    all_pos = wrap_positions(np.concatenate((d.pos, s.pos)), config.box_size)
    all_vel = np.concatenate((d.vel, s.vel))
    return _columns(
        HALOS,
        {
            "halo_id": halo_id,
            "pid": upid,
            "upid": upid,
            "desc_id": np.full(n_all, -1, dtype=np.int64),
            "scale": np.full(n_all, config.scale_factor),
            "mvir": all_mvir,
            "m200c": np.concatenate((d.m200c, s.m200c)),
            # subhaloes: the NFW ratios of their peak profile, scaled by the retained fraction
            "m200b": np.concatenate(
                (conv.mass(d.m200c, d.conc, "200b"), s.kept * conv.mass(s.m200c_peak, s.conc, "200b"))
            ),
            "m500c": np.concatenate(
                (conv.mass(d.m200c, d.conc, "500c"), s.kept * conv.mass(s.m200c_peak, s.conc, "500c"))
            ),
            "mpeak": np.concatenate((d.mpeak, s.mpeak)),
            "rvir": radius_from_mass(all_mvir, conv.deltas["vir"], cosmo, z),
            # r_s of the (peak) NFW profile: R200c / c200c, comoving Mpc/h
            "rs": np.concatenate((d.r200c, radius_from_mass(s.m200c_peak, 200.0, cosmo, z))) / all_conc,
            "vmax": np.concatenate((d.vmax, s.vmax)),
            "vrms": np.sqrt(3.0) * np.concatenate((d.sigma, evrard08_sigma_dm(s.m200c, cosmo, z))),
            "x": all_pos[:, 0],
            "y": all_pos[:, 1],
            "z": all_pos[:, 2],
            "vx": all_vel[:, 0],
            "vy": all_vel[:, 1],
            "vz": all_vel[:, 2],
        },
    )


def _galaxy_columns(
    config: SynthConfig, rng: np.random.Generator, d: _Distinct, s: _Satellites, halos: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Draw one galaxy per halo (centrals, then satellites), keep those above the stellar-mass cut, and return their
    :data:`ingest.schema.GALAXIES` columns (positions, velocities and halo properties from ``halos``)."""
    cosmo, z, n = config.cosmology, config.redshift, d.n
    sm = np.concatenate((
        sample_stellar_mass(rng, d.m200c, cosmo.h, z, d.phys["smhm_scatter_dex"], config.smhm),
        sample_stellar_mass(rng, s.m200c_peak, cosmo.h, z, d.phys["smhm_scatter_dex"][s.host], config.smhm),
    ))
    obs_sm = observe_stellar_mass(rng, sm, config.obs_sm_scatter_dex)
    if config.min_log10_mstar is None:
        keep = np.arange(n + s.n)
    else:
        keep = np.flatnonzero(obs_sm >= 10.0**config.min_log10_mstar)
    is_sat = keep >= n
    host_m200c = np.concatenate((d.m200c, d.m200c[s.host]))[keep]
    vmp = np.concatenate((d.vmax * (d.mpeak / d.mvir) ** (1.0 / 3.0), s.vmp))[keep]
    sm, obs_sm = sm[keep], obs_sm[keep]
    sf, quenched = sample_star_formation_state(rng, sm, is_sat, host_m200c, cosmo, z)
    # drawn after everything else, so adding photometry changed nothing else in the box
    phot = sample_photometry(rng, sm, quenched)
    return _columns(
        GALAXIES,
        {
            "galaxy_id": halos["halo_id"][keep],
            "desc_id": np.full(len(keep), -1, dtype=np.int64),
            "upid": halos["upid"][keep],
            "flags": np.zeros(len(keep), dtype=np.int32),
            "uparent_dist": np.concatenate((np.zeros(n), s.dist))[keep],
            "x": halos["x"][keep],
            "y": halos["y"][keep],
            "z": halos["z"][keep],
            "vx": halos["vx"][keep],
            "vy": halos["vy"][keep],
            "vz": halos["vz"][keep],
            "vmp": vmp,
            "lvmp": np.log10(vmp),
            "mp": halos["mpeak"][keep],
            "m": halos["mvir"][keep],
            "v": halos["vmax"][keep],
            "r": halos["rvir"][keep],
            "sm": sm,
            "icl": intracluster_light(sm, host_m200c, ~is_sat),
            "obs_sm": obs_sm,
            **sf,
            **phot,
        },
    )


def _host_columns(d: _Distinct, s: _Satellites, halo_id: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`.galaxy_physics.HOST_PHYSICS` record of the distinct haloes with at least one subhalo."""
    n_sub = np.bincount(s.host, minlength=d.n)
    hosting = np.flatnonzero(n_sub > 0)
    return _columns(
        HOST_PHYSICS,
        {"halo_id": halo_id[hosting], "m200c": d.m200c[hosting], "n_subhalos": n_sub[hosting],
         **{k: v[hosting] for k, v in d.phys.items()}, "merger_boost_dex": d.boost[hosting]},
    )


def generate_cell(config: SynthConfig, index: int, tables: SynthTables | None = None) -> Cell:
    """Generate cell ``index`` (0 <= index < :func:`cell_count`) of the box; pure function of (config, index).

    The steps draw from the cell's stream in a fixed order (distinct haloes, satellites, galaxies), which is what
    makes a cell reproducible: a new draw goes after the existing ones.
    """
    tables = build_tables(config) if tables is None else tables
    n_side = tables.cells_per_side
    if not (isinstance(index, int | np.integer) and 0 <= index < n_side**3):
        raise ConfigError(f"synth: cell index {index!r} outside [0, {n_side**3})")
    index = int(index)
    rng = cell_rng(config.seed, index)
    side = float(config.box_size) / n_side
    distinct = _distinct_haloes(config, tables, index, rng, _cell_origin(index, n_side, side), side)
    satellites = _satellites(config, tables, index, rng, distinct)
    halo_id, upid = _halo_ids(index, distinct, satellites)
    halos = _halo_columns(config, tables, distinct, satellites, halo_id, upid)
    galaxies = _galaxy_columns(config, rng, distinct, satellites, halos)
    return Cell(index, halos, galaxies, _host_columns(distinct, satellites, halo_id))


def generate_cells(config: SynthConfig, indices: Iterable[int] | None = None) -> Iterator[Cell]:
    """Yield the cells of the box (all, in index order, unless ``indices`` is given), one at a time.

    The tables are built once; each cell depends only on (config, index).
    """
    tables = build_tables(config)
    for index in range(tables.cells_per_side**3) if indices is None else indices:
        yield generate_cell(config, index, tables)


def _concat(parts: list[dict[str, np.ndarray]], schema: Schema) -> dict[str, np.ndarray]:
    return {c: np.concatenate([p[c] for p in parts]) if parts else np.empty(0, schema[c].numpy_dtype)
            for c in schema.names}


def generate_box_with_hosts(config: SynthConfig) -> tuple[Catalogs, dict[str, np.ndarray]]:
    """The whole box in memory, and its per-host galaxy physics (:data:`.galaxy_physics.HOST_PHYSICS`; every cell
    concatenated in index order): for tests and small boxes."""
    cells = list(generate_cells(config))
    catalogs = Catalogs(_concat([c.halos for c in cells], HALOS), _concat([c.galaxies for c in cells], GALAXIES))
    return catalogs, _concat([c.hosts for c in cells], HOST_PHYSICS)


def generate_box(config: SynthConfig) -> Catalogs:
    """The whole box in memory (every cell concatenated in index order): for tests and small boxes."""
    return generate_box_with_hosts(config)[0]

"""What we do not know about galaxies: the galaxy-halo connection drawn per host from published ranges.

One galaxy-halo connection for the whole box would train a posterior that ignores our ignorance of galaxy physics
(and is over-confident on real clusters). So every distinct halo of the synthetic box draws its own connection
parameters, independently and uniformly within :data:`GALAXY_PHYSICS` (the one home of the ranges and their
sources), unless the configuration fixes a parameter to a scalar:

============================  =================================================================  ============
key                           what it does, per host                                             default
============================  =================================================================  ============
``satellite_abundance``       multiplier on the mean number of satellites (the subhalo function  0.7 - 1.3
                              normalisation ``subhalo_norm``, or a HOD's <N_sat>)
``velocity_bias``             b_v = satellite / dark-matter 1-D velocity dispersion              0.9 - 1.1
``satellite_concentration``   c_sat / c_DM: the satellites' NFW scale radius is r_s / this        0.5 - 1.5
``smhm_scatter_dex``          lognormal scatter of M* at fixed (peak) halo mass, dex (central    0.10 - 0.20
                              and satellites of the host)
``merger_fraction``           probability that the host is a "merger" with a boosted dispersion  0.05 - 0.15
``merger_boost_dex``          log10 boost of a merger host's dark-matter dispersion              0.0 - 0.05
============================  =================================================================  ============

Each range is centred on the single value the box used before (1, 1, 1, 0.15 dex, 0.1 and the 0 - 0.05 dex boost),
so the box's realism statistics (REFERENCE section 8: satellites per host, satellite fraction, SMF, sigma_15) stay
where they were calibrated. A scalar (``velocity_bias = 0.93``) fixes the parameter for every host: how a
fixed-physics box or a "shifted universe" is made. A range with equal ends is the scalar.

Draws (see :func:`draw_host_physics`): the first five keys come from a per-cell random stream of their own
(:func:`ingest.synth.box.physics_rng`), one uniform variate per key and distinct halo whether the key is a range or
a scalar, so that changing one key's range changes nothing else in the box, and a box whose keys are all fixed at
the old values is the old box. ``merger_boost_dex`` is drawn from the cell's main stream, where the boost was always
drawn (one variate per halo, as before). Note that per-host independent draws of a *probability*
(``merger_fraction``) give the same population as its mean: the range is recorded per host, but only a scalar
(e.g. ``merger_fraction = 0.2``) shifts the merger tail. The drawn values of the hosts with satellites are written
beside the catalogs (:data:`HOST_PHYSICS`, ``host_physics.h5``); they are never a catalog column, so they never
become a feature of the mock observations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ingest.schema import Column, Schema
from pipeline.errors import ConfigError

#: a parameter's setting: a scalar (every host) or a range [low, high] (uniform per host)
ScalarOrRange = float | tuple[float, float]


@dataclass(frozen=True)
class GalaxyPhysicsRanges:
    """Published uncertainty ranges (low, high) of the per-host galaxy-halo connection; the box's defaults.

    Attributes
    ----------
    satellite_abundance : (0.7, 1.3), a multiplier (no unit) on the satellite abundance normalisation (the
        Jiang & van den Bosch 2016 subhalo function's gamma, :data:`.subhalos.SUBHALO_NORM`, or a HOD's <N_sat>).
        Sources: subhalo mass functions of different simulations and subhalo finders agree only "at the level of
        ~20 per cent" (van den Bosch & Jiang 2016, MNRAS 458, 2870, arXiv:1403.6835); the host-to-host variance of
        subhalo numbers is super-Poissonian for large <N> and set by the host's formation time (Jiang & van den
        Bosch 2017, MNRAS 472, 657, arXiv:1610.02399; the JvdB16 normalisation gamma = 0.286 f_s^0.7 depends on the
        host's dynamical age); a central galaxy's potential destroys subhaloes: dark-matter-only runs hold ~2x as many
        subhaloes within 100 kpc of Milky-Way-mass hosts as baryonic ones (Garrison-Kimmel et al. 2017, MNRAS 471,
        1709, arXiv:1701.03792; the inner region only). +-30% spans the first and is a fraction of the last.
    velocity_bias : (0.9, 1.1), b_v = sigma_sat / sigma_DM (no unit). Sources: no bias for stellar-mass-selected
        galaxies, ~+10% for galaxies selected by total (subhalo) mass (Lau, Nagai & Kravtsov 2010, ApJ 708, 1419,
        arXiv:0908.2133); 1.065 +- 0.005 (stat) +- 0.027 (sys) for the 100 brightest galaxies within Rvir,
        0.868 +- 0.039 +- 0.035 for the 5 brightest (Wu et al. 2013, MNRAS 436, 460, arXiv:1307.0011); luminous
        satellites 0.86 (+0.08, -0.03) (Guo et al. 2015, MNRAS 446, 578, arXiv:1407.4811, BOSS CMASS small-scale
        clustering); stellar-mass selection biased by < 5% (Armitage et al. 2018, MNRAS 474, 3746,
        arXiv:1708.00508, Cluster-EAGLE); a per-cent-level bias of either sign for galaxies and subhaloes,
        depending on mass, redshift and baryonic physics (Munari et al. 2013, MNRAS 430, 2638, arXiv:1301.1682).
        The issue's shifted universes (0.93, 1.07) lie inside.
    satellite_concentration : (0.5, 1.5), c_sat / c_DM (no unit): the satellites' NFW concentration relative to
        the host's dark matter (the satellites' r_s is the host's r_s divided by it). Sources: the stacked satellite
        profiles of 55 121 SDSS groups and clusters have <c> ~ 2.6, "approximately a factor of two lower than that of
        the dark matter" (Budzynski et al. 2012, MNRAS 423, 104, arXiv:1201.5491); c ~ 3 for K-band galaxies of 93
        clusters (Lin, Mohr & Stanford 2004, ApJ 610, 745, arXiv:astro-ph/0402308); the satellites' stellar mass
        in 60 clusters at 0.04 < z < 0.26 has c = 2.03 +- 0.20 over 0.1-2 R200 (van der Burg et al. 2015, A&A 577,
        A19, arXiv:1412.2137). Against Duffy et al. (2008)'s c200c ~ 3.5-4 at 1e14-1e15 Msun/h these are ratios of
        ~0.5-0.8, the low half of the range. No published ratio above 1 was verified: the high half keeps the range
        centred on 1, the value the box's richness within R200c is calibrated with (UniverseMachine counts).
    smhm_scatter_dex : (0.10, 0.20), intrinsic lognormal scatter of M* at fixed halo mass, dex. Sources: "less
        than 0.2 dex at a given halo mass above [the 1e12 Msun] pivot" (Wechsler & Tinker 2018, ARA&A 56, 435);
        0.18 +- 0.01 dex at 1e14 Msun/h, declining from 0.22 below 1e12 (Zu & Mandelbaum 2015, MNRAS 454, 1161,
        arXiv:1505.02781); ~0.16 dex for the most massive BOSS galaxies (Tinker et al. 2017, ApJ 839, 121,
        arXiv:1607.04678); Moster, Naab & White (2013, MNRAS 428, 3121) assume 0.15 dex. Published scatters in
        *observed* stellar mass include measurement errors, which the box adds separately (``obs_sm_scatter_dex``,
        0.1 dex): a total of 0.15 dex is an intrinsic sqrt(0.15^2 - 0.1^2) = 0.11 dex, hence the low end.
    merger_fraction : (0.05, 0.15), probability (no unit) that a host's dark-matter dispersion carries the merger
        boost. A project assumption around the box's 0.1 (:mod:`.velocity`), not a published number: Evrard et
        al. (2008)'s 4% scatter in ln sigma already includes disturbed haloes.
    merger_boost_dex : (0.0, 0.05), log10 of a merger host's boost of its dispersion (at most +12%), dex; the box's
        assumption of :mod:`.velocity` (unchanged), no published source.
    """

    satellite_abundance: tuple[float, float] = (0.7, 1.3)
    velocity_bias: tuple[float, float] = (0.9, 1.1)
    satellite_concentration: tuple[float, float] = (0.5, 1.5)
    smhm_scatter_dex: tuple[float, float] = (0.10, 0.20)
    merger_fraction: tuple[float, float] = (0.05, 0.15)
    merger_boost_dex: tuple[float, float] = (0.0, 0.05)


#: The box's default: every key marginalised over its published range.
GALAXY_PHYSICS = GalaxyPhysicsRanges()

#: Every per-host key, in :class:`GalaxyPhysicsRanges` order.
KEYS: tuple[str, ...] = tuple(f.name for f in fields(GalaxyPhysicsRanges))
#: The keys drawn from the per-cell physics stream, in the order of the columns of its uniform variates.
STREAM_KEYS: tuple[str, ...] = KEYS[:5]

#: Values a key may take at all (checked on scalars and on both ends of a range).
LIMITS: dict[str, tuple[float, float]] = {
    "satellite_abundance": (0.0, 10.0),
    "velocity_bias": (0.1, 3.0),
    "satellite_concentration": (0.05, 20.0),
    "smhm_scatter_dex": (0.0, 1.0),
    "merger_fraction": (0.0, 1.0),
    "merger_boost_dex": (0.0, 0.5),
}

#: The per-host record written beside the catalogs (``host_physics.h5``): one row per distinct halo with at
#: least one subhalo (satellite), in the order of the halo catalog.
HOST_PHYSICS = Schema(
    "host",
    (
        Column("halo_id", "i8", "", "id of the distinct halo (the halo catalog's halo_id)", True, (), "id"),
        Column("m200c", "f4", "Msun/h", "mass inside 200 x critical density", True, (), "mass"),
        Column("n_subhalos", "i4", "", "subhaloes (satellites, any stellar mass) drawn for the host", True, (),
               "int"),
        Column("satellite_abundance", "f4", "", "multiplier on the mean number of satellites", True),
        Column("velocity_bias", "f4", "", "satellite / dark-matter 1-D velocity dispersion", True),
        Column("satellite_concentration", "f4", "", "satellites' NFW concentration / the dark matter's", True),
        Column("smhm_scatter_dex", "f4", "dex", "lognormal scatter of M* at fixed halo mass", True),
        Column("merger_fraction", "f4", "", "probability of a merger boost drawn for the host", True),
        Column("merger_boost_dex", "f4", "dex", "log10 boost of the host's dispersion (0: no merger)", True),
    ),
    id_column="halo_id",
)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def parse_setting(key: str, value: Any) -> ScalarOrRange:
    """``value`` of per-host key ``key`` checked and normalised: a float, or a (low, high) tuple of floats with
    low < high (a range with equal ends becomes the scalar). Raises a one-line ConfigError naming the key."""
    lo, hi = LIMITS[key]
    why = f"must be a number in [{lo:g}, {hi:g}] or a range [low, high] of such numbers with low <= high"
    if _is_number(value):
        if not lo <= float(value) <= hi:
            raise ConfigError(f"synth: {key} = {value!r} {why}")
        return float(value)
    if isinstance(value, list | tuple) and len(value) == 2 and all(_is_number(v) for v in value):
        low, high = float(value[0]), float(value[1])
        if not (lo <= low <= high <= hi):
            raise ConfigError(f"synth: {key} = {list(value)!r} {why}")
        return low if low == high else (low, high)
    shown = list(value) if isinstance(value, list | tuple) else value  # as TOML / JSON write it
    raise ConfigError(f"synth: {key} = {shown!r} {why}")


def bounds(setting: ScalarOrRange) -> tuple[float, float]:
    """(low, high) of a setting (a scalar is (value, value))."""
    if isinstance(setting, tuple):
        return float(setting[0]), float(setting[1])
    return float(setting), float(setting)


def mean(setting: ScalarOrRange) -> float:
    """The mean over hosts of a setting: the scalar, or the middle of the range."""
    low, high = bounds(setting)
    return 0.5 * (low + high)


def rms(setting: ScalarOrRange) -> float:
    """sqrt(E[x^2]) over hosts of a setting drawn uniformly: sqrt((low^2 + low high + high^2) / 3)."""
    low, high = bounds(setting)
    return math.sqrt((low * low + low * high + high * high) / 3.0)


def draw_host_physics(rng: np.random.Generator, n: int, settings: Mapping[str, ScalarOrRange]
                      ) -> dict[str, np.ndarray]:
    """Per-host values of :data:`STREAM_KEYS` for ``n`` hosts: ``low + (high - low) u``, u ~ U(0, 1).

    ``rng`` is the cell's physics stream; one (n, 5) block of variates is drawn whatever the settings (a scalar
    uses none of its column), so each key's values depend only on its own setting. Units as the keys'.
    """
    u = rng.random((n, len(STREAM_KEYS)))
    out = {}
    for j, key in enumerate(STREAM_KEYS):
        low, high = bounds(settings[key])
        out[key] = np.full(n, low) if low == high else low + (high - low) * u[:, j]
    return out


def sample_merger_boost(rng: np.random.Generator, merger_fraction: np.ndarray | float,
                        boost_dex: ScalarOrRange) -> np.ndarray:
    """Per-host log10 boost (dex) of the dark-matter dispersion: U(boost_dex) for a fraction ``merger_fraction``
    (per host, or one value) of the hosts, 0 for the others.

    ``merger_fraction`` has one entry per host (its length is the number of hosts). Two variates per host are drawn
    from ``rng`` (merger or not, then the boost) whatever the parameters, in the order the box always drew them.
    """
    p = np.asarray(merger_fraction, dtype=np.float64)
    is_merger = rng.random(p.shape) < p
    low, high = bounds(boost_dex)
    boost = rng.uniform(low, high, p.shape)
    return np.where(is_merger, boost, 0.0)

"""The ingest stage's configuration sections: ``[input]`` (real catalogs) and ``[synth]`` (the synthetic box).

Defaults of ``[synth]`` come from :class:`ingest.synth.box.SynthConfig` (the box physics) and
:func:`ingest.synth.synthesize.synthesize` (formats); the box size of the default run is this section's own fact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.source import FORMATS
from ingest.synth.box import SynthConfig
from ingest.synth.galaxy_physics import KEYS as GALAXY_KEYS
from ingest.synth.synthesize import DEFAULT_FORMAT, OUTPUT_FORMATS
from pipeline.config import check_choice, check_number, default
from pipeline.errors import ConfigError

#: the synthetic physics (Tinker+08 mass function, Moster+13, Evrard+08) is used within its calibrated range
MAX_REDSHIFT = 0.5
#: the embedded default run's box side, comoving Mpc/h: large enough for calibrated coverage (README, Science)
DEFAULT_BOX_SIZE = 800.0
#: the largest synthetic box, comoving Mpc/h: beyond every N-body box cluster catalogs are built from (MDPL2 1000,
#: Uchuu 2000, Flagship 3600); a larger one would take days and terabytes, not give an error
MAX_BOX_SIZE = 4000.0
#: most worker processes a section may ask for (a typo such as 2000000 would otherwise fork without end)
MAX_WORKERS = 256
#: the format names [input] accepts: ingest.source.FORMATS and the aliases ingest.source.detect_format reads
INPUT_FORMATS = (*FORMATS, "ascii", "binary", "bin", "h5")
#: how SynthConfig and the galaxy physics word a bad value: "synth: <key> = <value> must be <expected>"
_SYNTH_MESSAGE = re.compile(r"^synth: (?P<key>\w+) = (?P<value>.*?) must be (?P<expected>.*)$")


@dataclass(frozen=True)
class InputSection:
    """``[input]``: real halo and galaxy catalogs (paths resolved against the configuration's folder).

    halo_format / galaxy_format : one of :data:`ingest.source.FORMATS`; None detects it from the file
    (:func:`ingest.source.detect_format`).
    """

    halos: Path
    galaxies: Path
    halo_format: str | None = None
    galaxy_format: str | None = None

    def __post_init__(self) -> None:
        for key in ("halo_format", "galaxy_format"):
            if getattr(self, key) is not None:
                check_choice(key, getattr(self, key), INPUT_FORMATS)


@dataclass(frozen=True)
class SynthSection:
    """``[synth]``: the synthetic MultiDark-style box generated when no ``[input]`` is given.

    box_size : comoving Mpc/h, (0, 4000]; seed : the box's random seed, >= 0; redshift : of the snapshot, 0 to 0.5
    (match it to the clusters you study; MDPL2's z = 0.117 snapshot by default); format : one of ``OUTPUT_FORMATS``;
    log10_mmin : lightest distinct halo, log10 M200c [Msun/h], [8, 15.5]; min_log10_mstar : lightest galaxy written,
    log10 M* [Msun], [0, 13]; workers : processes generating cells (speed only), 1-256.

    The galaxy-halo connection, drawn per host (:mod:`ingest.synth.galaxy_physics`, where the default ranges and
    their published sources live): each key is a number (fixed for every host) or a range ``[low, high]`` (drawn
    uniformly and independently per host; the defaults):

    satellite_abundance : multiplier on the mean number of satellites, [0.7, 1.3];
    velocity_bias : satellite / dark-matter 1-D velocity dispersion b_v, [0.9, 1.1];
    satellite_concentration : satellites' NFW concentration / the dark matter's, [0.5, 1.5];
    smhm_scatter_dex : scatter of M* at fixed halo mass, dex, [0.10, 0.20];
    merger_fraction : probability of a merger boost of the host's dispersion, [0.05, 0.15];
    merger_boost_dex : log10 boost of a merger host's dispersion, dex, [0.0, 0.05].

    E.g. ``velocity_bias = 0.93`` and ``satellite_abundance = 1.3`` give a "shifted universe";
    all six as numbers, a fixed-physics box.
    """

    box_size: float = DEFAULT_BOX_SIZE
    seed: int = default(SynthConfig, "seed")
    redshift: float = round(1.0 / default(SynthConfig, "scale_factor") - 1.0, 4)
    format: str = DEFAULT_FORMAT
    log10_mmin: float = default(SynthConfig, "log10_mmin")
    min_log10_mstar: float = default(SynthConfig, "min_log10_mstar")
    satellite_abundance: float | tuple[float, float] = default(SynthConfig, "satellite_abundance")
    velocity_bias: float | tuple[float, float] = default(SynthConfig, "velocity_bias")
    satellite_concentration: float | tuple[float, float] = default(SynthConfig, "satellite_concentration")
    smhm_scatter_dex: float | tuple[float, float] = default(SynthConfig, "smhm_scatter_dex")
    merger_fraction: float | tuple[float, float] = default(SynthConfig, "merger_fraction")
    merger_boost_dex: float | tuple[float, float] = default(SynthConfig, "merger_boost_dex")
    workers: int = 2

    def __post_init__(self) -> None:
        check_number("box_size", self.box_size, low=0.0, high=MAX_BOX_SIZE, low_open=True, unit="comoving Mpc/h")
        check_number("seed", self.seed, low=0, integer=True)
        check_number("redshift", self.redshift, low=0.0, high=MAX_REDSHIFT)
        check_choice("format", self.format, tuple(OUTPUT_FORMATS))
        check_number("workers", self.workers, low=1, high=MAX_WORKERS, integer=True)
        check_number("min_log10_mstar", self.min_log10_mstar, low=0.0, high=13.0, unit="log10 Msun")
        try:  # the physics' own checks (mass range, stellar-mass floor, galaxy-physics ranges), before anything runs
            config = self.box_config()
        except ConfigError as exc:
            raise _keyed(exc) from None
        for key in GALAXY_KEYS:  # as the box holds them: a float or a (low, high) tuple
            object.__setattr__(self, key, getattr(config, key))

    def box_params(self) -> dict[str, Any]:
        """The :class:`SynthConfig` arguments this section sets (what defines the box's content)."""
        params = {"box_size": self.box_size, "seed": self.seed, "log10_mmin": self.log10_mmin,
                  "min_log10_mstar": self.min_log10_mstar, **{k: getattr(self, k) for k in GALAXY_KEYS}}
        default_a = default(SynthConfig, "scale_factor")
        if abs(self.redshift - (1.0 / default_a - 1.0)) > 5e-5:  # the default snapshot keeps MDPL2's exact a
            params["scale_factor"] = 1.0 / (1.0 + self.redshift)
        return params

    def box_config(self) -> SynthConfig:
        return SynthConfig(**self.box_params())


def _keyed(exc: ConfigError) -> ConfigError:
    """A :class:`SynthConfig` error ("synth: velocity_bias = [1.2, 0.9] must be ...") as this section words errors
    ("velocity_bias: expected ..., got [1.2, 0.9]"), so that ``[synth]`` names the key once."""
    match = _SYNTH_MESSAGE.match(exc.message)
    if match is None:
        return ConfigError(exc.message.removeprefix("synth: "), key=exc.key)
    return ConfigError(f"expected {match['expected']}, got {match['value']}", key=match["key"])

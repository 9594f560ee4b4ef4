"""The ingest stage's configuration sections: ``[input]`` (real catalogs) and ``[synth]`` (the synthetic box).

Defaults of ``[synth]`` come from :class:`ingest.synth.box.SynthConfig` (the box physics) and
:func:`ingest.synth.synthesize.synthesize` (formats); the box size of the default run is this section's own fact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.synth.box import SynthConfig
from ingest.synth.galaxy_physics import KEYS as GALAXY_KEYS
from ingest.synth.synthesize import DEFAULT_FORMAT, OUTPUT_FORMATS
from pipeline.config import default
from pipeline.errors import ConfigError

#: the synthetic physics (Tinker+08 mass function, Moster+13, Evrard+08) is used within its calibrated range
MAX_REDSHIFT = 0.5
#: the embedded default run's box side, comoving Mpc/h: large enough for calibrated coverage (README, Science)
DEFAULT_BOX_SIZE = 800.0


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


@dataclass(frozen=True)
class SynthSection:
    """``[synth]``: the synthetic MultiDark-style box generated when no ``[input]`` is given.

    box_size : comoving Mpc/h; seed : the box's random seed; redshift : of the snapshot, 0 to 0.5 (match it to the
    clusters you study; MDPL2's z = 0.117 snapshot by default); format : one of ``OUTPUT_FORMATS``;
    log10_mmin : lightest distinct halo, log10 M200c [Msun/h]; min_log10_mstar : lightest galaxy written,
    log10 M* [Msun]; workers : processes generating cells (speed only).

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
        if not self.box_size > 0 or self.workers < 1:
            raise ConfigError("box_size must be > 0 Mpc/h and workers >= 1")
        if not 0.0 <= self.redshift <= MAX_REDSHIFT:
            raise ConfigError(f"redshift must be in [0, {MAX_REDSHIFT}], got {self.redshift}")
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"format must be one of {list(OUTPUT_FORMATS)}, got {self.format!r}")
        try:  # the physics' own checks (seed, mass range, ranges), before anything runs
            config = self.box_config()
        except ConfigError as exc:  # "[synth]" already names the section: not "[synth]: synth: seed = ..."
            raise ConfigError(str(exc).removeprefix("synth: ")) from None
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

"""The ingest stage's configuration sections: ``[input]`` (real catalogs) and ``[synth]`` (the synthetic box).

Defaults of ``[synth]`` come from :class:`ingest.synth.box.SynthConfig` (the box physics) and
:func:`ingest.synth.synthesize.synthesize` (formats); the box size of the default run is this section's own fact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.synth.box import SynthConfig
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
    """

    box_size: float = DEFAULT_BOX_SIZE
    seed: int = default(SynthConfig, "seed")
    redshift: float = round(1.0 / default(SynthConfig, "scale_factor") - 1.0, 4)
    format: str = DEFAULT_FORMAT
    log10_mmin: float = default(SynthConfig, "log10_mmin")
    min_log10_mstar: float = default(SynthConfig, "min_log10_mstar")
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.box_size > 0 or self.workers < 1:
            raise ConfigError("box_size must be > 0 Mpc/h and workers >= 1")
        if not 0.0 <= self.redshift <= MAX_REDSHIFT:
            raise ConfigError(f"redshift must be in [0, {MAX_REDSHIFT}], got {self.redshift}")
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"format must be one of {list(OUTPUT_FORMATS)}, got {self.format!r}")
        self.box_config()  # the physics' own checks (seed, mass range), before anything runs

    def box_params(self) -> dict[str, Any]:
        """The :class:`SynthConfig` arguments this section sets (what defines the box's content)."""
        params = {"box_size": self.box_size, "seed": self.seed, "log10_mmin": self.log10_mmin,
                  "min_log10_mstar": self.min_log10_mstar}
        default_a = default(SynthConfig, "scale_factor")
        if abs(self.redshift - (1.0 / default_a - 1.0)) > 5e-5:  # the default snapshot keeps MDPL2's exact a
            params["scale_factor"] = 1.0 / (1.0 + self.redshift)
        return params

    def box_config(self) -> SynthConfig:
        return SynthConfig(**self.box_params())

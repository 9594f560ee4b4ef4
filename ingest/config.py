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

    box_size : comoving Mpc/h; seed : the box's random seed; format : one of ``OUTPUT_FORMATS``;
    log10_mmin : lightest distinct halo, log10 M200c [Msun/h]; min_log10_mstar : lightest galaxy written,
    log10 M* [Msun]; workers : processes generating cells (speed only).
    """

    box_size: float = DEFAULT_BOX_SIZE
    seed: int = default(SynthConfig, "seed")
    format: str = DEFAULT_FORMAT
    log10_mmin: float = default(SynthConfig, "log10_mmin")
    min_log10_mstar: float = default(SynthConfig, "min_log10_mstar")
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.box_size > 0 or self.workers < 1:
            raise ConfigError("box_size must be > 0 Mpc/h and workers >= 1")
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"format must be one of {list(OUTPUT_FORMATS)}, got {self.format!r}")
        self.box_config()  # the physics' own checks (seed, mass range), before anything runs

    def box_params(self) -> dict[str, Any]:
        """The :class:`SynthConfig` arguments this section sets (what defines the box's content)."""
        return {"box_size": self.box_size, "seed": self.seed, "log10_mmin": self.log10_mmin,
                "min_log10_mstar": self.min_log10_mstar}

    def box_config(self) -> SynthConfig:
        return SynthConfig(**self.box_params())

"""The features stage's configuration section ``[observe]``: what a mock observation is and how it is computed.

Every default comes from the specs it configures: :class:`features.cylinder.CylinderSpec` (the cylinder, after
Ho et al. 2019), :class:`features.cylinder.LineOfSightSpec` and :class:`features.cylinder.ObservationConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from features.cylinder import CylinderSpec, LineOfSightSpec, ObservationConfig
from pipeline.config import default
from pipeline.errors import ConfigError

#: keys that change only speed, never a result (left out of digests and cache keys)
SPEED_ONLY = ("workers",)


@dataclass(frozen=True)
class ObserveSection:
    """``[observe]``: the cylinder, the lines of sight and the region decomposition, flat as in the TOML file.

    r_aperture : comoving Mpc/h; v_cut : km/s; min_members : fewest members an observation keeps;
    log10_mstar_min : log10 Msun; r_limit : apparent r-band limit at the snapshot's redshift (absent: none);
    host_log10_m200c_min, extra_log10_m200c_min : log10 Msun/h;
    extra_directions : random lines of sight per host above extra_log10_m200c_min; los_seed : their seed;
    regions_per_side : columns per box side per line of sight; workers : threads running regions (speed only).
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
    regions_per_side: int = default(ObservationConfig, "regions_per_side")
    workers: int = 2

    def __post_init__(self) -> None:
        if self.regions_per_side < 1 or self.workers < 1:
            raise ConfigError(f"regions_per_side and workers must be >= 1, got {self.regions_per_side} and "
                              f"{self.workers}")
        self.observation_config()  # the cylinder's and lines of sight's own checks, before anything runs

    def observation_config(self) -> ObservationConfig:
        """The :class:`ObservationConfig` this section describes."""
        return ObservationConfig(
            cylinder=CylinderSpec(r_aperture=self.r_aperture, v_cut=self.v_cut, min_members=self.min_members,
                                  log10_mstar_min=self.log10_mstar_min,
                                  host_log10_m200c_min=self.host_log10_m200c_min, r_limit=self.r_limit),
            los=LineOfSightSpec(extra_directions=self.extra_directions,
                                extra_log10_m200c_min=self.extra_log10_m200c_min, seed=self.los_seed),
            regions_per_side=self.regions_per_side,
        )

    def science_dict(self) -> dict[str, Any]:
        """Every key that can change a result (the cache key of the features stage)."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items() if k not in SPEED_ONLY}

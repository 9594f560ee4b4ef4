"""Helpers of the flow's ingest and features stages: the ingest summary and the observation configuration.

The flow itself is :mod:`flows.mass_catalog`; its tasks are :mod:`flows.tasks`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from features.cylinder import CylinderSpec, LineOfSightSpec
from features.observe import ObservationConfig
from ingest.catalog import Catalog
from pipeline.config import ObserveSection

HOST_LOG10_M200C_CUT = 13.5  # Msun/h: the hosts mock observations will be made of (REFERENCE.md §3)
GALAXY_LOG10_MSTAR_CUT = 9.5  # Msun


def observation_config(section: ObserveSection) -> ObservationConfig:
    """The features stage's configuration from the [observe] section."""
    return ObservationConfig(
        cylinder=CylinderSpec(
            r_aperture=section.r_aperture, v_cut=section.v_cut, min_members=section.min_members,
            log10_mstar_min=section.log10_mstar_min, host_log10_m200c_min=section.host_log10_m200c_min,
        ),
        los=LineOfSightSpec(extra_directions=section.extra_directions,
                            extra_log10_m200c_min=section.extra_log10_m200c_min, seed=section.los_seed),
        regions_per_side=section.regions_per_side,
    )


def summarise(halos: Catalog, galaxies: Catalog) -> dict[str, Any]:
    """Counts that tell at a glance whether a box is sane (one pass over the needed columns)."""
    import dask

    h = halos.frame[["upid", "m200c"]]
    g = galaxies.frame[["upid", "obs_sm"]]
    distinct = h["upid"] == -1
    logm = np.log10(h["m200c"].where(h["m200c"] > 0, np.nan))
    n_halos, n_distinct, n_hosts, n_gal, n_gal_cut, n_sat_cut = dask.compute(
        h["upid"].size,
        distinct.sum(),
        ((logm >= HOST_LOG10_M200C_CUT) & distinct).sum(),
        g["upid"].size,
        (g["obs_sm"] >= 10**GALAXY_LOG10_MSTAR_CUT).sum(),
        ((g["obs_sm"] >= 10**GALAXY_LOG10_MSTAR_CUT) & (g["upid"] != -1)).sum(),
    )
    snap = halos.snapshot
    return {
        "snapshot": snap.to_dict(),
        "halos": {"file": halos.path, "format": halos.source.format, "rows": int(n_halos),
                  "distinct": int(n_distinct), f"hosts_log10_m200c_ge_{HOST_LOG10_M200C_CUT}": int(n_hosts)},
        "galaxies": {"file": galaxies.path, "format": galaxies.source.format, "rows": int(n_gal),
                     f"log10_mstar_ge_{GALAXY_LOG10_MSTAR_CUT}": int(n_gal_cut),
                     f"satellites_log10_mstar_ge_{GALAXY_LOG10_MSTAR_CUT}": int(n_sat_cut)},
        "number_density_hosts_per_mpc3_h3": float(n_hosts) / snap.box_size**3,
    }

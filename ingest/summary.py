"""The ingest summary: counts that tell at a glance whether a pair of catalogs is sane (``ingest/summary.json``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ingest.catalog import Catalog


def summarise(halos: Catalog, galaxies: Catalog, *, host_log10_m200c_min: float,
              log10_mstar_min: float) -> dict[str, Any]:
    """Rows, distinct halos, hosts (distinct, log10 M200c [Msun/h] >= ``host_log10_m200c_min``), galaxies and
    satellites with log10 M* [Msun] >= ``log10_mstar_min``, and the host number density [h^3 Mpc^-3].

    One pass over the needed columns (dask, out of core).
    """
    import dask

    h = halos.frame[["upid", "m200c"]]
    g = galaxies.frame[["upid", "obs_sm"]]
    distinct = h["upid"] == -1
    logm = np.log10(h["m200c"].where(h["m200c"] > 0, np.nan))
    n_halos, n_distinct, n_hosts, n_gal, n_gal_cut, n_sat_cut = dask.compute(
        h["upid"].size,
        distinct.sum(),
        ((logm >= host_log10_m200c_min) & distinct).sum(),
        g["upid"].size,
        (g["obs_sm"] >= 10**log10_mstar_min).sum(),
        ((g["obs_sm"] >= 10**log10_mstar_min) & (g["upid"] != -1)).sum(),
    )
    snap = halos.snapshot
    return {
        "snapshot": snap.to_dict(),
        "halos": {"file": halos.path, "format": halos.source.format, "rows": int(n_halos),
                  "distinct": int(n_distinct), f"hosts_log10_m200c_ge_{host_log10_m200c_min}": int(n_hosts)},
        "galaxies": {"file": galaxies.path, "format": galaxies.source.format, "rows": int(n_gal),
                     f"log10_mstar_ge_{log10_mstar_min}": int(n_gal_cut),
                     f"satellites_log10_mstar_ge_{log10_mstar_min}": int(n_sat_cut)},
        "number_density_hosts_per_mpc3_h3": float(n_hosts) / snap.box_size**3,
    }

"""Benchmark: mock observations + features for a whole box, and a straightforward per-cluster reference.

    .venv/bin/python bench/bench_synth.py --box-size 1000 --out /tmp/mdpl2box   # once: the MDPL2-sized box
    .venv/bin/python bench/bench_observe.py --box /tmp/mdpl2box

The pipeline run (`features.observe.make_observations`: streaming bucket pass, 4x4 regions per line of sight,
vectorised features) is timed end to end from the catalog files, with peak memory of the process.
The reference is what one would write first: all galaxies in memory, one periodic KD-tree per line of sight
(build time not counted), then a Python loop over hosts with one ball query each and numpy/astropy statistics
per cluster; it runs on a random subset of hosts and its rate is compared with the pipeline's.
Goal (issue 3): the MDPL2-sized box (~1e5 hosts x 3 lines of sight) in under 2 minutes and 6 GiB on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from astropy.stats import biweight_scale
from scipy.spatial import cKDTree
from scipy.stats import kurtosis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import machine, measure

from features.cylinder import wrap
from features.observe import ObservationSpec, make_observations, select_hosts
from ingest.catalog import read_galaxies, read_halos


def reference_features(r: np.ndarray, v: np.ndarray, m: np.ndarray, r_ap: float) -> list[float]:
    """Per-cluster numpy/astropy statistics: the same 18 quantities, one cluster at a time."""
    n = len(v)
    s = np.sort(v)
    g = np.diff(s)
    i = np.arange(1, n)
    bw = biweight_scale(v, c=9.0)
    inner = r < r_ap / 2
    return [n, math.log10(n), bw, math.sqrt(math.pi) / (n * (n - 1)) * np.sum(i * (n - i) * g), np.std(v, ddof=1),
            np.median(np.abs(v) / bw), np.percentile(np.abs(v) / bw, 90), kurtosis(v), r.mean(),
            *np.percentile(r, [25, 50, 75]), math.log10(np.sum(10.0**m)), m.max(), np.median(m), np.std(m, ddof=1),
            biweight_scale(v[inner], c=9.0) if inner.any() else np.nan, inner.mean()]


def reference(halos, galaxies, config: ObservationSpec, n_hosts: int, seed: int = 0) -> dict:
    spec = config.cylinder
    snap = halos.snapshot
    L, H = snap.box_size, snap.hubble_per_comoving()
    D = spec.half_depth(snap)
    hosts = select_hosts(halos, spec.host_log10_m200c_min)
    pick = np.random.default_rng(seed).choice(len(hosts), size=min(n_hosts, len(hosts)), replace=False)
    hosts = hosts.iloc[np.sort(pick)]
    g = galaxies.frame[["x", "y", "z", "vx", "vy", "vz", "obs_sm"]].compute()
    g = g[g.obs_sm >= 10**spec.log10_mstar_min]
    pos = g[["x", "y", "z"]].to_numpy(np.float64)
    vel = g[["vx", "vy", "vz"]].to_numpy(np.float64)
    logm = np.log10(g.obs_sm.to_numpy(np.float64))
    n_obs, t_loop = 0, 0.0
    for axis in config.los.axes:
        s = pos.copy()
        s[:, axis] = np.mod(pos[:, axis] + vel[:, axis] / H, L)
        tree = cKDTree(s, boxsize=L)
        hpos = hosts[["x", "y", "z"]].to_numpy(np.float64).copy()
        hpos[:, axis] = np.mod(hpos[:, axis] + hosts["v" + "xyz"[axis]].to_numpy() / H, L)
        t0 = time.perf_counter()
        for hp in hpos:
            idx = np.asarray(tree.query_ball_point(hp, math.hypot(spec.r_aperture, D)), dtype=np.int64)
            d = wrap(s[idx] - hp, L)
            along = d[:, axis]
            r = np.sqrt(np.maximum((d * d).sum(1) - along**2, 0))
            sel = (r < spec.r_aperture) & (np.abs(along) < D)
            if sel.sum() >= spec.min_members:
                reference_features(r[sel], along[sel] * H, logm[idx[sel]], spec.r_aperture)
            n_obs += 1
        t_loop += time.perf_counter() - t0
    return {"hosts": len(hosts), "observations": n_obs, "loop_s": round(t_loop, 2),
            "observations_per_s": round(n_obs / t_loop, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box", type=Path, required=True, help="directory with halos.h5 and galaxies.h5")
    ap.add_argument("--reference-hosts", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    halos = read_halos(args.box / "halos.h5", validate=False)
    galaxies = read_galaxies(args.box / "galaxies.h5", validate=False)
    config = ObservationSpec()
    with measure() as m:
        obs = make_observations(halos, galaxies, config, num_workers=args.workers)
    n_total = len(obs.table) + obs.dropped["total"]
    pipeline = {"hosts": obs.n_hosts, "observations": n_total, "kept": len(obs.table), "dropped": obs.dropped,
                "members": int(obs.members.offsets[-1]), "wall_s": round(m.seconds, 1),
                "peak_rss_gib": round(m.peak_gib, 2), "observations_per_s": round(n_total / m.seconds, 1)}
    ref = reference(halos, galaxies, config, args.reference_hosts)
    print(json.dumps({
        "benchmark": "observe", "date": datetime.date.today().isoformat(), "machine": machine(),
        "box": str(args.box), "box_size": halos.snapshot.box_size,
        "galaxies_rows": int(galaxies.frame.map_partitions(len).compute().sum()),
        "pipeline": pipeline, "reference_per_cluster": ref,
        "speedup": round(pipeline["observations_per_s"] / ref["observations_per_s"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()

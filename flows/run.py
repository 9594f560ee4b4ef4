"""The pipeline run behind ``clustermass run``, stage by stage.

synth (the embedded synthetic box, unless [input] names catalogs) -> ingest (read, unit-normalise, validate,
summarise) -> features (mock observations and member arrays) -> train (MDN, flow and MSE ensembles, M-sigma) ->
infer (corrected posteriors of the held-out hosts, catalog.h5 / catalog.fits, validation/). Issue 6 wraps these
stages as cached Prefect tasks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from features.cylinder import CylinderSpec, LineOfSightSpec
from features.io import write_observations
from features.observe import ObservationConfig, make_observations
from flows.infer import infer_stage
from flows.train import train_stage
from ingest.catalog import Catalog, read_galaxies, read_halos
from ingest.synth.box import SynthConfig
from ingest.synth.synthesize import output_paths, synthesize
from pipeline.config import ObserveSection, RunConfig
from pipeline.progress import Progress
from pipeline.provenance import digest_json

HOST_LOG10_M200C_CUT = 13.5  # Msun/h: the hosts mock observations will be made of (REFERENCE.md §3)
GALAXY_LOG10_MSTAR_CUT = 9.5  # Msun


def run_pipeline(config: RunConfig, out: str | os.PathLike[str], *, quiet: bool = False) -> dict[str, Any]:
    """Run every stage available for ``config`` into the run directory ``out``; return the summary written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if config.input is None:
        halos_path, galaxies_path = _synth_stage(config, out / "box", quiet)
        halo_fmt = galaxy_fmt = None
    else:
        halos_path, galaxies_path = config.input.halos, config.input.galaxies
        halo_fmt, galaxy_fmt = config.input.halo_format, config.input.galaxy_format
    timings["synth"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    halos = read_halos(halos_path, format=halo_fmt, snapshot=config.snapshot)
    galaxies = read_galaxies(galaxies_path, format=galaxy_fmt, snapshot=config.snapshot)
    summary = summarise(halos, galaxies)
    timings["ingest"] = time.perf_counter() - t0
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    summary_path = out / "ingest" / "summary.json"
    _write_json(summary_path, summary)

    t0 = time.perf_counter()
    obs_config = observation_config(config.observe)
    obs = make_observations(halos, galaxies, obs_config, scratch=out / ".scratch", num_workers=config.observe.workers,
                            progress=Progress("features regions", enabled=not quiet))
    obs_dir, members_path = write_observations(out, obs)
    timings["features"] = time.perf_counter() - t0
    summary["observations"] = {"kept": len(obs.table), "dropped": obs.dropped, "hosts": obs.n_hosts}
    t0 = time.perf_counter()
    obs_meta = {"config": obs.config.to_dict(), "snapshot": obs.snapshot.to_dict()}
    summary["training"] = train_stage(obs.table, config.train, out / "model", quiet=quiet, observations=obs_meta)
    timings["train"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics = infer_stage(obs.table, out / "model", out, prior=config.infer.prior, snapshot=halos.snapshot,
                          main=config.infer.model, config_digest=digest_json(_config_dict(config)))
    timings["infer"] = time.perf_counter() - t0
    summary["validation"] = {k: metrics[k] for k in ("n_test", "scatter_dex", "bias_dex", "coverage_68",
                                                     "coverage_95", "msigma_scatter_dex", "msigma_bias_dex")}
    summary["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    _write_json(summary_path, summary)
    summary["outputs"] = {"catalog_h5": str(out / "catalog.h5"), "catalog_fits": str(out / "catalog.fits"),
                          "validation": str(out / "validation"),
        "halos": str(halos_path), "galaxies": str(galaxies_path), "summary": str(summary_path),
        "observations": str(obs_dir), "members": str(members_path), "model": str(out / "model"),
    }
    if not quiet:
        for stage, secs in timings.items():
            print(f"stage {stage:8s} {secs:7.1f} s")
    return summary


def _config_dict(config: RunConfig) -> dict:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


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


def _synth_stage(config: RunConfig, box_dir: Path, quiet: bool) -> tuple[Path, Path]:
    """Generate the configured synthetic box, reusing one already written with the same configuration."""
    s = config.synth
    synth_config = SynthConfig(
        box_size=s.box_size, seed=s.seed, log10_mmin=s.log10_mmin, min_log10_mstar=s.min_log10_mstar
    )
    halos_path, galaxies_path = output_paths(box_dir, s.format)
    meta = box_dir / "snapshot.json"
    if meta.exists() and halos_path.exists() and galaxies_path.exists():
        previous = json.loads(meta.read_text()).get("synth")
        if previous == json.loads(json.dumps(synth_config.to_dict())):
            return halos_path, galaxies_path
    synthesize(box_dir, synth_config, fmt=s.format, workers=s.workers,
               progress=Progress("synth cells", enabled=not quiet))
    return halos_path, galaxies_path


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


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)

"""The flow's tasks: one per stage (the features stage is a plan, one mapped task per region, and an assembly).

Every task reads its inputs from files, writes its outputs into the run directory under temporary names renamed
when complete, and returns a small :class:`~flows.keys.StageResult` (output stamps, a content digest, facts) that
Prefect persists in the run directory as JSON (:class:`~flows.keys.StageResultSerializer`: data, never a pickle).
Parameters are paths, configuration dictionaries and the content digests of the files read, so
``cache_policy = INPUTS + TASK_SOURCE`` re-runs a task exactly when what it reads, how it is configured, or its code
changes. Paths inside the run directory are passed, and returned, relative to it (:func:`flows.keys.relative`);
the run directory itself (``run_dir``) and parameters that change only speed or verbosity (``workers``,
``quiet``) are left out of the key, so a copied or moved run directory keeps its cache. I/O-bound stages retry an
I/O hiccup (:func:`retryable`) with exponential backoff; anything else, and every failure of a compute stage, is
final at once.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.tasks import exponential_backoff

from flows.keys import StageResult, StageResultSerializer, at, content_digest, relative, sha256_file, stamp
from pipeline.errors import ClusterMassError, no_space
from pipeline.files import write_json
from pipeline.progress import Progress
from pipeline.provenance import digest_json

CACHED = INPUTS + TASK_SOURCE - "run_dir" - "workers" - "quiet"
SERIALIZER = StageResultSerializer()  # results are JSON data: nothing in a run directory is ever unpickled
STAGE: dict[str, Any] = {"cache_policy": CACHED, "persist_result": True, "result_serializer": SERIALIZER}


#: errnos of an OSError that waiting cannot fix: the path itself is wrong (missing, forbidden, read-only, ...)
_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM,
                          errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP})


def retryable(exc: BaseException | None) -> bool:
    """Whether a stage that failed with ``exc`` may succeed when run again: an I/O hiccup only.

    Retried: an :class:`OSError` (EIO, a stale NFS handle, a busy device, an HDF5 read error without an errno), a
    timeout (:class:`TimeoutError`) or a lost connection (:class:`ConnectionError`). Final: bad input or
    configuration (:class:`~pipeline.errors.ClusterMassError`), a full disk or exceeded quota (ENOSPC, EDQUOT,
    :func:`~pipeline.errors.no_space`), a path that is wrong (:data:`_PATH_ERRNOS`), and everything else — a
    ValueError, KeyError, TypeError or MemoryError is a bug or a machine too small, and fails at once.
    """
    if isinstance(exc, ClusterMassError) or not isinstance(exc, OSError):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    return not no_space(exc) and exc.errno not in _PATH_ERRNOS


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry condition of the I/O-bound stages: :func:`retryable` of the exception the run failed with."""
    return retryable(state.result(raise_on_failure=False))


IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": exponential_backoff(backoff_factor=5),
                              "retry_jitter_factor": 0.5, "retry_condition_fn": transient}


def _snapshot(snapshot: dict | None):
    from pipeline.snapshot import Snapshot

    return None if snapshot is None else Snapshot.from_dict(snapshot)


def _open_catalogs(run_dir: str, halos: str, galaxies: str, halo_format: str | None, galaxy_format: str | None,
                   snapshot: dict | None):
    """Both catalogs (paths relative to ``run_dir``, or absolute), lazily (dask), with the configured snapshot."""
    from ingest.catalog import read_galaxies, read_halos

    snap = _snapshot(snapshot)
    return (read_halos(at(run_dir, halos), format=halo_format, snapshot=snap),
            read_galaxies(at(run_dir, galaxies), format=galaxy_format, snapshot=snap))


# -- synth ---------------------------------------------------------------------------------------------------------
@task(name="synth", **STAGE, **IO_RETRIES)
def synth_box(run_dir: str, synth: dict[str, Any], fmt: str, box_dir: str, code: str, workers: int = 2,
              quiet: bool = True) -> StageResult:
    """Write the synthetic MultiDark-style box ``synth`` (a :class:`SynthConfig` as a dict) into ``box_dir``
    (relative to ``run_dir``)."""
    from ingest.synth.box import SynthConfig
    from ingest.synth.synthesize import output_paths, synthesize

    config = SynthConfig(**synth)
    target = at(run_dir, box_dir)
    get_run_logger().info("synthesising a %.0f Mpc/h box (seed %d) into %s", config.box_size, config.seed, target)
    synthesize(target, config, fmt=fmt, workers=workers, progress=Progress("synth cells", enabled=not quiet))
    halos, galaxies = output_paths(target, fmt)
    files = [halos, galaxies, target / "snapshot.json"]
    return StageResult(stamp(files, run_dir), content_digest(files),
                       {"halos": relative(halos, run_dir), "galaxies": relative(galaxies, run_dir), "format": fmt})


# -- ingest --------------------------------------------------------------------------------------------------------
@task(name="ingest", **STAGE, **IO_RETRIES)
def ingest_catalogs(run_dir: str, halos: str, galaxies: str, halo_format: str | None, galaxy_format: str | None,
                    snapshot: dict | None, inputs_digest: str, cuts: dict[str, float], code: str) -> StageResult:
    """Read both catalogs (dask, out of core), check them and write ``ingest/summary.json``.

    ``cuts``: the host mass and stellar-mass cuts the summary counts above (``host_log10_m200c_min``,
    ``log10_mstar_min``). The digest is the identity of the ingested data: the input files' content digest plus
    the snapshot.
    """
    from ingest.summary import summarise

    h, g = _open_catalogs(run_dir, halos, galaxies, halo_format, galaxy_format, snapshot)
    summary = summarise(h, g, **cuts)
    path = write_json(Path(run_dir) / "ingest" / "summary.json", summary, indent=2)
    get_run_logger().info("ingested %d halos and %d galaxies", summary["halos"]["rows"], summary["galaxies"]["rows"])
    snap = h.snapshot.to_dict()
    return StageResult(stamp([path], run_dir), digest_json({"inputs": inputs_digest, "snapshot": snap}),
                       {"snapshot": snap, "summary": summary})


# -- features: plan, regions (mapped), assembly ---------------------------------------------------------------------
@task(name="features-plan", **STAGE, **IO_RETRIES)
def plan_features(run_dir: str, halos: str, galaxies: str, halo_format: str | None, galaxy_format: str | None,
                  snapshot: dict | None, ingest_digest: str, observe: dict[str, Any], plan_dir: str,
                  code: str) -> StageResult:
    """Select the hosts and stream the galaxies once into per-region bucket files under ``plan_dir`` (relative to
    ``run_dir``)."""
    from features.config import ObserveSection
    from features.io import save_plan
    from features.observe import plan_observations

    h, g = _open_catalogs(run_dir, halos, galaxies, halo_format, galaxy_format, snapshot)
    plan = plan_observations(h, g, ObserveSection(**observe).observation_spec(), at(run_dir, plan_dir))
    files = save_plan(plan)
    get_run_logger().info("%d hosts, %d region jobs", len(plan.hosts), len(plan.jobs))
    return StageResult(stamp(files, run_dir), digest_json({"ingest": ingest_digest, "observe": observe, "code": code}),
                       {"jobs": [j.to_dict() for j in plan.jobs], "n_hosts": len(plan.hosts)})


@task(name="features-region", **STAGE)
def observe_region_task(run_dir: str, plan_dir: str, job: dict[str, Any], plan_digest: str, region_path: str,
                        code: str) -> StageResult:
    """Cylinder search and features of one region job's hosts; writes ``region_path`` (.npz; paths relative to
    ``run_dir``)."""
    from features.io import load_plan, write_region
    from features.observe import RegionJob, observe_region

    plan = load_plan(at(run_dir, plan_dir))
    region = RegionJob(**job)
    table, members = observe_region(plan, region)
    path = write_region(at(run_dir, region_path), table, members)
    return StageResult(stamp([path], run_dir), sha256_file(path), {"rows": len(table)})


@task(name="features-assemble", **STAGE, **IO_RETRIES)
def assemble_features(run_dir: str, plan_dir: str, region_paths: list[str], region_digests: list[str],
                      code: str) -> StageResult:
    """Concatenate the regions, apply ``min_members``, write ``observations/`` and ``members.h5``.

    Removes the plan's bucket files afterwards (the region files stay: they are the cached regions' outputs).
    """
    from features.io import load_plan, read_region, write_observations
    from features.observe import combine_observations, remove_buckets

    plan = load_plan(at(run_dir, plan_dir))
    obs = combine_observations(plan, [read_region(at(run_dir, p)) for p in region_paths])
    obs_dir, members = write_observations(run_dir, obs)
    remove_buckets(at(run_dir, plan_dir))
    get_run_logger().info("%d observations of %d hosts kept, %d dropped (< %d members)", len(obs.table),
                          obs.n_hosts, obs.dropped["total"], plan.config.cylinder.min_members)
    return StageResult(stamp([obs_dir, members], run_dir), content_digest([obs_dir], root=run_dir),
                       {"observations": len(obs.table), "hosts": obs.n_hosts, "dropped": obs.dropped,
                        "dir": relative(obs_dir, run_dir), "members": relative(members, run_dir)})


# -- training ------------------------------------------------------------------------------------------------------
@task(name="train", **STAGE)
def train_models(run_dir: str, observations_digest: str, train: dict[str, Any], model_dir: str, code: str,
                 quiet: bool = True) -> StageResult:
    """Train the configured models and the M-sigma baseline on the non-test hosts; write ``model_dir`` (relative to
    ``run_dir``).

    The directory appears whole: it is trained into a hidden sibling and renamed.
    """
    from features.io import load_observation_table, read_members
    from models.config import TrainSection
    from models.stage import train_stage

    table, meta = load_observation_table(run_dir)
    section = TrainSection(**{k: v for k, v in train.items() if k != "reuse"})
    members = read_members(run_dir) if set(section.feature_sets) - {"full"} or "set" in section.models else None
    target = at(run_dir, model_dir)
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    summary = train_stage(table, section, tmp, quiet=quiet, members=members,
                          observations={"config": meta["config"], "snapshot": meta["snapshot"]})
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    summary = json.loads(json.dumps(summary).replace(str(tmp), relative(target, run_dir)))
    return StageResult(stamp([target], run_dir), content_digest([target], root=target), summary)


# -- inference: catalogs and validation ----------------------------------------------------------------------------
def _catalog_rows(run_dir: str, model_dir: str, rows: str, *, with_members: bool = False):
    """The ``rows`` of the run's observation table (and with ``with_members``, their member arrays)."""
    selected, members, _ = _catalog_rows_and_sample(run_dir, model_dir, rows, with_members=with_members)
    return (selected, members) if with_members else selected


def _catalog_rows_and_sample(run_dir: str, model_dir: str, rows: str, *, with_members: bool = False):
    """The ``rows`` of the run's observation table, their member arrays (None without ``with_members``) and the
    volume and selection of their hosts (:func:`catalogs.stage.catalog_sample`)."""
    from catalogs.stage import catalog_sample
    from features.io import load_observation_table, read_members
    from models.stage import held_out_mask

    table, meta = load_observation_table(run_dir)
    mask = np.ones(len(table), bool) if rows == "all" else held_out_mask(table, at(run_dir, model_dir))
    selected = table[mask].reset_index(drop=True)
    sample = catalog_sample(meta, table["cluster_id"].to_numpy(), mask)
    return selected, (read_members(run_dir).take(mask) if with_members else None), sample


ROWS_DESCRIPTION = {"held-out": "held-out test hosts (never seen in training)",
                    "all": "every observation (the model was trained elsewhere)"}


@task(name="catalogs", **STAGE, **IO_RETRIES)
def write_catalogs(run_dir: str, observations_digest: str, model_dir: str, model_digest: str, prior: str,
                   prior_digest: str, main: str, rows: str, snapshot: dict, config_digest: str,
                   code: str) -> StageResult:
    """Posterior mass catalogs ``catalog.h5`` and ``catalog.fits`` of the ``rows`` observations (streamed)."""
    from catalogs.stage import catalog_stage

    # the set model reads the members
    table, members, sample = _catalog_rows_and_sample(run_dir, model_dir, rows, with_members=main == "set")
    paths = catalog_stage(table, at(run_dir, model_dir), run_dir, prior=prior, snapshot=_snapshot(snapshot), main=main,
                          rows=ROWS_DESCRIPTION[rows], config_digest=config_digest, members=members, sample=sample)
    get_run_logger().info("catalogs of %d observations: %s", len(table), ", ".join(map(str, paths)))
    stamps = stamp(paths, run_dir)
    return StageResult(stamps, digest_json(stamps),
                       {"rows": len(table), "files": [relative(p, run_dir) for p in paths]})


@task(name="validate", **STAGE)
def validate_models(run_dir: str, observations_digest: str, model_dir: str, model_digest: str, prior: str,
                    prior_digest: str, main: str, rows: str, snapshot: dict, code: str) -> StageResult:
    """Accuracy, calibration and the baselines on the ``rows`` observations: ``validation/`` (metrics + plots)."""
    from inference.validate import validate_stage

    table, members = _catalog_rows(run_dir, model_dir, rows, with_members=True)
    out = Path(run_dir) / "validation"
    metrics = validate_stage(table, at(run_dir, model_dir), out, members=members, prior=prior, main=main,
                             snapshot=_snapshot(snapshot))
    keys = ("n_test", "scatter_dex", "bias_dex", "coverage_68", "coverage_95", "msigma_scatter_dex",
            "msigma_bias_dex")
    summary = {k: metrics[k] for k in keys if k in metrics}
    if "acceptance" in metrics:
        summary["acceptance"] = metrics["acceptance"]
    stamps = stamp([out], run_dir)
    return StageResult(stamps, digest_json(stamps), summary)

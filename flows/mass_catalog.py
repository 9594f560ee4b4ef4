"""The Prefect flow ``mass_catalog``: the whole pipeline, cached stage by stage, from one configuration file.

synth (the embedded synthetic box, unless ``[input]`` names catalogs) -> ingest -> features (a plan, one mapped
task per region, an assembly) -> train (or ``[train] reuse`` a given model) -> catalogs and validation.

Every task is keyed on the content digests of what it reads, its configuration and its code
(:mod:`flows.tasks`); results are persisted in ``<run dir>/.prefect``, so a re-run with nothing changed finds
every stage ``Cached``, and a changed stage re-runs with everything after it. A cached result whose output files
were deleted or replaced is recomputed (:func:`flows.keys.intact`). Each output appears under its final name only
when complete, so a killed run resumes where it stopped and ends with the same catalogs.

Run it with ``clustermass run`` (which validates the configuration before Prefect starts), from Python with
:func:`run`, or as a deployment (:mod:`flows.deploy`, ``prefect.yaml``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.filesystems import LocalFileSystem
from prefect.futures import as_completed
from prefect.tasks import Task

from flows import tasks as t
from flows.config import RunConfig, load_config
from flows.keys import StageResult, content_digest, intact, task_code_digest
from pipeline.files import write_json
from pipeline.progress import Progress
from pipeline.provenance import digest_json

RESULTS_DIR = ".prefect"  # in the run directory: Prefect's persisted task results (the cache)
STAGES = ("synth", "ingest", "features-plan", "features-region", "features-assemble", "train", "catalogs",
          "validate")



def result_storage(run_dir: Path) -> str:
    """A saved LocalFileSystem block rooted at ``run_dir/.prefect``; its slug (workers resolve it by name)."""
    name = "clustermass-" + hashlib.sha256(str(run_dir).encode()).hexdigest()[:20]
    LocalFileSystem(basepath=str(run_dir / RESULTS_DIR)).save(name, overwrite=True)
    return f"local-file-system/{name}"


@dataclasses.dataclass
class StageRunner:
    """Submits stage tasks with the run's result storage and records how each ended and how long it took."""

    storage: str
    say: Callable[[str], None]
    record: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def task(self, task: Task, *, refresh: bool = False) -> Task:
        return task.with_options(result_storage=self.storage, refresh_cache=refresh or None)

    def run(self, name: str, task: Task, **params: Any) -> StageResult:
        """Run one stage task (cached if possible); re-run it if its recorded outputs are gone or changed."""
        t0 = time.perf_counter()
        fut = self.task(task).submit(**params)
        fut.wait()
        state = fut.state
        result = state.result()  # raises the task's own exception if it failed
        how = state.name
        if not intact(result):
            self.say(f"{name}: outputs of the cached result are missing or changed; re-running")
            fut = self.task(task, refresh=True).submit(**params)
            fut.wait()
            result, how = fut.result(), "Completed"
        self.done(name, how, time.perf_counter() - t0)
        return result

    def done(self, name: str, how: str, seconds: float, **extra: Any) -> None:
        self.record[name] = {"state": how, "seconds": round(seconds, 2), **extra}
        self.say(f"stage {name:18s} {how:10s} {seconds:7.1f} s")


@flow(name="mass_catalog", description="Posterior cluster-mass catalogs from halo and galaxy catalogs.",
      validate_parameters=True)
def mass_catalog(config: str | None = None, out: str | None = None, quiet: bool = True) -> dict[str, Any]:
    """Run the pipeline for the TOML ``config`` (None: the embedded synthetic box) into ``out``.

    ``out`` defaults to the configuration's ``[output] dir``. Returns the run summary also written to
    ``<out>/run.json``: each stage's final state (``Cached``/``Completed``) and seconds, the outputs, the metrics.
    """
    cfg = load_config(config)
    run_dir = Path(out or cfg.output.dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = get_run_logger()

    def say(msg: str) -> None:
        logger.info(msg)
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    st = StageRunner(result_storage(run_dir), say)
    return _pipeline(cfg, run_dir, st, quiet)


def _pipeline(cfg: RunConfig, run_dir: Path, st: StageRunner, quiet: bool) -> dict[str, Any]:
    memo = run_dir / RESULTS_DIR / "digests.json"
    snapshot = cfg.snapshot.to_dict() if cfg.snapshot else None
    t_start = time.perf_counter()
    if cfg.input is None:
        s = cfg.synth
        box = st.run("synth", t.synth_box, synth=s.box_params(), fmt=s.format, box_dir=str(run_dir / "box"),
                     code=task_code_digest(t.synth_box), workers=s.workers, quiet=quiet)
        halos, galaxies = box.info["halos"], box.info["galaxies"]
        halo_fmt = galaxy_fmt = None
        inputs_digest = box.digest
    else:
        t0 = time.perf_counter()
        halos, galaxies = str(cfg.input.halos), str(cfg.input.galaxies)
        halo_fmt, galaxy_fmt = cfg.input.halo_format, cfg.input.galaxy_format
        inputs_digest = content_digest([halos, galaxies], memo=memo)
        st.done("synth", "Skipped", time.perf_counter() - t0, note="[input] catalogs given; content digested")
    catalogs = {"halos": halos, "galaxies": galaxies, "halo_format": halo_fmt, "galaxy_format": galaxy_fmt,
                "snapshot": snapshot}
    cuts = {"host_log10_m200c_min": cfg.observe.host_log10_m200c_min,
            "log10_mstar_min": cfg.observe.log10_mstar_min}
    ingest = st.run("ingest", t.ingest_catalogs, **catalogs, inputs_digest=inputs_digest, run_dir=str(run_dir),
                    cuts=cuts, code=task_code_digest(t.ingest_catalogs))

    observations = _features(cfg, run_dir, st, catalogs, ingest.digest, quiet)

    if cfg.train.reuse:
        t0 = time.perf_counter()
        model_dir = Path(cfg.train.reuse)
        model_digest = content_digest([model_dir], memo=memo, root=model_dir)
        rows = "all"
        st.done("train", "Skipped", time.perf_counter() - t0, note=f"[train] reuse = {model_dir}")
    else:
        model_dir = run_dir / "model"
        trained = st.run("train", t.train_models, run_dir=str(run_dir), observations_digest=observations.digest,
                         train=dataclasses.asdict(cfg.train), model_dir=str(model_dir),
                         code=task_code_digest(t.train_models), quiet=quiet)
        model_digest, rows = trained.digest, "held-out"

    prior = cfg.infer.prior
    prior_digest = content_digest([prior]) if Path(prior).is_file() else ""
    infer = {"run_dir": str(run_dir), "observations_digest": observations.digest, "model_dir": str(model_dir),
             "model_digest": model_digest, "prior": prior, "prior_digest": prior_digest, "main": cfg.infer.model,
             "rows": rows, "snapshot": ingest.info["snapshot"]}
    catalogs_result = st.run("catalogs", t.write_catalogs, **infer, config_digest=digest_json(cfg.science_dict()),
                             code=task_code_digest(t.write_catalogs))
    validation = st.run("validate", t.validate_models, **infer, code=task_code_digest(t.validate_models))

    from prefect.runtime import flow_run

    summary = {
        "flow_run_id": str(flow_run.id),
        "config": cfg.source,
        "run_dir": str(run_dir),
        "stages": st.record,
        "total_seconds": round(time.perf_counter() - t_start, 2),
        "ingest": ingest.info["summary"],
        "observations": {k: observations.info[k] for k in ("observations", "hosts", "dropped")},
        "validation": validation.info,
        "outputs": {
            "catalog_h5": str(run_dir / "catalog.h5"), "catalog_fits": str(run_dir / "catalog.fits"),
            "validation": str(run_dir / "validation"), "model": str(model_dir),
            "observations": observations.info["dir"], "members": observations.info["members"],
            "halos": halos, "galaxies": galaxies,
        },
        "catalog_rows": catalogs_result.info["rows"],
    }
    write_json(run_dir / "run.json", summary, indent=2)
    return summary


def _features(cfg: RunConfig, run_dir: Path, st: StageRunner, catalogs: dict[str, Any], ingest_digest: str,
              quiet: bool) -> StageResult:
    """Plan (buckets), one mapped task per region, assembly; stale plans of other configurations removed."""
    code = task_code_digest(t.plan_features)
    observe = cfg.observe.science_dict()
    key = digest_json({"ingest": ingest_digest, "observe": observe, "code": code})
    features_dir = run_dir / "features"
    plan_dir = features_dir / key[:16]
    plan_params = {**catalogs, "ingest_digest": ingest_digest, "observe": observe, "plan_dir": str(plan_dir),
                   "code": code}
    plan = st.run("features-plan", t.plan_features, **plan_params)

    t0 = time.perf_counter()
    jobs = plan.info["jobs"]
    paths = [str(plan_dir / "regions" / f"los{j['los']}-region{j['region']}.npz") for j in jobs]
    common = {"plan_dir": str(plan_dir), "plan_digest": plan.digest, "code": task_code_digest(t.observe_region_task)}
    futures = st.task(t.observe_region_task).map(job=jobs, region_path=paths,
                                                 **{k: unmapped(v) for k, v in common.items()})
    progress = Progress("features regions", enabled=not quiet)
    for done, _ in enumerate(as_completed(futures), start=1):
        progress(done, len(futures))
    for f in futures:
        f.wait()
    states = [f.state for f in futures]
    results: list[StageResult | None] = [s.result() if s.is_completed() else None for s in states]
    redo = [i for i, r in enumerate(results) if r is None or not intact(r)]  # failed, or outputs gone
    if redo:
        if not all((plan_dir / j["bucket"]).exists() for j in jobs):
            st.say(f"features: {len(redo)} region(s) to re-run and the buckets are gone; re-running the plan")
            st.task(t.plan_features, refresh=True).submit(**plan_params).wait()
        again = [st.task(t.observe_region_task, refresh=True).submit(job=jobs[i], region_path=paths[i], **common)
                 for i in redo]
        for i, fut in zip(redo, again, strict=True):
            results[i] = fut.result()  # raises if a region fails again
    cached = sum(1 for i, s in enumerate(states) if s.name == "Cached" and i not in redo)
    st.done("features-region", "Cached" if cached == len(jobs) else "Completed", time.perf_counter() - t0,
            tasks=len(jobs), cached=cached)

    assembled = st.run("features-assemble", t.assemble_features, plan_dir=str(plan_dir), region_paths=paths,
                       region_digests=[r.digest for r in results], run_dir=str(run_dir),
                       code=task_code_digest(t.assemble_features))
    for other in features_dir.iterdir():  # plans of other configurations: their outputs are superseded
        if other.is_dir() and other != plan_dir:
            shutil.rmtree(other, ignore_errors=True)
    return assembled


# -- running it --------------------------------------------------------------------------------------------------
def run(config: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None, *,
        quiet: bool = True) -> dict[str, Any]:
    """Validate ``config``, then run :func:`mass_catalog` with the task runner its ``[runner]`` section names."""
    from flows.runners import task_runner

    cfg = load_config(config)  # errors before Prefect starts
    runnable = mass_catalog.with_options(task_runner=task_runner(cfg.runner))
    return runnable(config=None if config is None else str(Path(config).resolve()),
                    out=None if out is None else str(out), quiet=quiet)


@flow(name="mass_catalog_scheduled",
      description="mass_catalog with the task runner of its configuration's [runner] section (for deployments).")
def scheduled_mass_catalog(config: str, out: str | None = None) -> dict[str, Any]:
    """The deployment entrypoint: a worker imports this afresh, so it applies ``[runner]`` itself (a subflow)."""
    return run(config, out)

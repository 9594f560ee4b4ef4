"""The Prefect flow ``mass_catalog``: the whole pipeline, cached stage by stage, from one configuration file.

synth (the embedded synthetic box, unless ``[input]`` names catalogs) -> ingest -> features (a plan, one mapped
task per region, an assembly) -> train (or ``[train] reuse`` a given model) -> catalogs and validation.

Every task is keyed on the content digests of what it reads, its configuration and its code
(:mod:`flows.tasks`), with paths relative to the run directory; results are persisted in ``<run dir>/.prefect`` as
JSON data (:class:`flows.keys.RunResultStorage` refuses anything else, so nothing there can run code), so a re-run
with nothing changed finds every stage ``Cached`` — also in a copy of the run directory — and a changed stage
re-runs with everything after it. A cached result whose output files were deleted or replaced is recomputed
(:func:`flows.keys.intact`); ``recompute`` recomputes everything. Each output appears under its final name only
when complete, so a killed run resumes where it stopped and ends with the same catalogs.

Without ``PREFECT_API_URL``, :func:`run` starts Prefect's temporary server bound to this process
(:func:`temporary_server`): it stops with the run, even when the run is killed with SIGKILL (Linux).

Run it with ``clustermass run`` (which validates the configuration before Prefect starts), from Python with
:func:`run`, or as a deployment (:mod:`flows.deploy`, ``prefect.yaml``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.futures import as_completed
from prefect.tasks import Task

from flows import tasks as t
from flows.config import RunConfig, load_config
from flows.keys import StageResult, at, content_digest, intact, relative, result_storage_block, task_code_digest
from pipeline.errors import ClusterMassError
from pipeline.files import write_json
from pipeline.progress import Progress
from pipeline.provenance import digest_json

RESULTS_DIR = ".prefect"  # in the run directory: Prefect's persisted task results (the cache)
STAGES = ("synth", "ingest", "features-plan", "features-region", "features-assemble", "train", "catalogs",
          "validate")



def result_storage(run_dir: Path) -> str:
    """A saved :class:`flows.keys.RunResultStorage` block rooted at ``run_dir/.prefect`` (JSON data only, checked
    on reading); its slug (workers resolve it by name)."""
    name = "clustermass-" + hashlib.sha256(str(run_dir).encode()).hexdigest()[:20]
    return result_storage_block(run_dir / RESULTS_DIR, name)


@dataclasses.dataclass
class StageRunner:
    """Submits stage tasks with the run's result storage and records how each ended and how long it took.

    ``root``: the run directory, against which results' output paths are checked; ``recompute``: ignore cached
    results (every task runs and overwrites its cache entry).
    """

    storage: str
    say: Callable[[str], None]
    root: Path
    recompute: bool = False
    record: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def task(self, task: Task, *, refresh: bool = False) -> Task:
        return task.with_options(result_storage=self.storage, result_serializer=t.SERIALIZER,
                                 refresh_cache=refresh or self.recompute or None)

    def run(self, name: str, task: Task, **params: Any) -> StageResult:
        """Run one stage task (cached if possible); re-run it if its recorded outputs are gone or changed."""
        t0 = time.perf_counter()
        fut = self.task(task).submit(run_dir=str(self.root), **params)
        fut.wait()
        state = fut.state
        result = state.result()  # raises the task's own exception if it failed
        how = state.name
        if not intact(result, self.root):
            self.say(f"{name}: outputs of the cached result are missing or changed; re-running")
            fut = self.task(task, refresh=True).submit(run_dir=str(self.root), **params)
            fut.wait()
            result, how = fut.result(), "Completed"
        self.done(name, how, time.perf_counter() - t0)
        return result

    def done(self, name: str, how: str, seconds: float, **extra: Any) -> None:
        self.record[name] = {"state": how, "seconds": round(seconds, 2), **extra}
        self.say(f"stage {name:18s} {how:10s} {seconds:7.1f} s")


@flow(name="mass_catalog", description="Posterior cluster-mass catalogs from halo and galaxy catalogs.",
      validate_parameters=True)
def mass_catalog(config: str | None = None, out: str | None = None, quiet: bool = True,
                 recompute: bool = False) -> dict[str, Any]:
    """Run the pipeline for the TOML ``config`` (None: the embedded synthetic box) into ``out``.

    ``out`` defaults to the configuration's ``[output] dir``. ``recompute``: run every stage (and hash every input
    again) whatever the cache holds, refreshing the cache. Returns the run summary also written to
    ``<out>/run.json``: each stage's final state (``Cached``/``Completed``) and seconds, the outputs, the metrics,
    and the models ``[train] models`` resolved to (``train_models``: the default depends on JAX's backend).
    """
    cfg = load_config(config)
    run_dir = Path(out or cfg.output.dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = get_run_logger()

    def say(msg: str) -> None:
        logger.info(msg)
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    st = StageRunner(result_storage(run_dir), say, run_dir, recompute)
    return _pipeline(cfg, run_dir, st, quiet)


def _pipeline(cfg: RunConfig, run_dir: Path, st: StageRunner, quiet: bool) -> dict[str, Any]:
    memo = run_dir / RESULTS_DIR / "digests.json"
    snapshot = cfg.snapshot.to_dict() if cfg.snapshot else None
    t_start = time.perf_counter()
    if cfg.input is None:
        s = cfg.synth
        box = st.run("synth", t.synth_box, synth=s.box_params(), fmt=s.format, box_dir="box",
                     code=task_code_digest(t.synth_box), workers=s.workers, quiet=quiet)
        halos, galaxies = box.info["halos"], box.info["galaxies"]
        halo_fmt = galaxy_fmt = None
        inputs_digest = box.digest
    else:
        t0 = time.perf_counter()
        halos, galaxies = (relative(os.path.abspath(p), run_dir) for p in (cfg.input.halos, cfg.input.galaxies))
        halo_fmt, galaxy_fmt = cfg.input.halo_format, cfg.input.galaxy_format
        inputs_digest = content_digest([at(run_dir, halos), at(run_dir, galaxies)], memo=memo, refresh=st.recompute)
        st.done("synth", "Skipped", time.perf_counter() - t0, note="[input] catalogs given; content digested")
    catalogs = {"halos": halos, "galaxies": galaxies, "halo_format": halo_fmt, "galaxy_format": galaxy_fmt,
                "snapshot": snapshot}
    cuts = {"host_log10_m200c_min": cfg.observe.host_log10_m200c_min,
            "log10_mstar_min": cfg.observe.log10_mstar_min}
    ingest = st.run("ingest", t.ingest_catalogs, **catalogs, inputs_digest=inputs_digest, cuts=cuts,
                    code=task_code_digest(t.ingest_catalogs))

    observations = _features(cfg, run_dir, st, catalogs, ingest.digest, quiet)

    if cfg.train.reuse:
        t0 = time.perf_counter()
        model_dir = relative(os.path.abspath(cfg.train.reuse), run_dir)
        model_digest = content_digest([at(run_dir, model_dir)], memo=memo, root=at(run_dir, model_dir),
                                      refresh=st.recompute)
        rows = "all"
        st.done("train", "Skipped", time.perf_counter() - t0, note=f"[train] reuse = {cfg.train.reuse}")
    else:
        model_dir = "model"
        trained = st.run("train", t.train_models, observations_digest=observations.digest,
                         train=dataclasses.asdict(cfg.train), model_dir=model_dir,
                         code=task_code_digest(t.train_models), quiet=quiet)
        model_digest, rows = trained.digest, "held-out"

    prior = cfg.infer.prior
    prior_digest = content_digest([prior]) if Path(prior).is_file() else ""
    infer = {"observations_digest": observations.digest, "model_dir": model_dir, "model_digest": model_digest,
             "prior": prior, "prior_digest": prior_digest, "main": cfg.infer.model,
             "rows": rows, "snapshot": ingest.info["snapshot"]}
    catalogs_result = st.run("catalogs", t.write_catalogs, **infer, config_digest=digest_json(cfg.science_dict()),
                             code=task_code_digest(t.write_catalogs))
    validation = st.run("validate", t.validate_models, **infer, code=task_code_digest(t.validate_models))

    from prefect.runtime import flow_run

    summary = {
        "flow_run_id": str(flow_run.id),
        "config": cfg.source,
        "train_models": list(cfg.train.models),  # as resolved: the default adds "set" on a GPU backend
        "run_dir": str(run_dir),
        "stages": st.record,
        "total_seconds": round(time.perf_counter() - t_start, 2),
        "ingest": ingest.info["summary"],
        "observations": {k: observations.info[k] for k in ("observations", "hosts", "dropped")},
        "validation": validation.info,
        "outputs": {
            "catalog_h5": str(run_dir / "catalog.h5"), "catalog_fits": str(run_dir / "catalog.fits"),
            "validation": str(run_dir / "validation"), "model": str(at(run_dir, model_dir)),
            "observations": str(at(run_dir, observations.info["dir"])),
            "members": str(at(run_dir, observations.info["members"])),
            "halos": str(at(run_dir, halos)), "galaxies": str(at(run_dir, galaxies)),
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
    plan_rel = relative(plan_dir, run_dir)
    plan_params = {**catalogs, "ingest_digest": ingest_digest, "observe": observe, "plan_dir": plan_rel, "code": code}
    plan = st.run("features-plan", t.plan_features, **plan_params)

    t0 = time.perf_counter()
    jobs = plan.info["jobs"]
    paths = [f"{plan_rel}/regions/los{j['los']}-region{j['region']}.npz" for j in jobs]
    common = {"run_dir": str(run_dir), "plan_dir": plan_rel, "plan_digest": plan.digest,
              "code": task_code_digest(t.observe_region_task)}
    futures = st.task(t.observe_region_task).map(job=jobs, region_path=paths,
                                                 **{k: unmapped(v) for k, v in common.items()})
    progress = Progress("features regions", enabled=not quiet)
    for done, _ in enumerate(as_completed(futures), start=1):
        progress(done, len(futures))
    for f in futures:
        f.wait()
    states = [f.state for f in futures]
    results: list[StageResult | None] = [s.result() if s.is_completed() else None for s in states]
    redo = [i for i, r in enumerate(results) if r is None or not intact(r, run_dir)]  # failed, or outputs gone
    if redo:
        if not all((plan_dir / j["bucket"]).exists() for j in jobs):
            st.say(f"features: {len(redo)} region(s) to re-run and the buckets are gone; re-running the plan")
            st.task(t.plan_features, refresh=True).submit(run_dir=str(run_dir), **plan_params).wait()
        again = [st.task(t.observe_region_task, refresh=True).submit(job=jobs[i], region_path=paths[i], **common)
                 for i in redo]
        for i, fut in zip(redo, again, strict=True):
            results[i] = fut.result()  # raises if a region fails again
    cached = sum(1 for i, s in enumerate(states) if s.name == "Cached" and i not in redo)
    st.done("features-region", "Cached" if cached == len(jobs) else "Completed", time.perf_counter() - t0,
            tasks=len(jobs), cached=cached)

    assembled = st.run("features-assemble", t.assemble_features, plan_dir=plan_rel, region_paths=paths,
                       region_digests=[r.digest for r in results], code=task_code_digest(t.assemble_features))
    for other in features_dir.iterdir():  # plans of other configurations: their outputs are superseded
        if other.is_dir() and other != plan_dir:
            shutil.rmtree(other, ignore_errors=True)
    return assembled


# -- running it --------------------------------------------------------------------------------------------------
def run(config: str | os.PathLike[str] | None = None, out: str | os.PathLike[str] | None = None, *,
        quiet: bool = True, recompute: bool = False) -> dict[str, Any]:
    """Validate ``config``, then run :func:`mass_catalog` with the task runner its ``[runner]`` section names.

    ``recompute``: run every stage whatever the cache holds (the cache is refreshed). Without ``PREFECT_API_URL``
    the flow talks to Prefect's temporary server, started here bound to this process (:func:`temporary_server`).
    Whatever else the run starts (the synthetic box's worker processes, ...) is reaped when it ends, even killed
    (:func:`reap_descendants_on_exit`).
    """
    from flows.runners import task_runner

    cfg = load_config(config)  # errors before Prefect starts
    runnable = mass_catalog.with_options(task_runner=task_runner(cfg.runner))
    reap_descendants_on_exit()
    temporary_server()
    return runnable(config=None if config is None else str(Path(config).resolve()),
                    out=None if out is None else str(out), quiet=quiet, recompute=recompute)


# Prefect's temporary server is `python -m uvicorn ...` (prefect.server.api.server.SubprocessASGIServer). Started by
# Prefect, it outlives a killed run (~240 MB each, forever). Started here, it runs behind this shim, which asks the
# kernel to send it SIGTERM when the thread that started it dies (PR_SET_PDEATHSIG; kept across the exec, and the
# thread lives as long as the process), checks that the parent did not die before that, and becomes the server.
_BIND_SHIM = """\
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: no binding
if os.getppid() != parent:
    sys.exit(1)  # the parent died before the binding took hold
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""
PROCESS_BOUND = sys.platform.startswith("linux")  # where a killed run takes its temporary server with it

# A watchdog in its own session: every second it notes the processes below the run (Linux: the /proc children
# lists; elsewhere psutil); once the run has exited — normally, or killed by any signal, SIGKILL included — it
# terminates those still alive and every process that carries the run's token in its environment (which catches a
# process started too shortly before the end to be noted, orphaned since and re-parented), then exits. psutil
# checks each noted process's start time, so a reused pid is never hit.
REAPER_TOKEN = "CLUSTERMASS_RUN_TOKEN"  # inherited by every process the run starts (unless it clears its environment)
_REAPER = """\
import os, sys, time
import psutil
run, token, me = int(sys.argv[1]), sys.argv[2], os.getpid()
def below(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    kids = [int(k) for k in fh.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out
linux = os.path.exists(f"/proc/{run}/task/{run}/children")
try:
    parent = psutil.Process(run)
except psutil.Error:
    sys.exit(0)
seen = {}
while True:
    try:
        if not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE:
            break
        pids = below(run) if linux else [c.pid for c in parent.children(recursive=True)]
    except psutil.Error:
        break
    for pid in pids:
        if pid != me and pid not in seen:
            try:
                seen[pid] = psutil.Process(pid)
            except psutil.Error:
                pass
    time.sleep(1.0)
for p in psutil.process_iter():
    try:
        if p.pid != me and p.pid not in seen and p.environ().get(""" + repr(REAPER_TOKEN) + """) == token:
            seen[p.pid] = p
    except psutil.Error:
        pass
left = [p for p in seen.values() if p.is_running()]
for p in left:
    try:
        p.terminate()
    except psutil.Error:
        pass
_, left = psutil.wait_procs(left, timeout=5)
for p in left:
    try:
        p.kill()
    except psutil.Error:
        pass
"""


def reap_descendants_on_exit() -> None:
    """Start (once per process) a watchdog that terminates whatever this process started and left running when it
    exits, however it exits: SIGKILL included. A killed run leaves no worker processes behind (the synthetic box's
    process pool, multiprocessing's resource tracker, the temporary Prefect server, a local dask cluster's workers).

    The processes are recognised as this process's descendants while it lives, and by the token
    (:data:`REAPER_TOKEN`) this sets in the environment they inherit.
    """
    token = f"{os.getpid()}-{os.urandom(8).hex()}"
    if os.environ.get(REAPER_TOKEN, "").startswith(f"{os.getpid()}-"):
        return  # this process has its watchdog
    os.environ[REAPER_TOKEN] = token
    subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid()), token], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _process_bound_server_class() -> type:
    """Prefect's :class:`SubprocessASGIServer` whose server process is bound to this one (:data:`_BIND_SHIM`)."""
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class ProcessBoundServer(SubprocessASGIServer):
        """Prefect's temporary server (same command, same environment) that dies with the process that started it."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            command = ["-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                       "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                       "--log-level", "error", "--lifespan", "on"]
            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
            return subprocess.Popen([sys.executable, "-c", _BIND_SHIM, str(os.getpid()), *command], env=env)

    return ProcessBoundServer


def temporary_server() -> str | None:
    """Start Prefect's temporary server for this process unless ``PREFECT_API_URL`` names a server or one is already
    running here; return the API URL it serves (None when a configured server is used).

    The server is Prefect's own (:class:`prefect.server.api.server.SubprocessASGIServer`, which Prefect's clients
    then find and use) but bound to this process: it stops when the process exits — normally (Prefect's atexit
    hook), on an exception, or killed by SIGKILL (Linux: the kernel's parent-death signal). It is started from a
    thread that lives as long as the process, since the kernel ties that signal to the starting thread. Raises
    :class:`ClusterMassError` when it does not come up.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    current = SubprocessASGIServer._instances.get(None)
    if current is not None and current.running:
        return current.api_url
    SubprocessASGIServer._instances.pop(None, None)
    server = _process_bound_server_class()()  # registered as the instance Prefect's clients use
    started = threading.Event()
    failure: list[BaseException] = []

    def keep() -> None:
        try:
            server.start()
        except BaseException as exc:  # reported by the caller, as one line
            failure.append(exc)
        finally:
            started.set()
        if not failure:
            threading.Event().wait()  # the parent-death signal follows this thread: it must outlive the run

    threading.Thread(target=keep, name="clustermass-prefect-server", daemon=True).start()
    started.wait()
    if failure:
        SubprocessASGIServer._instances.pop(None, None)
        first = (str(failure[0]).strip().splitlines() or [type(failure[0]).__name__])[0]
        raise ClusterMassError(f"Prefect's temporary server did not start ({first}); set PREFECT_API_URL to a "
                               "running server (`prefect server start`) or raise "
                               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    return server.api_url


@flow(name="mass_catalog_scheduled",
      description="mass_catalog with the task runner of its configuration's [runner] section (for deployments).")
def scheduled_mass_catalog(config: str, out: str | None = None) -> dict[str, Any]:
    """The deployment entrypoint: a worker imports this afresh, so it applies ``[runner]`` itself (a subflow)."""
    return run(config, out)

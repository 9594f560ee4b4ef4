"""Where the flow's tasks run: the Prefect task runner built from the ``[runner]`` section of the configuration.

``kind = "threads"``
    :class:`prefect.task_runners.ThreadPoolTaskRunner` in the flow's process (``workers`` concurrent tasks).
``kind = "dask"``
    :class:`prefect_dask.DaskTaskRunner`: a running scheduler at ``address``, or else a local cluster of *threads*
    (one in-process worker with ``workers`` threads). Not worker processes: a worker process that has no
    ``PREFECT_API_URL`` starts its own temporary Prefect server.
``kind = "slurm"``
    :class:`prefect_dask.DaskTaskRunner` over a ``dask_jobqueue.SLURMCluster``: the dask scheduler runs in the
    flow's process and adapts between 1 and ``jobs`` SLURM jobs of dask workers (``pip install 'clustermass[hpc]'``).
    The worker jobs inherit the submitting environment (sbatch's default), so point ``PREFECT_API_URL`` at a
    persistent Prefect server the compute nodes can reach.

Nothing here starts a cluster, a scheduler or a SLURM job: the runners start their clusters when a flow run enters
them, and :func:`slurm_job_script` only renders the script dask-jobqueue would submit.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pipeline.errors import ConfigError

RUNNER_KINDS = ("threads", "dask", "slurm")


@dataclass(frozen=True)
class RunnerSection:
    """``[runner]``: where the flow's tasks run: threads here, a dask cluster, or dask workers in SLURM jobs.

    Nothing here changes a result, only where and how fast it is computed (it is left out of every digest).
    """

    kind: str = "threads"  # threads | dask | slurm
    workers: int = 2  # threads: concurrent tasks; dask without address: local worker threads
    address: str = ""  # dask: a running scheduler (tcp://host:8786); empty starts a local cluster
    # slurm (dask-jobqueue SLURMCluster): one dask worker per job unless processes > 1
    jobs: int = 4  # SLURM jobs to start
    cores: int = 8  # cores per job
    processes: int = 1  # dask worker processes per job
    memory: str = "32GB"  # memory per job
    walltime: str = "02:00:00"
    queue: str = ""  # partition (#SBATCH -p)
    account: str = ""  # #SBATCH -A
    job_extra_directives: list[str] = field(default_factory=list)  # more #SBATCH lines, e.g. ["--constraint=cpu"]
    job_script_prologue: list[str] = field(default_factory=list)  # shell lines before the worker starts
    local_directory: str = ""  # worker scratch (node-local disk); empty: dask's default
    log_directory: str = ""  # where SLURM writes job logs
    python: str = ""  # interpreter on the nodes; empty: this one

    def __post_init__(self) -> None:
        if self.kind not in RUNNER_KINDS:
            raise ConfigError(f"kind must be one of {list(RUNNER_KINDS)}, got {self.kind!r}")
        if min(self.workers, self.jobs, self.cores, self.processes) < 1:
            raise ConfigError("workers, jobs, cores and processes must be >= 1")
        if self.address and self.kind != "dask":
            raise ConfigError(f"address is for kind = \"dask\", not {self.kind!r}")

SLURM_JOB_NAME = "clustermass"  # #SBATCH -J: how the worker jobs show in squeue
SLURM_CLUSTER_CLASS = "dask_jobqueue.SLURMCluster"
_SCHEDULER_PLACEHOLDER = "tcp://<scheduler>:8786"  # the real address is known only once the scheduler listens

_HINTS = {
    "prefect_dask": "pip install prefect-dask (a dependency of clustermass: pip install -c constraints.txt -e .)",
    "dask_jobqueue": "pip install 'clustermass[hpc]' (dask-jobqueue)",
}


def _require(module: str, kind: str) -> ModuleType:
    """Import ``module`` for runner kind ``kind``, or raise :class:`ConfigError` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"[runner] kind = {kind!r} needs {module.replace('_', '-')}, which cannot be imported "
                          f"({exc}); {_HINTS[module]}") from None


def task_runner(section: RunnerSection) -> Any:
    """The Prefect task runner for ``section`` (not started: its cluster, if any, starts with the flow run).

    Returns a :class:`prefect.task_runners.ThreadPoolTaskRunner` (``threads``) or a
    :class:`prefect_dask.DaskTaskRunner` (``dask``, ``slurm``). Raises :class:`ConfigError` when the kind is
    unknown or its packages (prefect-dask, dask-jobqueue) cannot be imported.
    """
    if section.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=section.workers)
    prefect_dask = _require("prefect_dask", section.kind)
    if section.kind == "dask":
        if section.address:
            return prefect_dask.DaskTaskRunner(address=section.address)
        return prefect_dask.DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(section))
    _require("dask_jobqueue", section.kind)
    return prefect_dask.DaskTaskRunner(
        cluster_class=SLURM_CLUSTER_CLASS,
        cluster_kwargs=slurm_cluster_kwargs(section),
        # *_jobs counts SLURM jobs; dask-jobqueue's minimum/maximum count dask workers (jobs x processes)
        adapt_kwargs={"minimum_jobs": 1, "maximum_jobs": section.jobs},
    )


def local_cluster_kwargs(section: RunnerSection) -> dict[str, Any]:
    """``distributed.LocalCluster`` keyword arguments for ``kind = "dask"`` without an address.

    One worker in the flow's process with ``section.workers`` threads (``processes=False``), no dashboard;
    ``local_directory`` (worker scratch) when set.
    """
    kwargs: dict[str, Any] = {
        "n_workers": 1,
        "threads_per_worker": section.workers,
        "processes": False,
        "dashboard_address": None,
    }
    if section.local_directory:
        kwargs["local_directory"] = section.local_directory
    return kwargs


def slurm_cluster_kwargs(section: RunnerSection) -> dict[str, Any]:
    """``dask_jobqueue.SLURMCluster`` keyword arguments for ``section`` (also those of its ``SLURMJob``).

    Per SLURM job: ``cores`` CPUs (``--cpus-per-task``), ``memory`` (e.g. ``"32GiB"``; dask reads ``GB`` as 10^9
    bytes and SLURM's ``--mem=...G`` as GiB, so ``"32GB"`` requests ``--mem=30G``), ``walltime`` (``HH:MM:SS``) and
    ``processes`` dask worker processes sharing them. ``queue`` (``-p``), ``account`` (``-A``), ``local_directory``
    and ``log_directory`` are passed only when set, so dask's own configuration (``jobqueue.slurm.*`` in
    ``~/.config/dask/jobqueue.yaml``, e.g. ``interface: ib0``) still applies to what the section leaves empty.
    ``python`` defaults to this interpreter (:data:`sys.executable`), which the compute nodes must be able to run.
    """
    kwargs: dict[str, Any] = {
        "job_name": SLURM_JOB_NAME,
        "cores": section.cores,
        "processes": section.processes,
        "memory": section.memory,
        "walltime": section.walltime,
        "job_extra_directives": list(section.job_extra_directives),
        "job_script_prologue": list(section.job_script_prologue),
        "python": section.python or sys.executable,
    }
    for key in ("queue", "account", "local_directory", "log_directory"):
        value = getattr(section, key)
        if value:
            kwargs[key] = value
    return kwargs


def slurm_job_script(section: RunnerSection) -> str:
    """The ``#SBATCH`` job script dask-jobqueue would submit for each worker job of ``section``.

    Rendered by dask-jobqueue itself (``SLURMJob.job_script()``, as ``SLURMCluster.job_script()`` does) without
    starting a scheduler, calling ``sbatch`` or creating ``log_directory``; the scheduler address reads
    ``tcp://<scheduler>:8786`` and the worker name ``dummy-name`` (both are filled in per job at run time).
    Raises :class:`ConfigError` when dask-jobqueue is not installed.
    """
    _require("dask_jobqueue", "slurm")
    from dask_jobqueue.slurm import SLURMJob

    kwargs = slurm_cluster_kwargs(section)
    log_directory = kwargs.pop("log_directory", None)
    if log_directory is None or os.path.isdir(log_directory):
        return _render_job(SLURMJob, kwargs, log_directory)
    # SLURMJob creates a missing log directory: render with an existing stand-in, then name the real one.
    with tempfile.TemporaryDirectory(prefix="clustermass-slurm-logs-") as standin:
        return _render_job(SLURMJob, kwargs, standin).replace(standin, log_directory)


def _render_job(job_cls: type, kwargs: dict[str, Any], log_directory: str | None) -> str:
    try:
        job = job_cls(scheduler=_SCHEDULER_PLACEHOLDER, name="dummy-name", log_directory=log_directory, **kwargs)
    except ValueError as exc:  # e.g. a memory string dask cannot parse
        raise ConfigError(f"[runner]: dask-jobqueue rejects the SLURM job settings: {exc}") from None
    return job.job_script()


def describe(section: RunnerSection) -> str:
    """One line saying where the flow's tasks run (for ``--dry-run`` and logs); imports nothing optional."""
    if section.kind == "threads":
        return f"threads: up to {section.workers} concurrent tasks in the flow's process"
    if section.kind == "dask":
        if section.address:
            return f"dask: the running scheduler at {section.address}"
        return f"dask: a local in-process cluster, 1 worker with {section.workers} threads"
    where = ", ".join(f"{label} {value}" for label, value in
                      (("partition", section.queue), ("account", section.account)) if value)
    per_worker = "" if section.processes == 1 else f", {section.processes} dask worker processes per job"
    return (f"slurm: dask workers in 1-{section.jobs} SLURM jobs ({where or 'default partition and account'}), "
            f"each {section.cores} cores, {section.memory}, walltime {section.walltime}{per_worker}")

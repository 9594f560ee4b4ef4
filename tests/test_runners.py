"""Task runners from [runner], the SLURM job script, and the scheduled deployment: no server, cluster or SLURM."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import cloudpickle
import pytest
import yaml
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows import deploy
from flows.config import load_config
from flows.runners import (
    RunnerSection,
    describe,
    local_cluster_kwargs,
    slurm_cluster_kwargs,
    slurm_job_script,
    task_runner,
)
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "configs" / "slurm.toml"


@flow(name="mass_catalog")
def stand_in(config: str | None = None, out: str | None = None) -> None:
    """The interface of flows.mass_catalog.mass_catalog, for tests that must not depend on that module."""


def slurm_section(tmp_path: Path, **changes: object) -> RunnerSection:
    values: dict[str, object] = dict(
        kind="slurm", jobs=6, cores=16, processes=2, memory="64GiB", walltime="04:30:00", queue="cpu-long",
        account="astro123", job_extra_directives=["--constraint=haswell", "--qos=normal"],
        job_script_prologue=["module load gcc", "export OMP_NUM_THREADS=1"],
        local_directory="$TMPDIR", log_directory=str(tmp_path / "logs"), python="/opt/cm/bin/python",
    )
    values.update(changes)
    return RunnerSection(**values)  # type: ignore[arg-type]


def slurm_section_kwargs(tmp_path: Path) -> dict[str, object]:
    """What ``slurm_section(tmp_path)`` must hand dask_jobqueue.SLURMCluster, written out by hand from it."""
    return {
        "job_name": "clustermass", "cores": 16, "processes": 2, "memory": "64GiB", "walltime": "04:30:00",
        "job_extra_directives": ["--constraint=haswell", "--qos=normal"],
        "job_script_prologue": ["module load gcc", "export OMP_NUM_THREADS=1"], "python": "/opt/cm/bin/python",
        "queue": "cpu-long", "account": "astro123", "local_directory": "$TMPDIR",
        "log_directory": str(tmp_path / "logs"),
    }


def write_config(tmp_path: Path, runner: str = 'kind = "threads"\nworkers = 3') -> Path:
    path = tmp_path / "run.toml"
    path.write_text(f'[output]\ndir = "runs/x"\n\n[runner]\n{runner}\n')
    return path


# --- task runners ---------------------------------------------------------------------------------------------


def test_threads_runner() -> None:
    runner = task_runner(RunnerSection(kind="threads", workers=5))
    assert isinstance(runner, ThreadPoolTaskRunner)
    assert runner._max_workers == 5


def test_dask_runner_with_address_connects_there() -> None:
    runner = task_runner(RunnerSection(kind="dask", address="tcp://10.0.0.5:8786"))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.0.0.5:8786"
    assert runner.cluster_class is None and runner.cluster_kwargs == {}


def test_dask_runner_without_address_is_a_local_cluster_of_threads(tmp_path: Path) -> None:
    runner = task_runner(RunnerSection(kind="dask", workers=4, local_directory=str(tmp_path)))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address is None and runner.cluster_class is None  # prefect-dask's default: LocalCluster
    assert runner.cluster_kwargs == {"n_workers": 1, "threads_per_worker": 4, "processes": False,
                                     "dashboard_address": None, "local_directory": str(tmp_path)}
    assert "local_directory" not in local_cluster_kwargs(RunnerSection(kind="dask"))
    assert runner._cluster is None and runner._client is None  # nothing started


def test_slurm_runner_passes_cluster_and_adapt_kwargs(tmp_path: Path) -> None:
    from dask_jobqueue import SLURMCluster

    section = slurm_section(tmp_path)
    runner = task_runner(section)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_class == "dask_jobqueue.SLURMCluster"
    assert runner.resolved_cluster_class is SLURMCluster
    assert runner.cluster_kwargs == slurm_section_kwargs(tmp_path)
    assert runner.adapt_kwargs == {"minimum_jobs": 1, "maximum_jobs": 6}
    assert runner._cluster is None and runner._client is None
    assert runner.duplicate() == runner  # what the flow engine enters for each run
    assert not (tmp_path / "logs").exists()


def test_slurm_cluster_kwargs(tmp_path: Path) -> None:
    assert slurm_cluster_kwargs(slurm_section(tmp_path)) == slurm_section_kwargs(tmp_path)
    bare = slurm_cluster_kwargs(RunnerSection(kind="slurm"))
    assert bare["python"] == sys.executable
    assert not {"queue", "account", "local_directory", "log_directory"} & set(bare)


def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kind must be one of"):
        task_runner(RunnerSection(kind="mpi"))


# --- the SLURM job script -------------------------------------------------------------------------------------


def test_slurm_job_script(tmp_path: Path) -> None:
    script = slurm_job_script(slurm_section(tmp_path))
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("-J clustermass", "-p cpu-long", "-A astro123", "--cpus-per-task=16", "--mem=64G",
                      "-t 04:30:00", "--constraint=haswell", "--qos=normal",
                      f"-e {tmp_path / 'logs'}/clustermass-%J.err", f"-o {tmp_path / 'logs'}/clustermass-%J.out"):
        assert f"#SBATCH {directive}" in lines, directive
    assert "module load gcc" in lines and "export OMP_NUM_THREADS=1" in lines
    worker = lines[-1]
    assert worker.startswith("/opt/cm/bin/python -m distributed.cli.dask_worker tcp://")
    assert "--nthreads 8" in worker and "--nworkers 2" in worker and "--memory-limit 32.00GiB" in worker
    assert "--local-directory $TMPDIR" in worker
    assert not (tmp_path / "logs").exists()  # rendering creates no log directory


def test_slurm_job_script_defaults_to_this_python_and_site_defaults() -> None:
    script = slurm_job_script(RunnerSection(kind="slurm", memory="32GB"))
    assert f"{sys.executable} -m distributed.cli.dask_worker" in script
    assert "#SBATCH --mem=30G" in script  # dask's GB is 10^9 bytes; SLURM's G is GiB
    assert "#SBATCH -p" not in script and "#SBATCH -A" not in script


def test_bad_memory_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="dask-jobqueue rejects"):
        slurm_job_script(RunnerSection(kind="slurm", memory="lots"))


def test_missing_dask_jobqueue_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # makes `import dask_jobqueue` raise ImportError
    monkeypatch.setitem(sys.modules, "dask_jobqueue.slurm", None)
    section = slurm_section(tmp_path)
    for call in (task_runner, slurm_job_script):
        with pytest.raises(ConfigError, match=r"needs dask-jobqueue.*pip install 'clustermass\[hpc\]'"):
            call(section)
    assert describe(section).startswith("slurm:")  # describing needs no optional package


def test_missing_prefect_dask_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prefect_dask", None)
    for kind in ("dask", "slurm"):
        with pytest.raises(ConfigError, match="needs prefect-dask"):
            task_runner(RunnerSection(kind=kind))
    assert isinstance(task_runner(RunnerSection(kind="threads")), ThreadPoolTaskRunner)


def test_describe() -> None:
    threads = describe(RunnerSection(kind="threads", workers=3))
    assert threads == "threads: up to 3 concurrent tasks in the flow's process"
    assert "tcp://h:8786" in describe(RunnerSection(kind="dask", address="tcp://h:8786"))
    assert "4 threads" in describe(RunnerSection(kind="dask", workers=4))
    line = describe(RunnerSection(kind="slurm", jobs=3, cores=8, memory="16GiB", queue="cpu", processes=2))
    assert "1-3 SLURM jobs" in line and "partition cpu" in line and "8 cores" in line and "16GiB" in line
    assert "2 dask worker processes" in line


# --- the example configuration and prefect.yaml ---------------------------------------------------------------


def test_example_slurm_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.runner.kind == "slurm" and cfg.output.dir.resolve() == (ROOT / "runs" / "nightly").resolve()
    script = slurm_job_script(cfg.runner)
    assert "#SBATCH --mem=32G" in script and "#SBATCH --cpus-per-task=8" in script


def test_prefect_yaml_points_at_the_flow_and_the_example_config() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (dep,) = spec["deployments"]
    assert dep["name"] == "mass-catalog-nightly"
    assert dep["entrypoint"] == deploy.ENTRYPOINT
    assert load_config(ROOT / dep["parameters"]["config"]).runner.kind == "slurm"
    assert dep["schedules"] == [{"cron": "0 3 * * *", "timezone": "UTC", "active": True}]
    assert dep["work_pool"]["name"] == "clustermass-slurm"


# --- deployments ----------------------------------------------------------------------------------------------


def test_build_deployment_needs_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens: any request would fail
    config = write_config(tmp_path)
    dep = deploy.build_deployment(config, name="nightly-test", cron="30 2 * * 1-5", timezone="Europe/Madrid",
                                  out=tmp_path / "run", flow=stand_in)
    assert dep.name == "nightly-test" and dep.flow_name == "mass_catalog"
    assert dep.parameters == {"config": str(config.resolve()), "out": str((tmp_path / "run").resolve())}
    (item,) = dep.schedules
    assert (item.schedule.cron, item.schedule.timezone, item.active) == ("30 2 * * 1-5", "Europe/Madrid", True)
    assert dep.entrypoint.endswith("test_runners.py:stand_in")
    assert "runner:threads" in dep.tags


def test_deployment_options_defaults(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    options = deploy.deployment_options(config)
    assert options["name"] == "mass-catalog-nightly"
    assert (options["schedule"].cron, options["schedule"].timezone) == ("0 3 * * *", "UTC")
    assert options["parameters"] == {"config": str(config.resolve())}  # out: the config's [output] dir


def test_configured_flow_carries_the_runner_through_pickling() -> None:
    configured = deploy.configured_flow(load_config(EXAMPLE), stand_in)
    assert isinstance(configured.task_runner, DaskTaskRunner)
    # flow.serve runs each flow run in a subprocess that gets the flow cloudpickled
    clone = cloudpickle.loads(cloudpickle.dumps(configured))
    assert clone.task_runner == configured.task_runner
    assert clone.task_runner.cluster_class == "dask_jobqueue.SLURMCluster"


@pytest.mark.parametrize(("cron", "timezone", "message"), [
    ("0 3 * *", "UTC", "Invalid cron string"),
    ("0 3 * * *", "Mars/Olympus_Mons", "Invalid timezone"),
])
def test_bad_schedule_is_a_config_error(tmp_path: Path, cron: str, timezone: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        deploy.build_deployment(write_config(tmp_path), cron=cron, timezone=timezone, flow=stand_in)


def test_build_deployment_of_mass_catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    dep = deploy.build_deployment(EXAMPLE)  # served: the flow object itself, carrying its task runner
    assert dep.entrypoint == "flows/mass_catalog.py:mass_catalog" and dep.flow_name == "mass_catalog"
    assert dep.parameters == {"config": str(EXAMPLE)}
    # for workers, the entrypoint that applies [runner] itself
    from flows.mass_catalog import scheduled_mass_catalog

    dep = deploy.build_deployment(EXAMPLE, flow=scheduled_mass_catalog)
    assert dep.entrypoint == deploy.ENTRYPOINT and dep.flow_name == "mass_catalog_scheduled"


def test_print_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "flows.mass_catalog", types.SimpleNamespace(mass_catalog=stand_in))
    rc = deploy.main(["--config", str(EXAMPLE), "--print", "--cron", "15 4 * * *", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "mass_catalog/mass-catalog-nightly" in out and "cron '15 4 * * *' (UTC)" in out
    assert f'"out": "{tmp_path.resolve()}"' in out
    assert "slurm: dask workers in 1-4 SLURM jobs" in out and "#SBATCH --cpus-per-task=8" in out


def test_cli_bad_schedule_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert deploy.main(["--config", str(write_config(tmp_path)), "--cron", "every night"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: schedule 'every night'")


def test_cli_bad_runner_kind_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, 'kind = "mpi"')
    assert deploy.main(["--config", str(config), "--print"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[runner] kind: expected one of ['threads', 'dask', 'slurm'], got 'mpi'" in err[0]


def test_cli_missing_config_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "flows.deploy", "--config", str(tmp_path / "missing.toml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {tmp_path / 'missing.toml'}: configuration file not found"


def test_cluster_kwargs_are_copies(tmp_path: Path) -> None:
    section = slurm_section(tmp_path)
    kwargs = slurm_cluster_kwargs(section)
    kwargs["job_extra_directives"].append("--exclusive")  # e.g. a caller adding a directive
    assert section.job_extra_directives == ["--constraint=haswell", "--qos=normal"]

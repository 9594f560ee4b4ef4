"""``[runner] kind = "slurm"`` for real: a tiny ``clustermass run`` whose tasks run in dask workers of ``sbatch`` jobs.

Needs a working SLURM whose jobs see this machine's filesystem (this interpreter, the temporary directories) and can
reach this machine over TCP: on one machine, ``sudo .ci/slurm-setup.sh`` sets up a single-node SLURM, and
``make test-slurm`` runs this module (CI does both). Skipped, with the reason, when there is no SLURM client, the
controller does not answer, no node is idle, or a probe job cannot run this interpreter, reach the session's
Prefect server and write to this machine's temporary folder; with ``CLUSTERMASS_REQUIRE_SLURM=1`` (set by
``make test-slurm``) those are failures instead, so CI cannot skip it silently.

The flow process talks to the session's temporary Prefect server (``prefect_harness``); the worker jobs inherit
``PREFECT_API_URL`` and the rest of the environment from the ``clustermass run`` that submits them (``sbatch``'s
default ``--export=ALL``), which the job script's prologue echoes into the job's log for the test to check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from catalogs.io import read_catalog

pytest.importorskip("dask_jobqueue", reason="[runner] kind = \"slurm\" needs dask-jobqueue (clustermass[hpc])")

JOB_NAME = "clustermass"  # flows.runners.SLURM_JOB_NAME: what dask-jobqueue's jobs are called in squeue
RUN_TIMEOUT = 600  # seconds for one `clustermass run` (about 90 s on 2 shared cores)
PROBE_TIMEOUT = 120  # seconds for the probe job to be scheduled and finish
REQUIRE = os.environ.get("CLUSTERMASS_REQUIRE_SLURM", "") not in ("", "0")
SETUP_HINT = "sudo .ci/slurm-setup.sh starts a single-node SLURM here"


def no_slurm(reason: str) -> None:
    """Skip the test for want of a working SLURM; fail instead under CLUSTERMASS_REQUIRE_SLURM=1."""
    message = f"no working SLURM: {reason} ({SETUP_HINT})"
    if REQUIRE:
        pytest.fail(f"CLUSTERMASS_REQUIRE_SLURM is set but there is {message}")
    pytest.skip(message)


def slurm_command(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def our_jobs(comment: str) -> list[str]:
    """Ids of this user's queued or running jobs with ``--comment=comment`` (not those of a test running alongside)."""
    proc = slurm_command("squeue", "-h", "-u", str(os.getuid()), "-t", "PENDING,RUNNING", "-o", "%i %k")
    rows = [line.split(maxsplit=1) for line in proc.stdout.splitlines()] if proc.returncode == 0 else []
    return [row[0] for row in rows if row[1:] == [comment]]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    """An idle SLURM node's name, once a job there ran this interpreter and reached the Prefect server."""
    missing = [tool for tool in ("sinfo", "sbatch", "squeue", "scancel", "scontrol") if shutil.which(tool) is None]
    if missing:
        no_slurm(f"{', '.join(missing)} not on PATH")
    try:
        ping = slurm_command("scontrol", "ping")
        if ping.returncode != 0 or "UP" not in ping.stdout:
            answer = (ping.stdout + ping.stderr).strip().splitlines()
            no_slurm(f"the controller does not respond to 'scontrol ping' ({answer[0] if answer else 'no answer'})")
        idle = slurm_command("sinfo", "-h", "-N", "-t", "idle,mixed", "-o", "%N")
    except subprocess.TimeoutExpired as exc:
        no_slurm(f"'{' '.join(exc.cmd)}' did not answer in {exc.timeout:g} s")
    nodes = idle.stdout.split()
    if idle.returncode != 0 or not nodes:
        no_slurm(f"no idle node in 'sinfo -N' ({(idle.stdout + idle.stderr).strip() or 'none'})")

    # A job must run this interpreter, import the project, reach the Prefect server (the harness's, on 127.0.0.1:
    # a SLURM on this machine) and write to this machine's temporary folder.
    request.getfixturevalue("prefect_harness")  # only now: it takes seconds to start
    from prefect.settings import PREFECT_API_URL

    probe = tmp_path_factory.mktemp("slurm-probe")
    script = probe / "probe.py"
    script.write_text(f"#!{sys.executable}\nimport urllib.request\nimport distributed, flows.runners\n"
                      f"urllib.request.urlopen({PREFECT_API_URL.value() + '/health'!r}, timeout=20)\n"
                      f"open({str(probe / 'ok')!r}, 'w').write('ok')\n")
    submit = slurm_command("sbatch", "--parsable", "-J", "clustermass-probe", "-c", "1", "--mem=100M",
                           "-t", "00:05:00", "-D", str(probe), "-o", str(probe / "probe-%j.log"), str(script))
    if submit.returncode != 0:
        no_slurm(f"sbatch refused a one-core probe job: {submit.stderr.strip()}")
    job = submit.stdout.strip().split(";")[0]
    deadline = time.monotonic() + PROBE_TIMEOUT
    while time.monotonic() < deadline and job in slurm_command("squeue", "-h", "-j", job, "-o", "%i").stdout.split():
        time.sleep(0.5)
    if not (probe / "ok").exists():
        slurm_command("scancel", job)
        logs = " ".join(p.read_text().strip() for p in probe.glob("probe-*.log"))
        no_slurm(f"probe job {job} did not run {sys.executable}, reach the Prefect server at "
                 f"{PREFECT_API_URL.value()} and write to {probe} within {PROBE_TIMEOUT} s ({logs or 'no job log'})")
    return nodes[0]


def assert_same_catalogs(a: Path, b: Path) -> None:
    """Every column of catalog.h5 and catalog.fits identical, bit for bit; provenance equal but for its time."""
    for name in ("catalog.h5", "catalog.fits"):
        ta, tb = read_catalog(a / name), read_catalog(b / name)
        assert ta.colnames == tb.colnames and len(ta) == len(tb) > 0, name
        for col in ta.colnames:
            np.testing.assert_array_equal(np.asarray(ta[col]), np.asarray(tb[col]), err_msg=f"{name}:{col}")
        pa, pb = ta.meta["provenance"], tb.meta["provenance"]
        assert {k: v for k, v in pa.items() if k != "created"} == {k: v for k, v in pb.items() if k != "created"}


def test_slurm_runner_runs_the_flow_in_sbatch_jobs_with_the_same_catalogs(
        slurm: str, tmp_path: Path, tiny_run_config: str) -> None:
    from prefect.settings import PREFECT_API_URL

    from flows.mass_catalog import run

    # the reference: the same configuration on the threads runner, in this process
    threads_cfg = tmp_path / "threads.toml"
    threads_cfg.write_text(tiny_run_config + '[runner]\nkind = "threads"\nworkers = 2\n')
    reference = run(threads_cfg, tmp_path / "threads")
    assert {rec["state"] for rec in reference["stages"].values()} == {"Completed"}

    logs = tmp_path / "slurm-logs"
    comment = f"clustermass-test-{uuid.uuid4().hex[:12]}"  # marks this run's worker jobs
    slurm_cfg = tmp_path / "slurm.toml"
    slurm_cfg.write_text(tiny_run_config + textwrap.dedent(f"""\
        [runner]
        kind = "slurm"
        jobs = 2  # adapt between 1 and 2 jobs: tasks may run in either, and jobs come and go (3 in all is usual)
        cores = 1
        processes = 1
        memory = "3GiB"
        walltime = "00:20:00"
        log_directory = "{logs}"
        job_extra_directives = ["--comment={comment}"]
        local_directory = "{tmp_path / 'worker-scratch'}"
        job_script_prologue = ['echo "clustermass-test: PREFECT_API_URL=$PREFECT_API_URL on $(hostname)"']
        """))
    api_url = PREFECT_API_URL.value()  # the harness's server: the flow process and the worker jobs report there
    assert api_url
    # the jobs compile for themselves: no session compilation cache (tests/conftest.py) holding the reference's programs
    env = {**{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}, "PREFECT_API_URL": api_url,
           "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "slurm"
    try:
        proc = subprocess.run([sys.executable, "-m", "clustermass", "run", "--config", str(slurm_cfg), "--out",
                               str(out), "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)
    finally:
        left = our_jobs(comment)  # dask-jobqueue cancels its jobs when the flow ends; make sure of it
        if left:
            slurm_command("scancel", *left)
    job_logs = sorted(logs.glob(f"{JOB_NAME}-*.out"))
    job_log_text = {p.name: "".join(f.read_text() for f in (p, p.with_suffix(".err")) if f.exists()) for p in job_logs}
    diagnostics = (f"clustermass run exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n"
                   f"{proc.stderr[-3000:]}\n" + "".join(f"--- {name}\n{text[-2000:]}\n"
                                                      for name, text in job_log_text.items()))
    assert proc.returncode == 0, diagnostics
    assert f"run directory: {out}" in proc.stdout

    # the stages ran, in worker processes of SLURM jobs that inherited the Prefect server's address
    summary = json.loads((out / "run.json").read_text())
    assert {rec["state"] for rec in summary["stages"].values()} == {"Completed"}, summary["stages"]
    assert summary["stages"]["features-region"]["tasks"] == reference["stages"]["features-region"]["tasks"]
    joined = [text for text in job_log_text.values() if "Registered to:" in text]  # a worker joined the scheduler
    assert joined, f"no dask worker of a SLURM job registered (logs in {logs})\n{diagnostics}"
    for text in joined:
        assert f"clustermass-test: PREFECT_API_URL={api_url} on " in text, diagnostics
    assert list((tmp_path / "worker-scratch").iterdir())  # [runner] local_directory reached the workers
    assert not left, f"worker jobs {left} were still queued or running after the run"

    assert_same_catalogs(tmp_path / "threads", out)

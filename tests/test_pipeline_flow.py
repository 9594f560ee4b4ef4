"""The Prefect flow `mass_catalog` end to end on a tiny synthetic box: outputs, caching, invalidation, resume, a
cache that travels with its run directory and holds data only (issue 14).

One temporary Prefect server serves the module (``prefect_harness``). Cache behaviour is asserted on the final
states of the task runs (``Cached`` / ``Completed``), which the flow reports per stage in its summary and which
are checked once against Prefect's API too — never on timings.
"""

from __future__ import annotations

import base64
import builtins
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from catalogs.io import read_catalog
from flows.keys import check_record
from flows.mass_catalog import RESULTS_DIR, STAGES, run
from pipeline.errors import ConfigError, InputError, OutputError

pytestmark = pytest.mark.usefixtures("prefect_harness")

SPEC_COLUMNS = ["cluster_id", "los", "n_members", "sigma_v", "log10_m200c_mode", "log10_m200c_median",
                "log10_m200c_mean", "log10_m200c_p16", "log10_m200c_p84", "log10_m200c_p025", "log10_m200c_p975",
                "log10_m200c_uncorrected_mode", "log10_m200c_uncorrected_mean", "log10_m200c_pdf",
                "log10_m200c_true"]
UPSTREAM = ("synth", "ingest")
FEATURES_AND_AFTER = ("features-plan", "features-region", "features-assemble", "train", "catalogs", "validate")


def states(summary: dict) -> dict[str, str]:
    return {stage: rec["state"] for stage, rec in summary["stages"].items()}


def prefect_api_url() -> str:
    """The URL of the session's temporary Prefect server (``prefect_harness``), for a command this test starts."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "no Prefect server in this session"
    return url


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_run_config):
    """(config path, run directory, summary) of one uninterrupted run."""
    base = tmp_path_factory.mktemp("flow")
    cfg = base / "tiny.toml"
    cfg.write_text(tiny_run_config)
    out = base / "run"
    return cfg, out, run(cfg, out)


def assert_same_catalogs(a: Path, b: Path) -> None:
    for name in ("catalog.h5", "catalog.fits"):
        ta, tb = read_catalog(a / name), read_catalog(b / name)
        assert ta.colnames == tb.colnames and len(ta) == len(tb)
        for col in ta.colnames:
            np.testing.assert_array_equal(np.asarray(ta[col]), np.asarray(tb[col]), err_msg=f"{name}:{col}")
        pa, pb = ta.meta["provenance"], tb.meta["provenance"]
        assert {k: v for k, v in pa.items() if k != "created"} == {k: v for k, v in pb.items() if k != "created"}


def test_first_run_completes_every_stage_and_writes_the_spec_outputs(first_run):
    _, out, summary = first_run
    assert list(summary["stages"]) == list(STAGES)
    assert set(states(summary).values()) == {"Completed"}
    h5, fits = read_catalog(out / "catalog.h5"), read_catalog(out / "catalog.fits")
    assert h5.colnames == fits.colnames and set(SPEC_COLUMNS) <= set(h5.colnames)
    assert len(h5) == len(fits) == summary["catalog_rows"] == summary["validation"]["n_test"] > 0
    np.testing.assert_array_equal(h5["log10_m200c_mode"], fits["log10_m200c_mode"])
    assert h5.meta["provenance"]["target_prior"] == "flat" and h5.meta["provenance"]["config_digest"]
    for kind in ("flow", "mse", "dynamics/flow"):  # the default models: full flow, MSE baseline, dynamics flow
        assert (out / "model" / kind / "model.json").exists()
    assert {*SPEC_COLUMNS, "ood_score", "edge_mass", "flags", "model_inputs"} <= set(h5.colnames)
    import json

    metrics = json.loads((out / "validation" / "metrics.json").read_text())
    for key in ("scatter_dex", "bias_dex", "bias_by_bin", "coverage_68", "coverage_95", "msigma_scatter_dex",
                "msigma_bias_dex", "mse_regression_bias_by_bin", "n_test"):
        assert key in metrics
    for png in ("predicted_vs_true", "bias_scatter_by_bin", "coverage", "pit", "example_posteriors"):
        assert (out / "validation" / f"{png}.png").stat().st_size > 1000
    ingest = json.loads((out / "ingest" / "summary.json").read_text())
    assert ingest["halos"]["rows"] > ingest["halos"]["distinct"] > 0 and ingest["snapshot"]["box_size"] == 110.0
    assert json.loads((out / "run.json").read_text())["stages"] == summary["stages"]
    assert summary["train_models"] == ["flow", "mse"]  # the configuration as resolved (CPU: no set model)
    assert not list(out.rglob("*.partial")) and not list(out.rglob("bucket-*.bin"))


def test_second_run_hits_the_cache_for_every_stage(first_run):
    cfg, out, _ = first_run
    summary = run(cfg, out)
    assert states(summary) == dict.fromkeys(STAGES, "Cached")
    # the same, straight from Prefect's record of the task runs of that flow run
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[summary["flow_run_id"]])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200)
    assert task_runs and {tr.state.name for tr in task_runs} == {"Cached"}
    assert {tr.name.rsplit("-", 1)[0] for tr in task_runs} == set(STAGES)


def copy_run(src: Path, dst: Path) -> Path:
    """``cp -a``: the run directory elsewhere, with its files' modification times."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def test_a_copied_run_directory_keeps_its_cache_and_a_changed_cylinder_reruns_features_and_after(first_run,
                                                                                                   tmp_path):
    cfg, out, _ = first_run
    work = copy_run(out, tmp_path / "run")
    first = run(cfg, work)
    assert states(first) == dict.fromkeys(STAGES, "Cached")  # keys and results hold no absolute run directory
    assert first["outputs"]["catalog_h5"] == str(work.resolve() / "catalog.h5")
    changed = tmp_path / "changed.toml"
    changed.write_text(cfg.read_text().replace("min_members = 5", "min_members = 5\nr_aperture = 1.4"))
    summary = run(changed, work)
    s = states(summary)
    assert all(s[k] == "Cached" for k in UPSTREAM), s
    assert all(s[k] == "Completed" for k in FEATURES_AND_AFTER), s
    assert read_catalog(work / "catalog.h5").meta["provenance"]["config_digest"] != \
        read_catalog(out / "catalog.h5").meta["provenance"]["config_digest"]
    assert len(list((work / "features").iterdir())) == 1  # the superseded plan is gone


def test_deleted_outputs_are_recomputed_not_trusted(first_run):
    cfg, out, _ = first_run
    (out / "catalog.fits").unlink()
    region = next((out / "features").glob("*/regions/*.npz"))
    region.unlink()
    summary = run(cfg, out)
    s = states(summary)
    assert s["catalogs"] == "Completed" and s["features-region"] == "Completed"
    assert summary["stages"]["features-region"]["cached"] == summary["stages"]["features-region"]["tasks"] - 1
    # the region's bytes came back identical, so nothing downstream of it re-ran
    assert s["features-assemble"] == s["train"] == s["validate"] == "Cached"
    assert region.exists() and (out / "catalog.fits").exists()


def test_killed_run_resumes_to_identical_catalogs(first_run, tmp_path):
    cfg, reference, _ = first_run
    out = tmp_path / "run"
    # the module's Prefect server, not a temporary one of its own (~8 s to start; a killed run taking its own server
    # with it is tests/test_flow_trust.py's)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_API_URL": prefect_api_url()}
    proc = subprocess.Popen([sys.executable, "-m", "clustermass", "run", "--config", str(cfg), "--out", str(out),
                             "--quiet"], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    partial = out / ".model.partial"
    while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_during_training = partial.exists() and proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_during_training, proc.stderr.read().decode()[-2000:]
    assert not (out / "catalog.h5").exists() and not (out / "model").exists()

    summary = run(cfg, out)
    s = states(summary)
    assert all(s[k] == "Cached" for k in ("synth", "ingest", "features-plan", "features-assemble")), s
    assert s["train"] == s["catalogs"] == s["validate"] == "Completed"
    assert not list(out.rglob("*.partial"))
    assert_same_catalogs(reference, out)


def test_bad_input_inside_the_flow_is_one_error_line_and_not_retried(tmp_path, tiny_box):
    import shutil

    import h5py

    (tmp_path / "box").mkdir()
    for name in ("halos.h5", "galaxies.h5"):  # a copy of the session's tiny box, one halo mass made negative
        shutil.copyfile(tiny_box / name, tmp_path / "box" / name)
    with h5py.File(tmp_path / "box" / "halos.h5", "r+") as fh:
        m = fh["m200c"][:]
        m[5] = -1.0
        fh["m200c"][:] = m
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[input]\nhalos = "box/halos.h5"\ngalaxies = "box/galaxies.h5"\n')
    proc = subprocess.run([sys.executable, "-m", "clustermass", "run", "--config", str(cfg), "--out",
                           str(tmp_path / "run"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'box' / 'halos.h5'}: column 'm200c', row 6: expected a non-negative mass [Msun/h], "
        "found -1"]
    assert not (tmp_path / "run" / "catalog.h5").exists()


def _raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


RETRIED = [OSError(errno.EIO, "Input/output error"), OSError(errno.ESTALE, "Stale file handle"),
           OSError(errno.EAGAIN, "Resource temporarily unavailable"), OSError(errno.EBUSY, "Device or resource busy"),
           OSError("Unable to synchronously read data (file read failed)"),  # h5py: no errno
           BlockingIOError(errno.EAGAIN, "would block"), InterruptedError(errno.EINTR, "interrupted"),
           TimeoutError("timed out"), ConnectionError("lost"), ConnectionResetError(errno.ECONNRESET, "reset"),
           ConnectionRefusedError(errno.ECONNREFUSED, "refused"), BrokenPipeError(errno.EPIPE, "broken pipe")]
FINAL = [ValueError("x"), KeyError("x"), TypeError("x"), ZeroDivisionError("x"), IndexError("x"),
         AttributeError("x"), AssertionError("x"), RuntimeError("x"), NotImplementedError("x"), MemoryError(),
         RecursionError("x"), ImportError("x"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), StopIteration(),
         KeyboardInterrupt(), SystemExit(1), None,
         InputError("halos.h5", "bad row"), ConfigError("expected an integer", key="seed"),
         OutputError("catalog.h5", "no space left on device"),
         OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
         OSError("Can't write data (file write failed: errno = 28, error message = 'No space left on device')"),
         RuntimeError("Can't flush: [Errno 28] No space left on device"),
         _raised_from(OSError(errno.EIO, "flush failed"), OSError(errno.ENOSPC, "No space left on device")),
         FileNotFoundError(errno.ENOENT, "No such file"), PermissionError(errno.EACCES, "Permission denied"),
         PermissionError(errno.EPERM, "Operation not permitted"), FileExistsError(errno.EEXIST, "File exists"),
         IsADirectoryError(errno.EISDIR, "Is a directory"), NotADirectoryError(errno.ENOTDIR, "Not a directory"),
         OSError(errno.EROFS, "Read-only file system"), OSError(errno.ELOOP, "Too many levels of symbolic links"),
         OSError(errno.ENAMETOOLONG, "File name too long")]


@pytest.mark.parametrize("exc", RETRIED, ids=repr)
def test_io_hiccups_are_retried(exc):
    from flows.tasks import retryable

    assert retryable(exc)


@pytest.mark.parametrize("exc", FINAL, ids=repr)
def test_bugs_bad_input_full_disks_and_wrong_paths_are_final(exc):
    from flows.tasks import retryable

    assert not retryable(exc)


def test_the_io_stages_retry_through_the_predicate():
    from flows.tasks import IO_RETRIES, transient

    class Failed:
        def __init__(self, exc):
            self.exc = exc

        def result(self, raise_on_failure=True):
            return self.exc

    assert IO_RETRIES["retries"] == 2 and IO_RETRIES["retry_condition_fn"] is transient
    assert transient(None, None, Failed(OSError(errno.EIO, "Input/output error")))
    assert not transient(None, None, Failed(ValueError("a bug")))


def test_a_programming_error_in_a_stage_fails_at_once(monkeypatch):
    """The real ingest task in a Prefect flow: a ValueError inside it runs once and is raised, where an EIO runs
    three times (the configured retries; delays zeroed for the contrast)."""
    from prefect import flow

    import flows.tasks as tasks

    calls: list[type] = []

    def failing(exc: BaseException):
        def open_catalogs(*args, **kwargs):
            calls.append(type(exc))
            raise exc
        return open_catalogs

    args = dict(run_dir="unused", halos="h.h5", galaxies="g.h5", halo_format=None, galaxy_format=None, snapshot=None,
                cuts={}, code="test")
    @flow(name="one-stage")
    def one_stage(stage) -> None:
        stage(inputs_digest=f"test-{time.time_ns()}", **args)  # a new digest: never served from a cache

    monkeypatch.setattr(tasks, "_open_catalogs", failing(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        one_stage(tasks.ingest_catalogs)
    assert calls == [ValueError]
    calls.clear()
    monkeypatch.setattr(tasks, "_open_catalogs", failing(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError, match="Input/output error"):
        one_stage(tasks.ingest_catalogs.with_options(retry_delay_seconds=0))
    assert calls == [OSError] * 3


def test_recompute_on_the_dask_runner_reruns_every_stage_to_the_same_catalogs(first_run, tmp_path):
    """`run --recompute` ignores a complete cache and refreshes it; [runner] kind = "dask" (a local cluster of
    threads) runs every stage to the same results."""
    cfg, reference, _ = first_run
    work = copy_run(reference, tmp_path / "run")
    dask_cfg = tmp_path / "dask.toml"
    dask_cfg.write_text(cfg.read_text() + '[runner]\nkind = "dask"\nworkers = 2\n')
    summary = run(dask_cfg, work, recompute=True)
    assert states(summary) == dict.fromkeys(STAGES, "Completed")
    assert_same_catalogs(reference, work)
    # every output was rewritten (new mtimes), so only refreshed cache records (new stamps) can serve this run
    assert states(run(cfg, work)) == dict.fromkeys(STAGES, "Cached")


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle from the run directory ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def test_pickles_planted_in_the_cache_run_nothing_and_are_recomputed(first_run, tmp_path):
    """Every cached result of a finished run replaced by a pickle that would create a marker file — in the forms
    Prefect's own storage unpickles (tests/test_flow_trust.py) — then a re-run: nothing runs, every stage
    recomputes, the catalogs are the same, and the rewritten cache serves the next run."""
    cfg, reference, _ = first_run
    work = copy_run(reference, tmp_path / "run")
    marker = tmp_path / "pwned"
    blob = pickle.dumps(Payload(marker))
    files = sorted(p for p in (work / RESULTS_DIR).iterdir() if p.is_file())
    assert len(files) >= len(STAGES)
    for i, f in enumerate(files):
        if i % 3 == 0:  # a pickle as Prefect's pickle serializer writes one (base64)
            f.write_bytes(base64.encodebytes(blob))
        elif i % 3 == 1:  # raw pickle opcodes before the record
            f.write_bytes(blob + f.read_bytes())
        else:  # a well-formed record that names the pickle serializer
            record = json.loads(f.read_bytes())
            record["metadata"]["serializer"] = {"type": "pickle", "picklelib": "pickle"}
            record["result"] = base64.encodebytes(blob).decode()
            f.write_text(json.dumps(record))
    summary = run(cfg, work)
    assert not marker.exists()
    assert states(summary) == dict.fromkeys(STAGES, "Completed")
    assert_same_catalogs(reference, work)
    assert states(run(cfg, work)) == dict.fromkeys(STAGES, "Cached")
    assert not marker.exists()

    def outputs(f: Path) -> dict:
        try:
            return json.loads(json.loads(check_record(f.read_bytes()))["result"])["outputs"]
        except ValueError:
            return {}

    assert any("box/halos.h5" in outputs(f) for f in files)  # the synth stage's planted record was overwritten

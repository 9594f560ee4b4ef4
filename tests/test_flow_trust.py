"""Trust in run directories: a cached result is data and can never run code; a killed run leaves no process behind.

Issue 14 (items 1 and 6). The payloads here are live: the control test shows Prefect's own storage executing them
(the pre-fix cache). Costs: the killed-run test ~18 s (2 cores; the interpreter and its own server starting); the
rest well under a second each.
The flow-level check (every cached result of a finished run replaced by such a payload, then a re-run) is in
tests/test_pipeline_flow.py, beside the run it reuses.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultStore

from flows.keys import RunResultStorage, StageResult, StageResultSerializer, check_record
from flows.mass_catalog import PROCESS_BOUND


class Payload:
    """Unpickling this creates ``marker`` (builtins.open): proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def genuine_record(key: str) -> bytes:
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata

    result = StageResult({"catalog.h5": [10, 20]}, "d" * 64, {"rows": 3})
    meta = ResultRecordMetadata(serializer=StageResultSerializer(), storage_key=key)
    return ResultRecord(metadata=meta, result=result).serialize()


def planted(kind: str, marker: Path, original: bytes) -> bytes:
    """A result file carrying a pickle that creates ``marker``, in the forms Prefect would unpickle."""
    blob = pickle.dumps(Payload(marker))
    if kind == "raw":  # pickle opcodes before the record
        return blob + original
    if kind == "base64":  # a pickle as Prefect's pickle serializer writes one: not JSON, so Prefect reads the file
        return base64.encodebytes(blob)  # with its fallback (pickle) serializer
    serializer = {"pickle": {"type": "pickle", "picklelib": "pickle"},
                  "cloudpickle": {"type": "pickle", "picklelib": "cloudpickle"}}[kind]
    record = {"metadata": {"storage_key": "k", "expiration": None, "serializer": serializer,
                           "prefect_version": "3.8.8", "storage_block_id": None},
              "result": base64.encodebytes(blob).decode()}
    return json.dumps(record).encode()


KINDS = ("raw", "base64", "pickle", "cloudpickle")
LIVE = KINDS[1:]  # the forms Prefect 3.8 unpickles (raw opcodes before a record fail its base64 decoding first)


@pytest.mark.parametrize("kind", LIVE)
def test_prefect_local_storage_runs_the_planted_pickle(tmp_path, kind):
    """The control: with Prefect's own LocalFileSystem storage, checking or reading the cache runs the payload
    (a record naming pickle runs on the existence check; a bare base64 pickle when read, through the fallback)."""
    marker = tmp_path / "pwned"
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "key").write_bytes(planted(kind, marker, genuine_record("key")))
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path / "store")))
    store.exists("key")
    assert marker.exists() == (kind != "base64")
    try:
        store.read("key")
    except Exception:  # the payload's return value is no result record
        pass
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_run_result_storage_refuses_the_planted_pickle_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "key").write_bytes(planted(kind, marker, genuine_record("key")))
    storage = RunResultStorage(basepath=str(tmp_path / "store"))
    for serializer in (None, StageResultSerializer()):  # whatever the store would fall back to
        store = ResultStore(result_storage=storage, **({"serializer": serializer} if serializer else {}))
        assert not store.exists("key")  # so the task recomputes (and overwrites the file)
        with pytest.raises(ValueError, match="refused as a cached result"):
            store.read("key")
    with pytest.raises(ValueError):
        storage.read_path("key")
    assert not marker.exists()


def test_run_result_storage_round_trips_genuine_records_atomically(tmp_path):
    storage = RunResultStorage(basepath=str(tmp_path))
    store = ResultStore(result_storage=storage, serializer=StageResultSerializer())
    record = store.create_result_record(StageResult({"a": [1, 2]}, "d", {"x": 1.5}), key="k")
    store.persist_result_record(record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temporary file left
    assert store.exists("k")
    assert store.read("k").result == StageResult({"a": [1, 2]}, "d", {"x": 1.5})
    with pytest.raises(TypeError):  # a task result that is not a StageResult cannot be persisted as data
        StageResultSerializer().dumps({"a": 1})
    # a failed task's exception is persisted (by Prefect, under a random key) as data, and never loaded back
    from pipeline.errors import InputError

    failure = StageResultSerializer().dumps(InputError("halos.h5", "bad row", row=3))
    assert json.loads(failure) == {"failure": {"type": "pipeline.errors.InputError",
                                               "message": "halos.h5: row 3: bad row"}}
    with pytest.raises(ValueError):
        StageResultSerializer().loads(failure)


def test_check_record_accepts_only_clustermass_json_records():
    good = genuine_record("k")
    assert check_record(good) == good
    doc = json.loads(good)
    variants = []
    for serializer in ({"type": "json"}, {"type": "pickle"}, {"type": "clustermass-stage-result", "x": 1}):
        variants.append({**doc, "metadata": {**doc["metadata"], "serializer": serializer}})
    variants.append({**doc, "extra": 1})
    variants.append({**doc, "metadata": {**doc["metadata"], "expiration": "2999-01-01T00:00:00Z"}})
    variants.append({**doc, "result": json.dumps({"outputs": {}, "digest": "d", "info": {}, "more": 1})})
    variants.append({**doc, "result": {"outputs": {}, "digest": "d", "info": {}}})
    for variant in variants:
        with pytest.raises(ValueError):
            check_record(json.dumps(variant).encode())
    for raw in (good[: len(good) // 2], b"", b"[" * 100000, b"\x80\x04K\x01."):
        with pytest.raises(ValueError):
            check_record(raw)


@pytest.mark.skipif(not PROCESS_BOUND, reason="the parent-death signal and /proc children lists are Linux's")
def test_a_killed_run_leaves_no_process_behind(tmp_path):
    """SIGKILL `clustermass run` once its temporary Prefect server is up and the synthetic box's worker processes
    are running: every process it started goes with it (the server, the workers, multiprocessing's resource
    tracker, the watchdog itself)."""
    cfg = tmp_path / "default.toml"
    # the default 800 Mpc/h box: 8 cells, generated by a pool of 2 processes. Not the tiny 110 Mpc/h box: one cell,
    # generated in the run's own process, so no worker process to see go. The box costs nothing here: the run is
    # killed as its pool starts; the ~15 s are the interpreter and the temporary server starting.
    cfg.write_text("[synth]\nworkers = 2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}  # its own temporary server
    proc = subprocess.Popen([sys.executable, "-m", "clustermass", "run", "--config", str(cfg), "--out",
                             str(tmp_path / "run"), "--quiet"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = psutil.Process(proc.pid)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        ready = False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            children = run.children(recursive=True)
            servers = [c for c in children if "uvicorn" in " ".join(_cmdline(c))]
            workers = [c for c in children if "spawn_main" in " ".join(_cmdline(c))]
            ready = bool(servers and workers) and _listening(servers[0])
        assert ready and proc.poll() is None, [_cmdline(c)[:3] for c in children]
        children = run.children(recursive=True)
        proc.kill()  # SIGKILL the run alone, not its process group
        proc.wait()
        _, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, [(p.pid, _cmdline(p)[:3]) for p in alive]
    finally:
        for p in children:
            if p.is_running():
                p.kill()
        if proc.poll() is None:
            proc.kill()


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _listening(p: psutil.Process) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN for c in p.net_connections(kind="tcp"))
    except psutil.Error:
        return False

"""A full disk: one line ``error: <file>: no space left on device``, status 2, no temporary left behind, no crash.

Writers are made to fail with ``OSError(errno.ENOSPC)`` at various points (patched), and on a real full file system
(a small tmpfs that root mounts), in a subprocess, where a crash (SIGSEGV, status 139, as HDF5 gave when it flushed
a failed file again at interpreter exit) would show. The tmpfs cases fail in CI (``CI=true``, root) when no tmpfs
can be mounted, and skip, with the reason, for a developer without root.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from clustermass.cli import main
from pipeline.errors import OutputError, no_space
from pipeline.files import atomic_output, hdf5_output, release_hdf5_partials, remove_partials, write_json

ROOT = Path(__file__).resolve().parents[1]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(directory: Path) -> list[str]:
    """Hidden temporaries anywhere under ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if ".partial" in p.name)


def open_hdf5_files() -> list[str]:
    names = []
    for fid in h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE):
        names.append(fid.name.decode() if isinstance(fid.name, bytes) else str(fid.name))
    return names


# --- the helpers of pipeline.files ------------------------------------------------------------------------------


def test_no_space_is_recognised_however_it_is_reported():
    assert no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert no_space(RuntimeError("Unable to flush (file write failed: ..., errno = 28, error message = 'No space "
                                 "left on device')"))
    wrapped = ValueError("writing failed")
    wrapped.__cause__ = ENOSPC
    assert no_space(wrapped)
    assert not no_space(OSError(errno.EACCES, "Permission denied")) and not no_space(ValueError("x"))


@pytest.mark.parametrize("directory", [False, True])
def test_atomic_output_removes_its_temporary_and_names_the_target(tmp_path, directory):
    target = tmp_path / ("out" if directory else "out.bin")
    with atomic_output(target, directory=directory) as tmp:
        (tmp / "a").write_text("old") if directory else tmp.write_text("old")
    for failure in (ENOSPC, ValueError("bad"), KeyboardInterrupt()):
        with pytest.raises((OutputError, ValueError, KeyboardInterrupt)) as err:
            with atomic_output(target, directory=directory) as tmp:
                (tmp / "a").write_text("new") if directory else tmp.write_text("new")
                raise failure
        if failure is ENOSPC:
            assert isinstance(err.value, OutputError) and str(err.value) == f"{target}: no space left on device"
        else:
            assert err.value is failure
        assert leftovers(tmp_path) == []
        assert (target / "a" if directory else target).read_text() == "old"  # the previous output is untouched


def test_write_json_on_a_full_disk(tmp_path, monkeypatch):
    target = write_json(tmp_path / "m.json", {"a": 1})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputError, match=r"m\.json: no space left on device$"):
        write_json(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1} and leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_at", [1, 3, "close"])
def test_hdf5_output_closes_and_deletes_a_failed_file(tmp_path, monkeypatch, fail_at):
    original_create, original_close = h5py.Group.create_dataset, h5py.File.close
    calls = {"create": 0, "close": 0}

    def create(self, *args, **kwargs):
        calls["create"] += 1
        if calls["create"] == fail_at:
            raise OSError(errno.ENOSPC, "Can't write data (file write failed: errno = 28, error message = 'No space "
                                        "left on device')")
        return original_create(self, *args, **kwargs)

    def close(self):
        calls["close"] += 1
        if fail_at == "close" and calls["close"] == 1:
            raise RuntimeError("Unable to flush (errno = 28, error message = 'No space left on device')")
        return original_close(self)

    monkeypatch.setattr(h5py.Group, "create_dataset", create)
    monkeypatch.setattr(h5py.File, "close", close)
    with pytest.raises(OutputError, match=r"x\.h5: no space left on device$"):
        with hdf5_output(tmp_path / "x.h5") as fh:
            for i in range(4):
                fh.create_dataset(f"d{i}", data=np.arange(1000), chunks=(100,))
                fh.flush()
    assert leftovers(tmp_path) == [] and not (tmp_path / "x.h5").exists()
    assert not [n for n in open_hdf5_files() if str(tmp_path) in n]  # nothing left for HDF5 to flush at exit


def test_release_and_remove_partials_are_the_command_lines_safety_net(tmp_path):
    old = tmp_path / ".older.partial"
    old.write_text("another run's")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    started = time.time()
    fh = h5py.File(tmp_path / ".left.h5.partial", "w")  # a writer that failed and kept its file open
    fh.create_dataset("x", data=np.arange(10))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".model.partial").mkdir()
    (tmp_path / "sub" / ".plot.partial.png").write_bytes(b"png")
    kept = tmp_path / "done.h5"
    kept.write_text("complete")
    assert release_hdf5_partials() == [tmp_path / ".left.h5.partial"]
    assert not fh.id.valid
    remove_partials(tmp_path, since=started)
    assert leftovers(tmp_path) == [".older.partial"] and kept.exists()


# --- observations ------------------------------------------------------------------------------------------------


def fake_observations(n: int = 40, members_per: int = 30):
    from features.cylinder import ObservationSpec
    from features.members import Members
    from features.observe import Observations
    from pipeline.cosmology import MDPL2
    from pipeline.snapshot import Snapshot

    rng = np.random.default_rng(1)
    offsets = np.arange(n + 1, dtype=np.int64) * members_per
    m = int(offsets[-1])
    members = Members(offsets, rng.random(m, dtype=np.float32), rng.normal(size=m).astype(np.float32),
                      rng.random(m, dtype=np.float32) + 10, np.arange(m, dtype=np.int64), rng.random(m) < 0.5)
    table = pd.DataFrame({"cluster_id": np.arange(n, dtype=np.int64), "los": np.zeros(n, dtype=np.int16),
                          "n_members": np.full(n, members_per)})
    return Observations(table, members, {"total": 0}, n, ObservationSpec(), Snapshot(100.0, 0.8951, MDPL2))


@pytest.mark.parametrize("where", ["parquet part 0", "parquet part 2", "members dataset 1", "members dataset 5",
                                   "members close"])
def test_write_observations_on_a_full_disk(tmp_path, monkeypatch, where):
    import pyarrow.parquet as pq

    from features.io import write_observations

    obs = fake_observations()
    write_observations(tmp_path, obs, rows_per_part=10)  # a previous, complete set
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "observations").iterdir()}
    members_before = (tmp_path / "members.h5").read_bytes()
    kind, _, k = where.rpartition(" ")
    counter = {"n": -1}
    original_parquet, original_create, original_close = pq.write_table, h5py.Group.create_dataset, h5py.File.close

    def failing(original, when):
        def call(*args, **kwargs):
            counter["n"] += 1
            if counter["n"] == when:
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(*args, **kwargs)
        return call

    if kind == "parquet part":
        monkeypatch.setattr(pq, "write_table", failing(original_parquet, int(k)))
        expected = tmp_path / "observations"
    elif kind == "members dataset":
        monkeypatch.setattr(h5py.Group, "create_dataset", failing(original_create, int(k)))
        expected = tmp_path / "members.h5"
    else:
        monkeypatch.setattr(h5py.File, "close", failing(original_close, 0))
        expected = tmp_path / "members.h5"
    with pytest.raises(OutputError) as err:
        write_observations(tmp_path, obs, rows_per_part=10)
    assert str(err.value) == f"{expected}: no space left on device"
    monkeypatch.undo()
    assert leftovers(tmp_path) == []  # neither .observations.partial/ nor .members.h5.partial
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "observations").iterdir()} == before
    assert (tmp_path / "members.h5").read_bytes() == members_before
    assert not [n for n in open_hdf5_files() if str(tmp_path) in n]


def test_region_and_plan_files_on_a_full_disk(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from features.io import write_region

    obs = fake_observations(4, 3)
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OutputError, match=r"region-1\.npz: no space left on device$"):
        write_region(tmp_path / "r" / "region-1.npz", obs.table, obs.members)
    monkeypatch.setattr(pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    from features.io import save_plan
    from features.observe import ObservationPlan

    plan = ObservationPlan(obs.table, obs.config, obs.snapshot, (), tmp_path / "r")
    with pytest.raises(OutputError, match=r"hosts\.parquet: no space left on device$"):
        save_plan(plan)
    assert leftovers(tmp_path) == []


# --- the command line --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("failure", "line"), [
    (lambda out: OSError(errno.ENOSPC, "No space left on device", str(out / "model" / "member-0.msgpack")),
     "{out}/model/member-0.msgpack: no space left on device"),
    (lambda out: RuntimeError(f"Unable to flush raw data (file write failed: time = now\n, filename = "
                              f"'{out}/.catalog.h5.partial', errno = 28, error message = 'No space left on device')"),
     "{out}/catalog.h5: no space left on device"),
    (lambda out: OSError(errno.ENOSPC, "No space left on device"), "{out}: no space left on device"),
    (lambda out: OutputError(out / "members.h5", "no space left on device"), "{out}/members.h5: no space left on "
                                                                             "device"),
])
def test_cli_reports_a_full_disk_in_one_line_and_cleans_up(tmp_path, monkeypatch, capsys, failure, line):
    import clustermass.cli as cli

    out = tmp_path / "m"
    out.mkdir()
    old = out / ".old.partial"
    old.write_text("not ours")
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    def cmd_train(args):
        (out / ".mdn.partial").mkdir()  # a writer that leaves its temporary
        (out / ".mdn.partial" / "member-0.msgpack").write_bytes(b"half")
        fh = h5py.File(out / ".stray.h5.partial", "w")  # ... and one that leaves an HDF5 file open
        fh.create_dataset("x", data=np.arange(3))
        raise failure(out)

    monkeypatch.setattr(cli, "cmd_train", cmd_train)
    code = main(["train", "--observations", str(tmp_path), "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and err == f"error: {line.format(out=out)}\n"
    assert leftovers(out) == [".old.partial"]  # ours removed, another run's kept
    assert not [n for n in open_hdf5_files() if str(out) in n]


# --- a real full disk: a small tmpfs (root, and a container that allows mounting) -----------------------------


def in_ci() -> bool:
    """Whether this is CI (``CI=true``, as .ci/run's environment sets it), which runs as root."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def cannot_mount(reason: str) -> None:
    """No tmpfs: a failure in CI (root there, so the real full-disk cases must run), a skip with the reason for a
    developer without root."""
    if in_ci():
        pytest.fail(f"CI must run the real full-disk tests, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path):
    """``make(size)``: a fresh tmpfs of ``size`` (e.g. "200k"), unmounted afterwards. Where it cannot be mounted:
    fails in CI, skips elsewhere (:func:`cannot_mount`)."""
    if os.geteuid() != 0:
        cannot_mount("mounting a tmpfs needs root")
    if shutil.which("mount") is None:
        cannot_mount("no mount command on PATH")
    mounted: list[Path] = []

    def make(size: str) -> Path:
        d = tmp_path / f"disk-{size}-{len(mounted)}"
        d.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                              text=True)
        if proc.returncode:
            cannot_mount(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_hdf5_output_on_a_real_full_disk_does_not_crash(small_disk, tmp_path):
    disk = small_disk("256k")
    proc = run_python(f"""
        import numpy as np
        from pipeline.errors import OutputError
        from pipeline.files import hdf5_output
        try:
            with hdf5_output({str(disk / 'big.h5')!r}) as fh:
                for i in range(40):
                    fh.create_dataset(f"d{{i}}", data=np.arange(20000.0), chunks=(5000,))
                    fh.create_dataset(f"c{{i}}", data=np.arange(300.0))  # small: HDF5 would buffer it
                    fh.flush()
        except OutputError as exc:
            print(exc)
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]  # not 139
    assert proc.stdout == f"{disk / 'big.h5'}: no space left on device\n" and proc.stderr == ""
    assert list(disk.iterdir()) == []


@pytest.mark.parametrize("size", ["40k", "150k", "300k"])
def test_observe_on_a_real_full_disk(small_disk, tiny_box, tmp_path, size):
    """Full while writing the Parquet parts (40k) or members.h5 (150k, 300k)."""
    disk = small_disk(size)
    proc = subprocess.run([sys.executable, "-m", "clustermass", "observe", "--halos", str(tiny_box / "halos.h5"),
                           "--galaxies", str(tiny_box / "galaxies.h5"), "--out", str(disk / "obs"), "--quiet",
                           "--regions", "2", "--min-members", "3", "--host-log10-m200c-min", "13.5"],
                          capture_output=True, text=True, timeout=300)  # the disk sizes fit the hosts above 10^13.5
    target = "observations" if size == "40k" else "members.h5"
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr == f"error: {disk / 'obs' / target}: no space left on device\n" and proc.stdout == ""
    assert leftovers(disk) == [] and not (disk / "obs" / "members.h5").exists()


def test_synth_on_a_real_full_disk(small_disk, tmp_path):
    disk = small_disk("5M")
    proc = subprocess.run([sys.executable, "-m", "clustermass", "synth", "--out", str(disk / "box"), "--box-size",
                           "110", "--log10-mmin", "11.5", "--quiet", "--workers", "1"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: {disk / 'box'}/") and proc.stderr.endswith(": no space left on device\n")
    assert proc.stderr.count("\n") == 1 and leftovers(disk) == []


@pytest.mark.parametrize("size", ["64k", "400k"])
def test_catalog_writer_on_a_real_full_disk(small_disk, tmp_path, size):
    disk = small_disk(size)
    proc = run_python(f"""
        import numpy as np
        from catalogs.io import write_catalog
        from catalogs.schema import REQUIRED, column
        from pipeline.errors import OutputError
        n, grid = 2000, np.linspace(13.0, 15.5, 256)
        cols = {{}}
        for name in REQUIRED:
            spec = column(name)
            cols[name] = (np.ones((n, len(grid)), spec.numpy_dtype) if spec.vector else
                          np.ones(n, spec.numpy_dtype))
        try:
            write_catalog({str(disk / 'catalog.h5')!r}, cols, grid, {{"code_version": "test"}})
        except OutputError as exc:
            print(exc)
        """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == f"{disk / 'catalog.h5'}: no space left on device\n"
    assert leftovers(disk) == []

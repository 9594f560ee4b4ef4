"""What keys the flow's cache: content digests (memoised), output stamps relative to the run directory, code
digests; and the data-only form of cached results."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from flows.keys import StageResult, code_digest, content_digest, intact, relative, stamp


def test_content_digest_follows_bytes_not_names_or_times(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x.dat").write_bytes(b"1234")
    (b / "x.dat").write_bytes(b"1234")
    os.utime(b / "x.dat", ns=(1, 1))
    assert content_digest([a], root=a) == content_digest([b], root=b)
    (b / "x.dat").write_bytes(b"1235")
    assert content_digest([a], root=a) != content_digest([b], root=b)
    (b / "x.dat").write_bytes(b"1234")
    (b / ".hidden.partial").write_bytes(b"half-written")  # temporary files are not content
    assert content_digest([a], root=a) == content_digest([b], root=b)


def _memo_entry(memo):
    (entry,) = json.loads(memo.read_text()).values()
    return entry


def test_content_digest_memo_is_used_while_the_file_is_untouched(tmp_path):
    run = tmp_path / "run"
    f, memo = tmp_path / "big.bin", run / ".prefect" / "digests.json"
    f.write_bytes(b"a" * 1000)
    first = content_digest([f], memo=memo)
    st = f.stat()
    entry = _memo_entry(memo)
    assert {k: entry[k] for k in ("size", "mtime_ns", "ctime_ns", "inode")} == \
        {"size": 1000, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
    # the remembered digest is used (not recomputed) while the file is untouched ...
    known = json.loads(memo.read_text())
    known[str(f.resolve())]["sha256"] = "0" * 64
    memo.write_text(json.dumps(known))
    assert content_digest([f], memo=memo) != first
    # ... and ignored with refresh (`clustermass run --recompute`)
    assert content_digest([f], memo=memo, refresh=True) == first


def test_content_digest_sees_a_rewrite_with_the_same_size_and_mtime(tmp_path):
    """A catalog rewritten in place with its size and mtime restored is not taken for the old one: the memo keys
    on ctime and inode too, and re-hashes the first and last MiB on every run."""
    f, memo = tmp_path / "catalog.bin", tmp_path / "run" / ".prefect" / "digests.json"
    rng = np.random.default_rng(0)
    f.write_bytes(rng.bytes(3 << 20))
    first = content_digest([f], memo=memo)
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[(3 << 20) // 2] ^= 0xFF  # one byte in the middle: only a full hash sees it
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert content_digest([f], memo=memo) == content_digest([f]) != first
    # a memo whose ctime was forged to match is still checked on the file's head and tail
    known = json.loads(memo.read_text())
    entry = known[str(f.resolve())]
    data[10] ^= 0xFF
    f.write_bytes(bytes(data))
    now = f.stat()
    entry.update(size=now.st_size, mtime_ns=now.st_mtime_ns, ctime_ns=now.st_ctime_ns, inode=now.st_ino)
    memo.write_text(json.dumps(known))
    assert content_digest([f], memo=memo) == content_digest([f])


def test_memo_entries_inside_the_run_directory_are_relative(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "m.json").write_text("{}")
    memo = run / ".prefect" / "digests.json"
    content_digest([run / "model"], memo=memo)
    assert list(json.loads(memo.read_text())) == ["model/m.json"]


def test_stamps_are_relative_to_the_run_directory_and_travel_with_it(tmp_path):
    import shutil

    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    f = run / "sub" / "out.h5"
    f.write_bytes(b"x")
    result = StageResult(stamp([run / "sub"], run), "d")
    assert list(result.outputs) == ["sub/out.h5"]
    assert intact(result, run)
    moved = tmp_path / "elsewhere"
    shutil.copytree(run, moved)  # copy2: sizes and modification times kept
    assert intact(result, moved)
    f.write_bytes(b"yy")
    assert not intact(result, run) and intact(result, moved)
    (moved / "sub" / "out.h5").unlink()
    assert not intact(result, moved)
    assert relative(run / "a" / "b", run) == "a/b"
    assert relative(tmp_path / "outside", run) == str(tmp_path / "outside")
    assert relative("already/relative", run) == "already/relative"


def test_intact_detects_deleted_and_rewritten_outputs(tmp_path):
    f = tmp_path / "out.h5"
    f.write_bytes(b"x")
    result = StageResult(stamp([tmp_path]), "d")
    assert intact(result)
    f.write_bytes(b"yy")
    assert not intact(result)
    result = StageResult(stamp([f]), "d")
    f.unlink()
    assert not intact(result)


def test_stage_results_are_plain_json_data():
    r = StageResult({"a.h5": [1, 2]}, "d", {"n": np.int64(3), "x": np.float32(0.5), "ok": np.bool_(True),
                                            "pair": (1, 2), "nan": float("nan")})
    assert r.info["pair"] == [1, 2] and type(r.info["n"]) is int and type(r.info["ok"]) is bool
    back = StageResult.from_json(r.to_json())
    assert back.outputs == r.outputs and back.digest == r.digest and back.info["x"] == 0.5
    from pathlib import Path

    for bad in ({"p": Path("x")}, {"a": np.zeros(3)}, {1: "x"}, {"f": print}):
        with pytest.raises(TypeError):
            StageResult({}, "d", bad)
    for text in ("[]", '{"outputs": {}, "digest": "d"}', '{"outputs": {"a": [1]}, "digest": "d", "info": {}}',
                 '{"outputs": {}, "digest": 1, "info": {}}', "\x80not json"):
        with pytest.raises(ValueError):
            StageResult.from_json(text)


def test_code_digest_follows_the_import_graph():
    assert code_digest("models.stage") != code_digest("features.observe")
    assert code_digest("models.stage") == code_digest("models.stage")
    # models.stage imports features.definitions (its feature names), so their union is models.stage's closure
    assert code_digest("models.stage", "features.definitions") == code_digest("models.stage")

"""What keys the flow's cache: content digests (memoised), output stamps, code digests."""

from __future__ import annotations

import json
import os

from flows.keys import StageResult, code_digest, content_digest, intact, stamp


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


def test_content_digest_memo_is_keyed_on_size_and_mtime(tmp_path):
    f, memo = tmp_path / "big.bin", tmp_path / "memo.json"
    f.write_bytes(b"a" * 1000)
    first = content_digest([f], memo=memo)
    known = json.loads(memo.read_text())
    assert next(iter(known.values()))[:2] == [1000, f.stat().st_mtime_ns]
    # a memo entry is used while size and mtime match ...
    entry = known[str(f.resolve())]
    entry[2] = "0" * 64
    memo.write_text(json.dumps(known))
    assert content_digest([f], memo=memo) != first
    # ... and recomputed when the file changes
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(10**18, 10**18))
    assert content_digest([f], memo=memo) == content_digest([f])


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


def test_code_digest_follows_the_import_graph():
    assert code_digest("models.stage") != code_digest("features.observe")
    assert code_digest("models.stage") == code_digest("models.stage")
    # models.stage imports features.definitions (its feature names), so their union is models.stage's closure
    assert code_digest("models.stage", "features.definitions") == code_digest("models.stage")

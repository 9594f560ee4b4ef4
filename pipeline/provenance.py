"""Provenance: code version, digests of configurations and files, timestamps — carried into every output."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline import __version__


def digest_json(obj: Any) -> str:
    """SHA-256 of a JSON-serialisable object in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def digest_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 over the bytes of several files, in the order given."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_digest(model_dir: str | os.PathLike[str]) -> str:
    """Digest of a model directory: its description (less wall-clock timings) and every parameter file.

    Training time is not part of a model's identity: retraining the same data with the same seeds gives the same
    digest.
    """
    d = Path(model_dir)
    description = _drop_timings(json.loads((d / "model.json").read_text()))
    return digest_json({"description": description,
                        "parameters": digest_files(sorted(d.glob("member-*.msgpack")))})


def _drop_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_timings(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_drop_timings(v) for v in obj]
    return obj


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def code_version() -> str:
    return f"clustermass {__version__}"

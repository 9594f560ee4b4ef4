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
    """Digest of a model directory: its description and every parameter file."""
    d = Path(model_dir)
    return digest_files([d / "model.json", *sorted(d.glob("member-*.msgpack"))])


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def code_version() -> str:
    return f"clustermass {__version__}"

"""Small files written whole: a temporary hidden name first, then an atomic rename (never a half-written file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int = 1) -> Path:
    """Write ``payload`` as JSON to ``path`` (parents created) via ``.<name>.partial`` and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(payload, indent=indent) + "\n")
    os.replace(tmp, path)
    return path

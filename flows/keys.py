"""What keys the flow's cached tasks: content digests of inputs, digests of code, stamps of outputs.

Prefect's cache policy (``INPUTS + TASK_SOURCE``) hashes a task's parameters and its own source. The flow passes
every task the *content digests* of the files it reads (never arrays) and :func:`code_digest` of the packages it
calls, so a task re-runs when its inputs' bytes or the code behind it change, and not otherwise.

A cached result is trusted only while the files it wrote are still those files: :class:`StageResult` carries
each output's (size, mtime_ns) :func:`stamp`, and the flow re-runs a task whose outputs were deleted or replaced
(:func:`intact`).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.imports import ROOT, closure, imports_in, module_file

_MEMO_LOCK = threading.Lock()


@dataclass(frozen=True)
class StageResult:
    """What a stage task returns (and Prefect persists): where its outputs are and what they hold.

    ``outputs``: {path: [size in bytes, mtime in ns]} of every file written; ``digest``: the SHA-256 identity of
    the stage's product that downstream tasks key on; ``info``: small JSON-able facts (paths, counts, metrics).
    """

    outputs: dict[str, list[int]]
    digest: str
    info: dict[str, Any] = field(default_factory=dict)


def files_under(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every regular file named in ``paths`` or below a directory of ``paths``, sorted, hidden files skipped."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.exists():
            out.append(p)
    return sorted(out)


def stamp(paths: Iterable[str | os.PathLike[str]]) -> dict[str, list[int]]:
    """{file: [size, mtime_ns]} for every file under ``paths`` (cheap: no reading)."""
    out = {}
    for f in files_under(paths):
        st = f.stat()
        out[str(f)] = [st.st_size, st.st_mtime_ns]
    return out


def intact(result: StageResult) -> bool:
    """True while every output of ``result`` exists with the size and modification time it was written with."""
    for path, (size, mtime) in result.outputs.items():
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_size != size or st.st_mtime_ns != mtime:
            return False
    return True


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def content_digest(paths: Iterable[str | os.PathLike[str]], *, memo: str | os.PathLike[str] | None = None,
                   root: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 over the names (relative to ``root``) and bytes of every file under ``paths``.

    ``memo``: a JSON file remembering each file's digest by (path, size, mtime_ns), so a multi-GB catalog is read
    once, not on every run.
    """
    files = files_under(paths)
    memo_path = Path(memo) if memo else None
    with _MEMO_LOCK:
        known: dict[str, Any] = {}
        if memo_path and memo_path.exists():
            try:
                known = json.loads(memo_path.read_text())
            except (OSError, ValueError):
                known = {}
        h = hashlib.sha256()
        changed = False
        for f in files:
            st = f.stat()
            key = str(f.resolve())
            entry = known.get(key)
            if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
                digest = entry[2]
            else:
                digest = sha256_file(f)
                known[key] = [st.st_size, st.st_mtime_ns, digest]
                changed = True
            name = str(f.relative_to(root)) if root else f.name
            h.update(f"{name}\0{digest}\n".encode())
        if memo_path and changed:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}.partial")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, memo_path)
    return h.hexdigest()


def code_digest(*modules: str, root: Path = ROOT) -> str:
    """SHA-256 over the name and source of ``modules`` and of every project module they import, transitively
    (:func:`pipeline.imports.closure`; imports inside functions included).

    A task passes this as a parameter so that editing any code it runs — not only its own body — re-runs it, and a
    module it stops using drops out of its key.
    """
    h = hashlib.sha256()
    for name in closure(modules, root):
        path = module_file(name, root)
        assert path is not None  # closure() only returns modules that have a file
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def task_modules(task: Callable[..., Any]) -> tuple[str, ...]:
    """The project modules a flow task imports: in its body and in the helpers of its own module it calls.

    ``task``: a Prefect task (its ``.fn``) or a plain function. Modules of ``flows`` itself are left out (a task's
    own source is in Prefect's TASK_SOURCE; its helpers' sources are in :func:`task_code_digest`).
    """
    fn, helpers = _task_functions(task)
    found: set[str] = set()
    for node in (fn, *helpers):
        found |= imports_in(node, fn_module(task))
    return tuple(sorted(m for m in found if not m.startswith("flows")))


def task_code_digest(task: Callable[..., Any], *, root: Path = ROOT) -> str:
    """The code digest of a flow task: :func:`code_digest` of :func:`task_modules` plus its helpers' sources."""
    _, helpers = _task_functions(task)
    h = hashlib.sha256(code_digest(*task_modules(task), root=root).encode())
    for node in helpers:
        h.update(ast.unparse(node).encode())
    return h.hexdigest()


def fn_module(task: Callable[..., Any]) -> str:
    return getattr(task, "fn", task).__module__


def _task_functions(task: Callable[..., Any]) -> tuple[ast.FunctionDef, list[ast.FunctionDef]]:
    """The task function's syntax tree and those of the module-level helpers it calls, transitively."""
    fn = getattr(task, "fn", task)
    tree = ast.parse(inspect.getsource(sys.modules[fn.__module__]))
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    seen: list[str] = []
    todo = [fn.__name__]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.append(name)
        todo.extend(n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs)
    return defs[fn.__name__], [defs[n] for n in sorted(seen[1:])]

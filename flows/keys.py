"""What keys the flow's cached tasks: content digests of inputs, digests of code, stamps of outputs; and the
data-only form in which the cache is kept.

Prefect's cache policy (``INPUTS + TASK_SOURCE``) hashes a task's parameters and its own source. The flow passes
every task the *content digests* of the files it reads (never arrays) and :func:`code_digest` of the packages it
calls, so a task re-runs when its inputs' bytes or the code behind it change, and not otherwise. Paths inside the
run directory enter keys and results *relative to it* (:func:`relative`; the run directory itself is left out of
every key), so a run directory copied or moved elsewhere keeps its cache.

A cached result is trusted only while the files it wrote are still those files: :class:`StageResult` carries
each output's (size, mtime_ns) :func:`stamp`, and the flow re-runs a task whose outputs were deleted or replaced
(:func:`intact`).

A cached result is data, never code: :class:`StageResultSerializer` writes a :class:`StageResult` as plain JSON
and reads nothing else, and :class:`RunResultStorage` (the run directory's ``.prefect/`` folder) hands Prefect a
stored record only once it has checked that the record is exactly such JSON. A record in any other form (a
pickle, a record naming another serializer, a truncated file) is refused before Prefect parses it, so the task
recomputes and overwrites it.
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
from typing import Any, ClassVar

from prefect.filesystems import LocalFileSystem
from prefect.logging import get_logger
from prefect.serializers import Serializer
from pydantic import Field

from pipeline.imports import ROOT, closure, imports_in, module_file

_MEMO_LOCK = threading.Lock()
SAMPLE_BYTES = 1 << 20  # the head and the tail of a memoised file are re-hashed on every run


# -- plain data ------------------------------------------------------------------------------------------------------
def plain(obj: Any, where: str = "result") -> Any:
    """``obj`` as plain JSON data: dicts with string keys, lists, strings, ints, floats, booleans and None.

    Tuples become lists and numpy scalars Python numbers; anything else (a path, an array, an object) raises
    :class:`TypeError` naming where it was found, so a task cannot return something the cache cannot hold as data.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be strings, found {type(key).__name__} {key!r}")
            out[key] = plain(value, f"{where}.{key}")
        return out
    if isinstance(obj, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    item = getattr(obj, "item", None)  # numpy scalars (not arrays: their item() needs size 1 and they have ndim)
    if callable(item) and getattr(obj, "ndim", None) == 0 and getattr(obj, "dtype", None) is not None \
            and obj.dtype.kind in "biuf":
        return plain(item(), where)
    raise TypeError(f"{where}: expected plain JSON data, found {type(obj).__module__}.{type(obj).__qualname__}")


@dataclass(frozen=True)
class StageResult:
    """What a stage task returns (and Prefect persists, as JSON): where its outputs are and what they hold.

    ``outputs``: {path relative to the run directory: [size in bytes, mtime in ns]} of every file written;
    ``digest``: the SHA-256 identity of the stage's product that downstream tasks key on; ``info``: small facts as
    plain JSON data (run-relative paths, counts, metrics). Anything else raises :class:`TypeError`.
    """

    outputs: dict[str, list[int]]
    digest: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        outputs = {}
        for path, value in self.outputs.items():
            if not isinstance(path, str) or not isinstance(value, (list, tuple)) or len(value) != 2 or \
                    not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise TypeError(f"outputs: expected {{path: [size, mtime_ns]}}, found {path!r}: {value!r}")
            outputs[path] = [int(value[0]), int(value[1])]
        if not isinstance(self.digest, str):
            raise TypeError(f"digest: expected a string, found {type(self.digest).__name__}")
        if not isinstance(self.info, dict):
            raise TypeError(f"info: expected a dict, found {type(self.info).__name__}")
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "info", plain(self.info, "info"))

    def to_json(self) -> str:
        """The result as one JSON object ``{"outputs", "digest", "info"}``."""
        return json.dumps({"outputs": self.outputs, "digest": self.digest, "info": self.info})

    @classmethod
    def from_json(cls, text: str | bytes) -> StageResult:
        """The result :meth:`to_json` wrote; raises :class:`ValueError` on anything else (nothing is executed)."""
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not a stage result: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {"outputs", "digest", "info"} or \
                not isinstance(doc["outputs"], dict):
            raise ValueError("not a stage result: expected a JSON object with outputs, digest and info only")
        try:
            return cls(doc["outputs"], doc["digest"], doc["info"])
        except TypeError as exc:
            raise ValueError(f"not a stage result: {exc}") from None


# -- the cache: a data-only serializer, and a result storage that refuses anything else -----------------------------
SERIALIZER_TYPE = "clustermass-stage-result"


class StageResultSerializer(Serializer):
    """Prefect result serializer for :class:`StageResult`: plain JSON out, plain JSON in, nothing else.

    A failed task's exception (which Prefect also persists, under a random key) is written as data too —
    ``{"failure": {"type": ..., "message": ...}}`` — and is never read back: loading accepts stage results only.
    """

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        if isinstance(obj, BaseException):
            kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
            return json.dumps({"failure": {"type": kind, "message": str(obj)}}).encode()
        if not isinstance(obj, StageResult):
            raise TypeError(f"a clustermass task returns a StageResult, not {type(obj).__qualname__}")
        return obj.to_json().encode()

    def loads(self, blob: bytes) -> StageResult:
        return StageResult.from_json(blob)


MAX_RECORD_BYTES = 16 << 20  # a stage's record is a few kB; anything this big is not one (and is not read)
_RECORD_METADATA = {"storage_key", "expiration", "serializer", "prefect_version", "storage_block_id"}


def check_record(content: bytes) -> bytes:
    """``content`` if it is a Prefect result record of a :class:`StageResult` written by
    :class:`StageResultSerializer`, else :class:`ValueError` (checked with :mod:`json` alone: nothing of the record is
    imported, unpickled or executed)."""
    try:
        doc = json.loads(content)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"metadata", "result"}:
        raise ValueError("not a result record (expected a JSON object with metadata and result)")
    meta = doc["metadata"]
    if not isinstance(meta, dict) or not set(meta) <= _RECORD_METADATA:
        raise ValueError("unexpected result record metadata")
    if meta.get("serializer") != {"type": SERIALIZER_TYPE}:
        raise ValueError(f"the record names serializer {meta.get('serializer')!r}, not {SERIALIZER_TYPE!r}")
    if meta.get("expiration") is not None:
        raise ValueError("the record has an expiration (clustermass writes none)")
    for key in ("storage_key", "prefect_version", "storage_block_id"):
        if not isinstance(meta.get(key), (str, type(None))):
            raise ValueError(f"the record's {key} is not a string")
    if not isinstance(doc["result"], str):
        raise ValueError("the record's result is not a JSON string")
    StageResult.from_json(doc["result"])
    return content


class RunResultStorage(LocalFileSystem):
    """The run directory's ``.prefect/`` folder as Prefect result storage that holds data only.

    Reads return a record only when :func:`check_record` accepts it; otherwise they raise :class:`ValueError`
    before Prefect sees the bytes, and Prefect treats the cache entry as absent (the task recomputes and overwrites
    it). Writes go to a hidden temporary file that is renamed, so a killed run never leaves half a record.
    """

    _block_type_name: ClassVar[str] = "clustermass run results"
    _block_type_slug: ClassVar[str] = "clustermass-run-results"
    _description: ClassVar[str] = "A clustermass run directory's task results: JSON data only, checked on reading."

    def _read_checked(self, path: str) -> bytes:
        resolved = self._resolve_path(path)
        if not resolved.is_file():
            raise ValueError(f"Path {resolved} does not exist.")
        try:
            if resolved.stat().st_size > MAX_RECORD_BYTES:
                raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
            return check_record(resolved.read_bytes())
        except ValueError as exc:
            get_logger("clustermass.cache").warning(
                "ignoring cached result %s: %s; the stage is recomputed", resolved, exc)
            raise ValueError(f"{resolved}: refused as a cached result: {exc}") from None

    def _write_atomic(self, path: str, content: bytes) -> str:
        resolved = self._resolve_path(path)
        resolved.parent.mkdir(parents=True, exist_ok=True)
        tmp = resolved.with_name(f".{resolved.name}.{os.getpid()}.{threading.get_ident()}.partial")
        tmp.write_bytes(content)
        os.replace(tmp, resolved)
        return str(resolved)

    async def aread_path(self, path: str) -> bytes:
        return self._read_checked(path)

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # type: ignore[override]
        return self._read_checked(path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self._write_atomic(path, content)

    def write_path(self, path: str, content: bytes, _sync: bool | None = None) -> str:  # type: ignore[override]
        return self._write_atomic(path, content)


def result_storage_block(basepath: str | os.PathLike[str], name: str) -> str:
    """Save a :class:`RunResultStorage` rooted at ``basepath`` as block ``name``; return its slug for tasks."""
    RunResultStorage(basepath=str(basepath)).save(name, overwrite=True)
    return f"{RunResultStorage.get_block_type_slug()}/{name}"


# -- paths relative to the run directory -----------------------------------------------------------------------------
def relative(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``path`` relative to ``root`` (POSIX form) when it lies inside it, else absolute; a relative ``path`` is taken
    to be relative to ``root`` already. What tasks receive and return, so keys and results hold no run directory."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def at(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """The file ``path`` (relative to ``root``, or absolute) names."""
    return Path(root) / path


def files_under(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Every regular file named in ``paths`` or below a directory of ``paths``, sorted, hidden files skipped."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.exists():
            out.append(p)
    return sorted(out)


def stamp(paths: Iterable[str | os.PathLike[str]], root: str | os.PathLike[str] | None = None) -> dict[str, list[int]]:
    """{file: [size, mtime_ns]} for every file under ``paths`` (cheap: no reading); names relative to ``root``
    when given (:func:`relative`)."""
    out = {}
    for f in files_under(paths):
        st = f.stat()
        out[relative(f, root) if root is not None else str(f)] = [st.st_size, st.st_mtime_ns]
    return out


def intact(result: StageResult, root: str | os.PathLike[str] | None = None) -> bool:
    """True while every output of ``result`` (relative to ``root``) exists with the size and modification time it
    was written with."""
    for path, (size, mtime) in result.outputs.items():
        try:
            st = os.stat(Path(root) / path if root is not None else path)
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


def sample_digest(path: str | os.PathLike[str], size: int) -> str:
    """SHA-256 of the first and the last :data:`SAMPLE_BYTES` of a file of ``size`` bytes (the whole file when
    smaller): read on every run to check a memoised digest, whatever the file's size."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            fh.seek(size - SAMPLE_BYTES)
        h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()


def _memo_entry(known: dict[str, Any], key: str) -> dict[str, Any] | None:
    entry = known.get(key)
    fields = ("size", "mtime_ns", "ctime_ns", "inode", "sample", "sha256")
    if not isinstance(entry, dict) or set(entry) != set(fields):
        return None
    return entry


def content_digest(paths: Iterable[str | os.PathLike[str]], *, memo: str | os.PathLike[str] | None = None,
                   root: str | os.PathLike[str] | None = None, refresh: bool = False) -> str:
    """SHA-256 over the names (relative to ``root``) and bytes of every file under ``paths``.

    ``memo``: a JSON file (``<run dir>/.prefect/digests.json``) remembering each file's digest, so a multi-GB catalog
    is read once, not on every run. A remembered digest is used only while the file has the same size, mtime,
    ctime and inode (any rewrite changes the ctime, even one that restores size and mtime) and the same first and
    last MiB; otherwise the file is hashed again. Files inside the memo's run directory are remembered by their
    path relative to it (the memo travels with the directory). ``refresh``: hash every file again.
    """
    files = files_under(paths)
    memo_path = Path(memo) if memo else None
    memo_home = memo_path.resolve().parent.parent if memo_path else None
    with _MEMO_LOCK:
        known: dict[str, Any] = {}
        if memo_path and memo_path.exists():
            try:
                known = json.loads(memo_path.read_text())
            except (OSError, ValueError, RecursionError):
                known = {}
            if not isinstance(known, dict):
                known = {}
        h = hashlib.sha256()
        changed = False
        for f in files:
            st = f.stat()
            key = relative(f.resolve(), memo_home) if memo_home else str(f.resolve())
            facts = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
            entry = None if refresh else _memo_entry(known, key)
            if entry is not None and all(entry[k] == v for k, v in facts.items()) and \
                    entry["sample"] == sample_digest(f, st.st_size) and isinstance(entry["sha256"], str):
                digest = entry["sha256"]
            else:
                digest = sha256_file(f)
                if memo_path:
                    known[key] = {**facts, "sample": sample_digest(f, st.st_size), "sha256": digest}
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

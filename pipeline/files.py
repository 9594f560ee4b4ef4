"""Outputs written whole: a temporary hidden name first, then an atomic rename (never a half-written file).

Every output goes to ``.<name>.partial`` beside its target (:func:`partial_path`) and is renamed into place only
when complete. Whatever goes wrong on the way (an exception of any kind, a full disk, an interrupt) removes the
temporary and leaves what was under the final name untouched; a full disk (ENOSPC) is reported as one
:class:`~pipeline.errors.OutputError` naming the target, ``<file>: no space left on device``.

* :func:`atomic_output` — a context manager yielding the temporary path (a file, or a directory with
  ``directory=True``) of one output;
* :func:`hdf5_output` — the same for an HDF5 file, yielding the open ``h5py.File``;
* :func:`write_json` — a small JSON document;
* :func:`check_output_path` — an output path checked before any work: one line for a path that is a file where a
  folder is wanted (or the reverse), lies inside a file, runs through a symbolic-link loop or a dangling link, is
  not writable, or is not valid UTF-8;
* :func:`sole_writer` — hold a folder for one writing process at a time (a second is refused in one line), so that
  :func:`remove_stale_partials` can delete the temporaries a killed writer left there, never a live writer's;
* :func:`release_hdf5_partials` — the last resort of the command line: HDF5 files this process still holds
  open under a ``.partial`` name (a writer that failed without closing them) are emptied, closed and deleted,
  so that HDF5 has nothing left to flush at interpreter exit (where a second ENOSPC crashes the process).

HDF5 on a full disk: writes of chunked datasets are cached and reach the disk when a dataset or the file is
closed; an error there is raised inside a destructor, which Python ignores ("Exception ignored in ...") and
which leaves HDF5 in a state that crashes the interpreter (SIGSEGV) at exit. So writers flush after each dataset
or block (``fh.flush()``), where the error is raised normally, and a failed file is truncated to zero bytes
before it is closed: the space is freed, the closing flush succeeds, and the file is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, OutputError, no_space

NO_SPACE = "no space left on device"


def partial_path(path: str | os.PathLike[str]) -> Path:
    """The hidden temporary ``.<name>.partial`` beside ``path`` that an output is written to before its rename."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as printable text: bytes of its name that are not UTF-8 as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def check_output_path(path: str | os.PathLike[str], *, directory: bool = True, writable: bool = True,
                      key: str | None = None) -> Path:
    """Refuse, before any work, an output path that cannot be written; returns it as a :class:`Path`.

    Raises a one-line :class:`ConfigError` (about ``key``, e.g. ``"--out"``) when ``path``

    * is not valid UTF-8 (Parquet, JSON and the run's records hold paths as UTF-8 text);
    * runs through a loop of symbolic links, or through a link whose target does not exist (nothing could be created
      there);
    * exists as a file where a folder is wanted (``directory=True``), or as a folder where a file is
      (``directory=False``), or lies inside a file;
    * with ``writable``: the folder it would be written in (the path itself if it is an existing folder, else its
      nearest existing ancestor) is not writable by this user.

    A path that does not exist yet is fine: writers create the missing folders.
    """
    p = Path(path)
    try:
        os.fsencode(p).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"expected a path that is valid UTF-8 text (Parquet, the run's records and the messages "
                          f"hold paths as text), got '{shown(p)}'", key=key) from None
    wanted = "a directory" if directory else "a file name"
    node, st = p, _stat(p, p, wanted, key)
    while st is None and node != node.parent:  # the nearest existing ancestor
        node = node.parent
        st = _stat(node, p, wanted, key)
    if node == p and st is not None and os.path.isdir(p) != directory:
        which = "a file" if directory else "a directory"
        raise ConfigError(f"expected {wanted}, got {p}, which is {which}", key=key)
    if node != p and st is not None and not os.path.isdir(node):
        raise ConfigError(f"expected {wanted}, got {p}, inside {node}, which is a file", key=key)
    folder = node if node != p or directory else p.parent
    if writable and not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"expected {wanted} this user can write, got {p} ({folder} is not writable)", key=key)
    return p


def _stat(node: Path, path: Path, wanted: str, key: str | None) -> os.stat_result | None:
    """``os.stat(node)`` (links followed), or None where ``node`` does not exist or lies under a file (the caller
    walks up); a link loop, a dangling link or another failure is a :class:`ConfigError` about ``path``."""
    try:
        return os.stat(node)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(node):
            raise ConfigError(f"expected {wanted}, got {path}: {node} is a symbolic link to {os.readlink(node)}, "
                              f"which does not exist", key=key) from None
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            loop = next((a for a in reversed([node, *node.parents]) if _loops(a)), node)
            raise ConfigError(f"expected {wanted}, got {path}: {loop} is a loop of symbolic links", key=key) from None
        raise ConfigError(f"expected {wanted}, got {path}: {node}: {exc.strerror or exc}", key=key) from None


def _loops(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a file or a directory tree if it exists; never raises (used while another error propagates)."""
    p = Path(path)
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def output_error(path: str | os.PathLike[str], exc: BaseException) -> BaseException:
    """What to raise when writing ``path`` failed with ``exc``: a one-line :class:`OutputError` for a full disk,
    else ``exc`` itself."""
    if no_space(exc) and not isinstance(exc, OutputError):
        return OutputError(path, NO_SPACE)
    return exc


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Write one output through its temporary: ``with atomic_output(p) as tmp: <write tmp>``.

    The temporary (``.<name>.partial``, a fresh empty directory with ``directory=True``) is yielded; on a normal
    exit it replaces ``path`` (an existing directory there is removed first); on any exception it is deleted and
    the exception propagates, a full disk as ``OutputError(path, "no space left on device")``. Parent
    directories are created.
    """
    path = Path(path)
    tmp = partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove(tmp)  # left by an interrupted run
        if directory:
            tmp.mkdir()
        yield tmp
        if directory and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        remove(tmp)
        error = output_error(path, exc)
        if error is exc:
            raise
        raise error from exc


@contextlib.contextmanager
def hdf5_output(path: str | os.PathLike[str], **options: Any) -> Iterator[Any]:
    """An ``h5py.File`` open for writing on ``path``'s temporary, renamed into place when the block ends.

    ``options`` go to ``h5py.File``. Call ``fh.flush()`` after each dataset (or block of rows) so that a full
    disk raises there rather than in a destructor; on any error the temporary is emptied, closed and deleted
    (:func:`discard_hdf5`) and the error propagates as :func:`atomic_output` describes.
    """
    with atomic_output(path) as tmp:
        fh = open_hdf5_unbuffered(tmp, **options)
        try:
            yield fh
            fh.close()  # the last flush: a full disk may show only here
        except BaseException:
            discard_hdf5(fh, tmp)
            raise


def open_hdf5_unbuffered(path: str | os.PathLike[str], *, track_order: bool = False, **options: Any) -> Any:
    """A new ``h5py.File`` at ``path`` (truncated) whose raw data reaches the disk when it is written.

    HDF5 otherwise holds small contiguous writes in a sieve buffer and chunks in a chunk cache and writes them when
    a dataset object is closed — in its destructor, where a full disk is an ignored exception that leaves HDF5 in
    a state that crashes the interpreter. Without those buffers a failed write raises where it happens. Metadata is
    still written at flush and close (:func:`discard_hdf5` makes room for it). ``track_order``: keep the root's
    links and attributes in creation order (``h5py.File(..., track_order=True)``); ``options`` go to ``h5py.File``.
    """
    import h5py

    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_sieve_buf_size(0)
    fapl.set_cache(0, 0, 0, 0.0)  # no raw-data chunk cache (the metadata cache is left alone)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)  # closing the file closes every object still open in it
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    if track_order:
        order = h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED
        fcpl.set_link_creation_order(order)
        fcpl.set_attr_creation_order(order)
    fid = h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fcpl=fcpl, fapl=fapl)
    return h5py.File(fid, **options)


def discard_hdf5(fh: Any, tmp: str | os.PathLike[str]) -> None:
    """Close the half-written HDF5 file ``fh`` (at ``tmp``) without raising: it is truncated to zero bytes first,
    so the flush that closing does finds the space it needs instead of failing again. The caller deletes it."""
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    with contextlib.suppress(Exception):
        fh.close()


def write_json(path: str | os.PathLike[str], payload: Any, *, indent: int = 1) -> Path:
    """Write ``payload`` as JSON to ``path`` (parents created) via ``.<name>.partial`` and a rename."""
    path = Path(path)
    text = json.dumps(payload, indent=indent) + "\n"  # a payload that cannot be encoded leaves nothing behind
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


#: the lock file :func:`sole_writer` holds in a folder (it holds the writer's process id)
LOCK_NAME = ".writer.lock"


@contextlib.contextmanager
def sole_writer(directory: str | os.PathLike[str], *, what: str) -> Iterator[Path]:
    """Hold ``directory`` (which must exist) for this process alone while the block writes into it.

    An advisory lock (``flock``) on ``DIR/.writer.lock``: a second process asking for the same folder gets a
    one-line :class:`OutputError` (``DIR: another <what> (pid N) is writing here; ...``) at once. The kernel drops
    the lock when its holder dies, SIGKILL included, so inside the block every ``.partial`` temporary in the folder
    is a dead writer's (:func:`remove_stale_partials`). The lock file is removed when the block ends. On a file
    system without ``flock`` the block runs unlocked.
    """
    import fcntl

    directory = Path(directory)
    lock = directory / LOCK_NAME
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(directory, f"another {what} (pid {holder}) is writing here; expected one writer at a "
                                         "time: wait for it to end, or write elsewhere") from None
        except OSError:  # no flock on this file system: unlocked, as before
            os.close(fd)
            fd = -1
            break
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one
    try:
        if fd >= 0:
            with contextlib.suppress(OSError):  # the pid is for the message only (a full disk may refuse it)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
        yield lock
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)


def remove_stale_partials(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden temporaries (``.<name>.partial``, ``.<stem>.partial.<ext>``) directly in ``directory``, left
    by a writer that was killed; returns them. Call it only under :func:`sole_writer` for that folder: otherwise a
    live writer's temporary could be deleted under it."""
    removed = []
    for path in Path(directory).glob(".*"):
        if path.name.endswith(".partial") or ".partial." in path.name:
            remove(path)
            removed.append(path)
    return removed


def release_hdf5_partials() -> list[Path]:
    """Empty, close and delete every HDF5 file this process still holds open under a ``.partial`` name.

    A writer that failed (typically on a full disk) without closing its file would leave HDF5 to flush it again
    at interpreter exit, where a second failure crashes the process. Returns the files deleted. Files not named
    ``.partial`` are left alone (an input being read, an output completed by someone else).
    """
    if "h5py" not in sys.modules:  # nothing was ever opened
        return []
    import h5py

    released = []
    try:
        files = h5py.h5f.get_obj_ids(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)
    except Exception:
        return []
    for fid in files:
        try:
            name = fid.name.decode() if isinstance(fid.name, bytes) else str(fid.name)
        except Exception:
            continue
        if not name.endswith(".partial"):
            continue
        with contextlib.suppress(OSError):
            os.truncate(name, 0)
        with contextlib.suppress(Exception):
            for kind in (h5py.h5f.OBJ_LOCAL | ~h5py.h5f.OBJ_FILE, h5py.h5f.OBJ_LOCAL | h5py.h5f.OBJ_FILE):
                fid._close_open_objects(kind)
        with contextlib.suppress(Exception):
            while fid.valid:
                h5py.h5i.dec_ref(fid)
        remove(name)
        released.append(Path(name))
    return released


def remove_partials(root: str | os.PathLike[str], *, since: float, depth: int = 4) -> list[Path]:
    """Delete the hidden temporaries (``.<name>.partial``, ``.<name>.<pid>.partial``, ``.<stem>.partial.png``) under
    ``root``, at most ``depth`` levels down, that were modified at or after ``since`` (a :func:`time.time`).

    The command line's safety net after a failure: every writer removes its own temporary, but one that does not
    (or a process killed by the kernel) would leave it behind. Only temporaries of the failed command itself (by
    time) are touched, never those of another run.
    """
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    base = len(root.parts)
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if len(here.parts) - base >= depth:
            dirs[:] = []
        for name in [*files, *dirs]:
            if not (name.startswith(".") and (name.endswith(".partial") or ".partial." in name)):
                continue
            path = here / name
            with contextlib.suppress(OSError):
                if path.lstat().st_mtime >= since - 1.0:  # file systems keep mtimes to 1 s or better
                    remove(path)
                    removed.append(path)
        dirs[:] = [d for d in dirs if here / d not in removed]
    return removed

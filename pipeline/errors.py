"""Errors that users see as one line: ``error: <file>: column 'x', row 12: <what was expected>``.

Every stage raises a subclass of :class:`ClusterMassError` for bad input; the CLI prints ``str(err)``
after ``error:`` and exits non-zero, with no traceback unless ``--debug`` is given. Three kinds:

* :class:`InputError` — one input file at fault (``<file>: column 'x', row 12: ...``);
* :class:`ConfigError` — the configuration (``<file> [section] key: expected ..., got ...``);
* :class:`OutputError` — an output could not be written (``<file>: no space left on device``);
  :func:`no_space` tells a full disk from other failures.
"""

from __future__ import annotations

import errno
from os import PathLike


class ClusterMassError(Exception):
    """Base class of every error clustermass raises on purpose (bad input, bad configuration)."""

    def __reduce__(self) -> tuple:
        # picklable whatever a subclass' __init__ takes (Prefect and dask move errors between processes): the
        # message as it reads and the attributes (path, key, ...) are restored without calling __init__
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type[ClusterMassError], text: str, state: dict) -> ClusterMassError:
    err = cls.__new__(cls)
    Exception.__init__(err, text)
    err.__dict__.update(state)
    return err


class InputError(ClusterMassError):
    """A problem with one input file, located as precisely as possible.

    Parameters
    ----------
    path
        The file (or directory) at fault.
    message
        What is wrong and what was expected, without the location (that is added here).
    column
        The column name, where one column is at fault.
    row
        The 1-based data row (header and comment lines not counted), where one row is at fault.
    line
        The 1-based line of a text file, where known (reported beside the row).
    """

    def __init__(
        self,
        path: str | PathLike[str] | None,
        message: str,
        *,
        column: str | None = None,
        row: int | None = None,
        line: int | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.column = column
        self.row = row
        self.line = line
        self.message = message
        where = []
        if column is not None:
            where.append(f"column '{column}'")
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        prefix = f"{self.path}: " if self.path else ""
        loc = (", ".join(where) + ": ") if where else ""
        super().__init__(f"{prefix}{loc}{message}")


class ConfigError(ClusterMassError):
    """A problem with the configuration (unknown key, wrong type, inconsistent values).

    Parameters
    ----------
    message
        What was expected and what was found (``"expected an integer >= 1, got 0"``), without the location.
    key
        The key at fault, where one key is (a constraint between several keys names them in ``message``).
    where
        The file and section (``"run.toml [observe]"``), or the command-line option set; usually added by
        :meth:`located` (``pipeline.config.section`` does it), so a section's checks need not know the file.

    ``str(err)`` is ``"<where> <key>: <message>"``, leaving out what is not known.
    """

    def __init__(self, message: str, *, key: str | None = None, where: str | None = None) -> None:
        self.message = message
        self.key = key
        self.where = where
        location = " ".join(part for part in (where, key) if part)
        super().__init__(f"{location}: {message}" if location else message)

    def located(self, where: str) -> ConfigError:
        """This error with ``where`` (file and section) in front; unchanged if it already names a place."""
        if self.where:
            return self
        return ConfigError(self.message, key=self.key, where=where)


class OutputError(ClusterMassError):
    """An output that could not be written, e.g. ``catalog.h5: no space left on device``.

    ``path`` is the file the user asked for (its final name, not the hidden temporary it was being written to).
    """

    def __init__(self, path: str | PathLike[str], message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


#: how HDF5 and Arrow report a full disk when they do not set ``errno``
_NO_SPACE_TEXT = ("no space left on device", "errno = 28", "[errno 28]", "disk quota exceeded")


def no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or an exceeded quota (ENOSPC, EDQUOT).

    h5py and pyarrow report it as an :class:`OSError` whose errno is not always set, or (h5py, a failed flush) as a
    :class:`RuntimeError`, so the text of any exception is read too.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc).lower() for t in _NO_SPACE_TEXT):  # h5py raises RuntimeError on a failed flush
            return True
        exc = exc.__cause__ or exc.__context__
    return False

"""Errors that users see as one line: ``error: <file>: column 'x', row 12: <what was expected>``.

Every stage raises a subclass of :class:`ClusterMassError` for bad input; the CLI prints ``str(err)``
after ``error:`` and exits non-zero, with no traceback unless ``--debug`` is given.
"""

from __future__ import annotations

from os import PathLike


class ClusterMassError(Exception):
    """Base class of every error clustermass raises on purpose (bad input, bad configuration)."""


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
    """A problem with the configuration (unknown key, wrong type, inconsistent values)."""

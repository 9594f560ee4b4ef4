"""Splitting a text catalog into byte ranges that start and end on line boundaries, and parsing one.

dask's own ``read_csv`` does the same splitting; doing it here lets every error name the file, the column and
the data row (counted only when an error is raised, so the happy path reads each byte once).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.errors import InputError

DEFAULT_BLOCKSIZE = 64 * 2**20  # bytes of text per partition
#: the UTF-8 byte-order mark some editors (Excel, Notepad) put at the start of a text file; readers skip it
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class TextLayout:
    """Where the data of a text catalog starts and how its fields are separated.

    ``data_start``: byte offset of the first data line; ``header_lines``: lines before it;
    ``names``: every field name in file order; ``sep``: ``","`` or ``None`` for runs of whitespace.
    """

    path: str
    names: tuple[str, ...]
    data_start: int
    header_lines: int
    sep: str | None
    size: int


def split_blocks(layout: TextLayout, blocksize: int) -> list[tuple[int, int]]:
    """Byte ranges [start, stop) covering the data, each starting at a line start."""
    if blocksize <= 0:
        raise ValueError("blocksize must be positive")
    starts = [layout.data_start]
    with open(layout.path, "rb") as fh:
        pos = layout.data_start + blocksize
        while pos < layout.size:
            fh.seek(pos)
            fh.readline()
            nxt = fh.tell()
            if nxt >= layout.size:
                break
            if nxt > starts[-1]:
                starts.append(nxt)
            pos = nxt + blocksize
    stops = [*starts[1:], layout.size]
    return [(a, b) for a, b in zip(starts, stops, strict=True) if b > a] or [(layout.data_start, layout.data_start)]


def rows_before(layout: TextLayout, offset: int) -> int:
    """Number of data rows between the data start and ``offset`` (only called to locate an error)."""
    count = 0
    with open(layout.path, "rb") as fh:
        fh.seek(layout.data_start)
        remaining = offset - layout.data_start
        while remaining > 0:
            chunk = fh.read(min(remaining, 16 * 2**20))
            if not chunk:
                break
            count += chunk.count(b"\n") - chunk.count(b"\n#")
            remaining -= len(chunk)
    return count


def parse_block(
    layout: TextLayout,
    block: tuple[int, int],
    usecols: Sequence[int],
    colnames: Sequence[str],
    dtypes: Sequence[np.dtype],
) -> pd.DataFrame:
    """Parse one block into a DataFrame with ``colnames`` (the fields at ``usecols``) and ``dtypes``.

    A field that does not parse as its dtype, or a line with the wrong number of fields, raises
    :class:`InputError` naming the file, the column and the data row.
    """
    start, stop = block
    with open(layout.path, "rb") as fh:
        fh.seek(start)
        data = fh.read(stop - start)
    if not data.strip():
        return pd.DataFrame({n: np.empty(0, dtype=d) for n, d in zip(colnames, dtypes, strict=True)})
    kwargs = dict(
        header=None,
        names=list(range(len(layout.names))),
        usecols=list(usecols),
        comment="#",
        engine="c",
        skip_blank_lines=True,
    )
    if layout.sep is None:
        kwargs["sep"] = r"\s+"
    else:
        kwargs["sep"] = layout.sep
    dtype_map = {i: d for i, d in zip(usecols, dtypes, strict=True)}
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=dtype_map, **kwargs)
    except (ValueError, pd.errors.ParserError) as exc:
        raise _locate_parse_error(layout, block, data, usecols, colnames, dtypes, exc) from None
    frame.columns = list(colnames)
    return frame


def _locate_parse_error(layout, block, data, usecols, colnames, dtypes, exc) -> InputError:
    """Re-read the block as text to find which field of which row failed, and say what was expected."""
    nfields = len(layout.names)
    lines = data.decode("utf-8", errors="replace").splitlines()
    row_offset = rows_before(layout, block[0])
    row = 0
    for text in lines:
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        row += 1
        fields = stripped.split(",") if layout.sep == "," else stripped.split()
        global_row = row_offset + row
        line = layout.header_lines + global_row
        if len(fields) != nfields:
            truncated = block[1] >= layout.size and text is lines[-1] and len(fields) < nfields
            what = "file is truncated: the last line has" if truncated else "line has"
            return InputError(
                layout.path, f"{what} {len(fields)} fields, expected {nfields} ({' '.join(layout.names[:3])} ...)",
                row=global_row, line=line,
            )
        for idx, name, dtype in zip(usecols, colnames, dtypes, strict=True):
            value = fields[idx].strip().strip('"')
            try:
                parsed = float(value) if dtype.kind == "f" else int(value)
            except ValueError:
                kind = "an integer" if dtype.kind in "iu" else "a number"
                return InputError(
                    layout.path, f"expected {kind}, found '{value[:40]}'", column=name, row=global_row, line=line
                )
            del parsed
    return InputError(layout.path, f"could not parse the file as a {nfields}-column table ({exc})")


def check_truncation(layout: TextLayout) -> None:
    """A text catalog whose last line is cut short (no newline and too few fields) is refused."""
    if layout.size <= layout.data_start:
        return
    with open(layout.path, "rb") as fh:
        fh.seek(max(layout.data_start, layout.size - 65536))
        tail = fh.read()
    if tail.endswith(b"\n"):
        return
    last = tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace").strip()
    fields = last.split(",") if layout.sep == "," else last.split()
    if last and not last.startswith("#") and len(fields) < len(layout.names):
        raise InputError(
            layout.path,
            f"file is truncated: the last line has {len(fields)} of {len(layout.names)} fields and no newline",
        )


def file_size(path: str) -> int:
    return os.stat(path).st_size


def check_field_count(layout: TextLayout) -> None:
    """The first data line must have as many fields as the header names."""
    with open(layout.path, "rb") as fh:
        fh.seek(layout.data_start)
        for raw in fh:
            text = raw.decode("utf-8", errors="replace").strip()
            if text and not text.startswith("#"):
                fields = text.split(",") if layout.sep == "," else text.split()
                if len(fields) != len(layout.names):
                    raise InputError(
                        layout.path,
                        f"the header names {len(layout.names)} columns but the first data line has {len(fields)} "
                        "fields",
                        row=1,
                        line=layout.header_lines + 1,
                    )
                return

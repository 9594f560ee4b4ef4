"""Whitespace-separated text catalogs with a ``#`` header: Rockstar ``hlist_<a>.list`` and UniverseMachine ASCII.

The first line names the columns, Rockstar-style with their 0-based numbers (``#scale(0) id(1) ... x(17)``) or
plainly (``#id descid upid ...``). Comment lines after it may give the cosmology
(``#Omega_M = 0.307115; Omega_L = 0.692885; h0 = 0.677700``), the box (``#Full box size = 1000.000000 Mpc/h``)
and the scale factor (``#a = 0.895100``); the file name (``hlist_0.89510.list``, ``sfr_catalog_0.895100.txt``)
gives the scale factor too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ingest.schema import Schema
from ingest.source import Source
from ingest.textblocks import (
    BOM,
    TextLayout,
    check_field_count,
    check_truncation,
    file_size,
    parse_block,
    rows_before,
    split_blocks,
)
from pipeline.cosmology import Cosmology, identify
from pipeline.errors import InputError
from pipeline.snapshot import PartialSnapshot

_NUMBERED = re.compile(r"^(.*?)\((\d+)\)$")
_FLOAT = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"
_SCALE_IN_NAME = re.compile(r"_(\d\.\d+)\.(?:list|txt|dat|ascii|bin|csv|h5|hdf5)$")


@dataclass(frozen=True)
class HeaderInfo:
    """What a ``#`` header says: column names, lines before the data, and snapshot hints."""

    names: tuple[str, ...]
    header_lines: int
    data_start: int
    box_size: float | None
    scale_factor: float | None
    h: float | None
    Om0: float | None
    extra_cosmology: dict[str, float]


def parse_header(path: str, max_lines: int = 2000) -> HeaderInfo:
    """Read the ``#`` header of a text catalog: names (column numbers stripped) and snapshot hints."""
    names: tuple[str, ...] | None = None
    box = scale = h = om = None
    extra: dict[str, float] = {}
    offset = 0
    nlines = 0
    with open(path, "rb") as fh:
        while nlines < max_lines:
            raw = fh.readline()
            if not raw:
                break
            text = raw.removeprefix(BOM if offset == 0 else b"").decode("utf-8", errors="replace").strip()
            if not text.startswith("#"):
                if text:
                    break
                offset += len(raw)
                nlines += 1
                continue
            offset += len(raw)
            nlines += 1
            body = text[1:].strip()
            if names is None:
                names = _parse_names(path, body)
                continue
            if m := re.search(r"Full box size\s*=\s*" + _FLOAT, body) or re.search(r"Box size:\s*" + _FLOAT, body):
                box = float(m.group(1))
            if m := re.match(r"(?:a|Scale factor|scale)\s*[=:]\s*" + _FLOAT + r"\s*$", body):
                scale = float(m.group(1))
            if m := re.search(r"Omega_M\s*=\s*" + _FLOAT, body):
                om = float(m.group(1))
            if m := re.search(r"\bh0?\s*=\s*" + _FLOAT, body):
                h = float(m.group(1))
            for key in ("Ob0", "ns", "sigma8"):
                if m := re.search(rf"\b{key}\s*=\s*" + _FLOAT, body):
                    extra[key] = float(m.group(1))
    if names is None:
        raise InputError(path, "has no '#' header line naming the columns (expected e.g. '#id(1) pid(5) upid(6) ...')")
    if scale is None and (m := _SCALE_IN_NAME.search(Path(path).name)):
        scale = float(m.group(1))
    return HeaderInfo(names, nlines, offset, box, scale, h, om, extra)


def _parse_names(path: str, body: str) -> tuple[str, ...]:
    names = []
    for i, tok in enumerate(body.split()):
        m = _NUMBERED.match(tok)
        if m and m.group(1):
            name, num = m.group(1), int(m.group(2))
            if num not in (i, i + 1):  # Rockstar numbers from 0, consistent-trees sometimes from 1
                raise InputError(path, f"header column {tok!r} is numbered {num}, but it is field {i} of the line")
            names.append(name)
        else:
            names.append(tok)
    if len(set(n.lower() for n in names)) != len(names):
        dup = sorted({n for n in names if [x.lower() for x in names].count(n.lower()) > 1})
        raise InputError(path, f"header names column(s) {dup} more than once")
    return tuple(names)


@dataclass(frozen=True)
class TextSource(Source):
    """A whitespace (hlist, UniverseMachine ASCII) or comma (CosmoSim CSV) separated catalog."""

    layout: TextLayout | None = None
    dtypes: tuple[tuple[str, str], ...] = ()

    def read_part(self, spec: tuple[int, int], columns: Sequence[str]) -> pd.DataFrame:
        assert self.layout is not None
        index = {n: i for i, n in enumerate(self.layout.names)}
        dtypes = dict(self.dtypes)
        usecols = [index[self.available[c]] for c in columns]
        order = np.argsort(usecols, kind="stable")
        frame = parse_block(
            self.layout,
            spec,
            [usecols[i] for i in order],
            [columns[i] for i in order],
            [np.dtype(dtypes[columns[i]]) for i in order],
        )
        return frame[list(columns)]

    def row_offset(self, spec: tuple[int, int]) -> int:
        assert self.layout is not None
        return rows_before(self.layout, spec[0])

    def line_of(self, row: int) -> int:
        """1-based file line of a 1-based data row (comments only at the top, as these formats have)."""
        assert self.layout is not None
        return self.layout.header_lines + row


def open_whitespace(
    path: str, schema: Schema, fmt: str, file_units: dict[str, str], blocksize: int
) -> TextSource:
    """Open an hlist or UniverseMachine ASCII file."""
    info = parse_header(path)
    size = file_size(path)
    layout = TextLayout(path, info.names, info.data_start, info.header_lines, None, size)
    check_field_count(layout)
    check_truncation(layout)
    available = schema.match(info.names, path)
    cosmo = None
    if info.h is not None and info.Om0 is not None and {"Ob0", "ns", "sigma8"} <= set(info.extra_cosmology):
        cosmo = identify(Cosmology(h=info.h, Om0=info.Om0, name="from-header", **info.extra_cosmology))
    hints = PartialSnapshot(
        f"{path} (header)", box_size=info.box_size, scale_factor=info.scale_factor, cosmology=cosmo,
        h=info.h, Om0=info.Om0,
    )
    units = {c: file_units.get(c) for c in available}
    dtypes = tuple((c, schema[c].dtype) for c in available)
    return TextSource(path, fmt, available, units, hints, tuple(split_blocks(layout, blocksize)), layout, dtypes)

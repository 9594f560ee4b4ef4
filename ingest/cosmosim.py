"""CosmoSim CSV downloads (e.g. the MDPL2.Rockstar table): one header row of names, then comma-separated rows.

CSV exports carry no box size, scale factor or cosmology: those come from ``snapshot.json`` beside the file or
from the configuration. Rvir and Rs are in comoving kpc/h, as in Rockstar.
"""

from __future__ import annotations

from ingest.hlist import TextSource
from ingest.schema import Schema
from ingest.textblocks import BOM, TextLayout, check_field_count, check_truncation, file_size, split_blocks
from pipeline.errors import InputError
from pipeline.snapshot import PartialSnapshot


def open_csv(path: str, schema: Schema, file_units: dict[str, str], blocksize: int) -> TextSource:
    with open(path, "rb") as fh:
        first = fh.readline().removeprefix(BOM)  # a byte-order mark is not part of the first name
        header_lines = 1
        while first.startswith(b"#"):
            first = fh.readline()
            header_lines += 1
        data_start = fh.tell()
    names = tuple(n.strip().strip('"').strip("'") for n in first.decode("utf-8", errors="replace").strip().split(","))
    if not first.strip() or len(names) < 2:
        raise InputError(path, "expected a header row of comma-separated column names (CosmoSim CSV)")
    if all(_is_number(n) for n in names):
        raise InputError(path, "the first row holds numbers, expected a header row of column names (CosmoSim CSV)")
    layout = TextLayout(path, names, data_start, header_lines, ",", file_size(path))
    check_field_count(layout)
    check_truncation(layout)
    available = schema.match(names, path)
    units = {c: file_units.get(c) for c in available}
    dtypes = tuple((c, schema[c].dtype) for c in available)
    hints = PartialSnapshot(f"{path} (CSV carries no snapshot metadata)")
    return TextSource(path, "csv", available, units, hints, tuple(split_blocks(layout, blocksize)), layout, dtypes)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

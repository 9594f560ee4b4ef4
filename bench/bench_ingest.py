"""Benchmark: ingest throughput of a galaxy catalog with dask vs a plain numpy read of the same file.

    .venv/bin/python bench/bench_ingest.py --rows 20000000          # writes a UM binary + HDF5 file of that size
    .venv/bin/python bench/bench_ingest.py --file box/galaxies.bin --box-size 1000

The dask read produces every canonical column the file holds (of the schema's galaxy columns,
``ingest.schema.GALAXIES``: all 30 in HDF5; 28 in UniverseMachine records, which have no room for ``mag_r`` and
``g_r``; the count is taken from the reader and reported per file) in canonical units with per-partition value
checks, streaming
partition by partition as the pipeline does; ``with_id_check`` adds the duplicate-id pass, ``to_one_frame``
materialises the whole catalog as one pandas DataFrame. The numpy baseline only loads the bytes
(np.fromfile of the records / h5py reads of every dataset).
Goal (issue 2): dask at least 0.5x the numpy read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _measure import machine

from ingest.catalog import read_galaxies
from ingest.schema import GALAXIES
from ingest.universemachine import UM_DTYPE
from ingest.writers import CatalogWriter
from pipeline.cosmology import MDPL2
from pipeline.snapshot import Snapshot


def _fake_chunk(n: int, start: int, rng: np.random.Generator, box: float) -> dict[str, np.ndarray]:
    from conftest import fake_table

    table = fake_table(GALAXIES, n, box=box, seed=int(rng.integers(1 << 30)))
    table["galaxy_id"] = np.arange(start + 1, start + n + 1, dtype=np.int64)
    return table


def _write(path: Path, fmt: str, rows: int, snap: Snapshot) -> None:
    rng = np.random.default_rng(0)
    with CatalogWriter(path, GALAXIES, fmt, snap) as w:
        for start in range(0, rows, 1_000_000):
            w.append(_fake_chunk(min(1_000_000, rows - start), start, rng, snap.box_size))
        w.commit()


def _numpy_read(path: Path, fmt: str) -> int:
    if fmt == "um-binary":
        return len(np.fromfile(path, dtype=UM_DTYPE))
    with h5py.File(path, "r") as fh:
        arrays = {k: fh[k][...] for k in fh}
    return len(next(iter(arrays.values())))


def _best(fn, repeat: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t)
    return best, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--file", type=Path, default=None, help="an existing galaxy catalog (.bin or .h5)")
    ap.add_argument("--box-size", type=float, default=1000.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    snap = Snapshot(args.box_size, 0.8951, MDPL2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir="."))
    results = []
    try:
        if args.file:
            files = [(args.file, "um-binary" if args.file.suffix == ".bin" else "hdf5")]
        else:
            files = [(tmp / "galaxies.bin", "um-binary"), (tmp / "galaxies.h5", "hdf5")]
            for path, fmt in files:
                _write(path, fmt, args.rows, snap)
        for path, fmt in files:
            size_gb = path.stat().st_size / 1e9
            columns = list(read_galaxies(path, snapshot=snap, validate=False).frame.columns)
            schema = [c.name for c in GALAXIES.columns]
            assert set(columns) <= set(schema), sorted(set(columns) - set(schema))
            t_np, n = _best(lambda path=path, fmt=fmt: _numpy_read(path, fmt), args.repeat)

            def stream(path=path, validate=False) -> int:
                # how the pipeline consumes a catalog: every partition read, normalised and checked, one at a time
                cat = read_galaxies(path, snapshot=snap, validate=validate)
                return int(cat.frame.map_partitions(len).compute().sum())

            def to_frame(path=path) -> int:
                # everything materialised as one in-memory pandas DataFrame (adds a concatenation copy)
                return len(read_galaxies(path, snapshot=snap, validate=False).frame.compute())

            t_stream, n_dask = _best(stream, args.repeat)
            t_val, _ = _best(lambda path=path: stream(path, validate=True), args.repeat)
            t_frame, _ = _best(to_frame, args.repeat)
            assert n_dask == n, (n_dask, n)
            results.append({
                "format": fmt, "rows": n, "columns": len(columns), "schema_columns": len(schema),
                "columns_missing_from_file": [c for c in schema if c not in columns], "file_gb": round(size_gb, 2),
                "numpy_s": round(t_np, 3), "numpy_mrows_s": round(n / t_np / 1e6, 2),
                "dask_stream_s": round(t_stream, 3), "dask_stream_mrows_s": round(n / t_stream / 1e6, 2),
                "stream_vs_numpy": round(t_np / t_stream, 2),
                "dask_stream_with_id_check_s": round(t_val, 3), "with_id_check_vs_numpy": round(t_np / t_val, 2),
                "dask_to_one_frame_s": round(t_frame, 3), "one_frame_vs_numpy": round(t_np / t_frame, 2),
            })
        print(json.dumps({"benchmark": "ingest", "date": datetime.date.today().isoformat(), "machine": machine(),
                          "results": results}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

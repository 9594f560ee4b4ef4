"""Benchmark: `clustermass synth` of a box, wall time and peak memory (this process and its workers).

    .venv/bin/python bench/bench_synth.py                       # the MDPL2-sized box: 1000 Mpc/h, halos > 1e11
    .venv/bin/python bench/bench_synth.py --box-size 250        # a quick one

Goal (issue 2): the MDPL2-sized box in under 10 minutes and 6 GiB on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import machine, measure

from ingest.synth.box import SynthConfig, cell_count
from ingest.synth.synthesize import synthesize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--box-size", type=float, default=1000.0, help="comoving Mpc/h")
    ap.add_argument("--log10-mmin", type=float, default=11.0)
    ap.add_argument("--format", default="hdf5")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="keep the box here (default: a temporary directory)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-synth-", dir="."))
    config = SynthConfig(box_size=args.box_size, seed=1, log10_mmin=args.log10_mmin)
    try:
        with measure() as m:
            result = synthesize(out, config, fmt=args.format, workers=args.workers)
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**30
        figures = {
            "benchmark": "synth",
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "box_size_mpc_h": args.box_size,
            "log10_mmin": args.log10_mmin,
            "format": args.format,
            "workers": args.workers,
            "cells": cell_count(config),
            "halos": result.n_halos,
            "galaxies": result.n_galaxies,
            "wall_s": round(m.seconds, 1),
            "peak_rss_gib": round(m.peak_gib, 2),
            "output_gib": round(size, 2),
            "halos_per_s": round(result.n_halos / m.seconds),
        }
        print(json.dumps(figures, indent=2))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

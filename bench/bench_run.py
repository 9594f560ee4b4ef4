"""Benchmark: `clustermass run` end to end (the embedded default, a synthetic 800 Mpc/h box), then cached.

    .venv/bin/python bench/bench_run.py                 # into a fresh .cache/bench-run, default configuration
    .venv/bin/python bench/bench_run.py --config my.toml --out /scratch/run

Runs the ``clustermass`` console script as a user would (``clustermass run``: the script installed beside this
interpreter, e.g. ``.venv/bin/clustermass``, else the one on ``PATH``; a fresh process, Prefect's temporary server
included) twice into the same run directory, which is emptied first: the first run computes every stage, the
second finds every stage cached.
Goals (issue 6, 2 cores): first run under 5 minutes, cached re-run under 30 s. Prints one JSON object: wall
seconds and peak RSS (the process tree) of each run, and the per-stage states and seconds the flow recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import machine, measure


def run_once(cmd: list[str], out: Path) -> dict:
    with measure() as m:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "run.json").read_text())
    return {"wall_s": round(m.seconds, 1), "peak_rss_gib": round(m.peak_gib, 2),
            "stages": {k: {"state": v["state"], "seconds": v["seconds"]} for k, v in summary["stages"].items()},
            "flow_seconds": summary["total_seconds"]}


def clustermass_command() -> str:
    """The ``clustermass`` console script of this interpreter's environment (``.venv/bin/clustermass``), else the one
    on ``PATH``."""
    beside = Path(sys.executable).with_name("clustermass")
    found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("clustermass")
    if found is None:
        sys.exit(f"error: no clustermass command beside {sys.executable} or on PATH: install the project first "
                 "(make install)")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=None, help="TOML configuration (default: the embedded default)")
    ap.add_argument("--out", type=Path, default=Path(".cache/bench-run"), help="run directory (emptied first)")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    cmd = [clustermass_command(), "run", "--out", str(args.out), "--quiet"]
    if args.config:
        cmd += ["--config", args.config]
    first = run_once(cmd, args.out)
    cached = run_once(cmd, args.out)
    metrics = json.loads((args.out / "validation" / "metrics.json").read_text())
    print(json.dumps({
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": cmd,
        "first_run": first,
        "cached_rerun": cached,
        "goals": {"first_run_under_300_s": first["wall_s"] < 300, "cached_rerun_under_30_s": cached["wall_s"] < 30},
        "science": {k: metrics[k] for k in ("n_test", "scatter_dex", "bias_dex", "coverage_68", "coverage_95")},
    }, indent=1))


if __name__ == "__main__":
    main()

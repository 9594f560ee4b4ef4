"""Benchmark: writing a posterior mass catalog block-wise (HDF5, FITS) vs a raw h5py write of the same arrays.

    .venv/bin/python bench/bench_catalogs.py                      # 1e6 rows, G = 256, blocks of 65536 rows
    .venv/bin/python bench/bench_catalogs.py --rows 200000 --gzip

Data: realistic posteriors. A bank of up to 65536 distinct PDFs (a two-component Gaussian in log10 M200c on a
``--grid``-point grid over [13, 15.5] (default: the pipeline's, ``inference.posterior.GRID_POINTS``), tilted by a
steep mass function, normalised per dex, float32) with their summaries (mode, median, mean, std, quantiles;
uncorrected ones from the untilted PDF); the catalog's rows draw from the
bank in random order, so every chunk of rows holds distinct PDFs (what compressors see), plus random ids, los,
member counts, sigma_v, true masses and diagnostics (ood_score, edge_mass, flags, model_inputs): every column of
:data:`catalogs.COLUMNS`.

Every write is timed to the disk, not to the page cache: a write that returns while gigabytes of dirty pages wait
in memory is not finished, and how many it may leave there depends on the kernel's dirty limits and on what the
previous run left behind (timed that way, the raw write came out 4x slower than the writers). So each write ends with
``os.fsync`` of the file and of its directory (the writers' default, ``fsync=True``; the raw baseline does the
same), and before every measured run the page cache is emptied: ``os.sync()`` and, when running as root,
``echo 3 > /proc/sys/vm/drop_caches`` (the report says whether it could; without root only the sync is done).

Runs (``--repeat`` times each, round robin in a rotating order; files deleted after their size is taken; the
median and the minimum are reported, and ratios of both to the raw write):

* ``raw_h5py``: every array in memory written with h5py in one go, one dataset each, no compression, then fsync;
* ``raw_h5py_blocks``: the same, ``--block`` rows at a time, as the writers write. One write call of 1 GB costs
  the kernel 5-9x the system time of 16 calls of 69 MB on this VM (1.1-2.1 s against 0.24 s for 1.1 GB with
  plain ``file.write``, 2026-12-05), so the one-go baseline is the slower one: the goal is each default writer
  within 2x of both;
* ``hdf5`` (default: contiguous, uncompressed), ``hdf5_lzf`` (lzf + shuffle), ``hdf5_gzip`` (``--gzip``;
  the compressed ones run twice only) and ``fits``: :func:`catalogs.open_writer` fed blocks of ``--block``
  rows (views of the same arrays), fsync on (their default);
* with ``--page-cache-runs``, ``raw_h5py_nofsync``, ``hdf5_nofsync``, ``fits_nofsync``: the same without fsync,
  timed to the page cache only (the confounded comparison, for reference);
* ``read_hdf5`` / ``read_fits``: :func:`catalogs.read_catalog` of the whole file, from disk (caches dropped);
* ``stream_<fmt>``: a child process that makes each block on the fly (from the bank) and writes it: its peak RSS
  is the memory a 1e6-row streaming write needs (one block of PDFs plus the bank of 65536 PDFs, 67 MB at 256 points).

Prints one JSON object: seconds (median, min, all), MB/s (logical bytes of all columns / median s), CPU seconds
of the process, file MB, the process's peak RSS so far (``ru_maxrss``: no sampling thread runs during a timed
run), ratios to both raw writes (of medians and of minima). Timings on a shared VM still vary from run to run, CPU
seconds with them (kernel time of allocating the page cache): quote the minima and medians together.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _measure import machine

from catalogs import COLUMNS, open_writer, read_catalog

GRID_LO, GRID_HI = 13.0, 15.5
PROVENANCE = {
    "code_version": "bench",
    "config_digest": "sha256:" + "0" * 64,
    "model_digest": "sha256:" + "1" * 64,
    "target_prior": "tinker08-mdpl2",
    "training_prior": "kde-of-training-labels",
    "cosmology": json.dumps({"name": "mdpl2", "H0": 67.77, "Om0": 0.307115, "Ob0": 0.048206, "sigma8": 0.8228}),
    "snapshot": json.dumps({"name": "bench", "box_size": 1000.0, "scale_factor": 1.0}),
    "created": "2026-11-02T00:00:00+00:00",
}


def _quantile(grid: np.ndarray, cdf: np.ndarray, q: float) -> np.ndarray:
    idx = np.clip((cdf < q).sum(axis=1), 1, len(grid) - 1)
    rows = np.arange(len(cdf))
    c0, c1 = cdf[rows, idx - 1], cdf[rows, idx]
    t = np.clip((q - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.0, 1.0)
    return grid[idx - 1] + t * (grid[idx] - grid[idx - 1])


def _summaries(grid: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    dx = np.diff(grid)
    cdf = np.concatenate([np.zeros((len(p), 1)), np.cumsum(0.5 * (p[:, 1:] + p[:, :-1]) * dx, axis=1)], axis=1)
    cdf /= cdf[:, -1:]
    mean = np.trapezoid(p * grid, grid, axis=1)
    out = {
        "mode": grid[np.argmax(p, axis=1)],
        "median": _quantile(grid, cdf, 0.5),
        "mean": mean,
        "std": np.sqrt(np.maximum(np.trapezoid(p * (grid - mean[:, None]) ** 2, grid, axis=1), 0.0)),
    }
    for name, q in (("p16", 0.16), ("p84", 0.84), ("p025", 0.025), ("p975", 0.975)):
        out[name] = _quantile(grid, cdf, q)
    return out


def make_bank(n: int, n_grid: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` distinct posteriors: ``pdf`` (n, G) float32 and summary columns (n,) float32."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(GRID_LO, GRID_HI, n_grid)
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, 8192):
        b = min(8192, n - start)
        g = grid[None, :]
        mu = rng.uniform(13.3, 15.2, (b, 1))
        s1 = rng.uniform(0.08, 0.3, (b, 1))
        mu2 = mu + rng.normal(0, 0.2, (b, 1))
        s2 = s1 * rng.uniform(1.2, 2.5, (b, 1))
        w = rng.uniform(0.0, 0.4, (b, 1))
        log_q = np.logaddexp(np.log1p(-w) - 0.5 * ((g - mu) / s1) ** 2 - np.log(s1),
                             np.log(w) - 0.5 * ((g - mu2) / s2) ** 2 - np.log(s2))
        parts = {}
        for tag, log_p in (("", log_q - 1.9 * (g - GRID_LO)), ("uncorrected_", log_q)):
            p = np.exp(log_p - log_p.max(axis=1, keepdims=True))
            p /= np.trapezoid(p, grid, axis=1)[:, None]
            if not tag:
                parts["pdf"] = p.astype(np.float32)
            for k, v in _summaries(grid, p).items():
                if not tag or k in ("mode", "mean"):
                    parts[f"log10_m200c_{tag}{k}"] = v.astype(np.float32)
        for k, v in parts.items():
            out.setdefault(k, []).append(v)
    bank = {k: np.concatenate(v) for k, v in out.items()}
    bank["log10_m200c_pdf"] = bank.pop("pdf")
    return {"grid": grid, **bank}


def make_rows(bank: dict[str, np.ndarray], start: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """Rows ``start:start + n`` of the catalog (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, start])
    idx = rng.integers(0, len(bank["log10_m200c_pdf"]), n)
    rows = {k: v[idx] for k, v in bank.items() if k != "grid"}
    rows["cluster_id"] = (np.arange(start, start + n, dtype=np.int64) // 3) * 7919 + 10**12
    rows["los"] = (np.arange(start, start + n) % 3).astype(np.int16)
    rows["n_members"] = rng.integers(3, 400, n).astype(np.int32)
    rows["sigma_v"] = rng.lognormal(np.log(600.0), 0.4, n).astype(np.float32)
    rows["log10_m200c_true"] = (rows["log10_m200c_median"] + rng.normal(0, 0.15, n)).astype(np.float32)
    rows["ood_score"] = rng.uniform(0.0, 1.0, n).astype(np.float32)
    rows["edge_mass"] = rng.exponential(1e-3, n).astype(np.float32)
    rows["flags"] = (rng.random(n) < 0.05).astype(np.int32) * 2
    rows["model_inputs"] = np.full(n, 3, np.int16)
    order = [c.name for c in COLUMNS]
    return {k: rows[k] for k in order}


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def _flush_caches() -> bool:
    """Write every dirty page to disk and, when permitted (root), drop the clean ones: each run starts from the
    same, empty page cache. Returns whether the caches were dropped."""
    os.sync()
    dropped = False
    if os.geteuid() == 0:
        try:
            DROP_CACHES.write_text("3\n")
            dropped = True
        except OSError:
            pass
    time.sleep(0.5)
    return dropped


def _peak_rss_bytes() -> int:
    """This process's peak RSS so far: ``VmHWM`` of ``/proc/self/status`` (Linux; ``ru_maxrss`` would carry a
    parent's peak into a child across fork and exec), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _once(fn, path: Path | None) -> tuple:
    """One measured call after :func:`_flush_caches`: seconds, the process's peak RSS so far, size of ``path``
    (then deleted), CPU s. Nothing else runs in the process meanwhile (no RSS-sampling thread)."""
    _flush_caches()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    size = None
    if path is not None and path.exists():
        size = path.stat().st_size
        path.unlink()
    return seconds, _peak_rss_bytes(), size, cpu


def _summary(runs: list[tuple], logical: int) -> dict:
    times = [r[0] for r in runs]
    seconds = float(np.median(times))
    res = {
        "seconds": round(seconds, 3),
        "seconds_min": round(min(times), 3),
        "seconds_all": [round(t, 3) for t in times],
        "mb_per_s": round(logical / seconds / 1e6, 1),
        "cpu_seconds": round(float(np.median([r[3] for r in runs])), 3),
        "process_peak_rss_mib": round(max(r[1] for r in runs) / 2**20),
    }
    if runs[-1][2] is not None:
        res["file_mb"] = round(runs[-1][2] / 1e6, 1)
    return res


def raw_h5py(path: Path, data: dict[str, np.ndarray], grid: np.ndarray, fsync: bool, block: int = 0) -> None:
    """The arrays written with plain h5py, one dataset each: whole (``block = 0``: one write call per array, 1 GB
    for the PDFs) or ``block`` rows at a time, as the writers write."""
    with h5py.File(path, "w") as f:
        for name, arr in data.items():
            if not block:
                f.create_dataset(name, data=arr)
                continue
            ds = f.create_dataset(name, shape=arr.shape, dtype=arr.dtype)
            for start in range(0, len(arr), block):
                ds[start:start + block] = arr[start:start + block]
        f.create_dataset("log10_m200c_grid", data=grid)
    if fsync:  # as the writers do (catalogs.base): the file, then its directory
        for target in (path, path.parent):
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def blockwise(path: Path, data: dict[str, np.ndarray], grid: np.ndarray, block: int, **options) -> None:
    n = len(data["cluster_id"])
    with open_writer(path, n, grid, list(data), PROVENANCE, **options) as w:
        for start in range(0, n, block):
            w.append({k: v[start : start + block] for k, v in data.items()})


def stream_child(args: argparse.Namespace) -> None:
    """Child process: make each block on the fly and write it; print the peak RSS as JSON."""
    bank = make_bank(min(args.rows, args.bank), args.grid)
    path = Path(args.stream_path)
    t0 = time.perf_counter()
    with open_writer(path, args.rows, bank["grid"], [c.name for c in COLUMNS], PROVENANCE, fsync=False) as w:
        for start in range(0, args.rows, args.block):
            w.append(make_rows(bank, start, min(args.block, args.rows - start), seed=1))
    print(json.dumps({"seconds_incl_generation": round(time.perf_counter() - t0, 3),
                      "peak_rss_mib": round(_peak_rss_bytes() / 2**20)}))


def write_runs(args: argparse.Namespace, workdir: Path, data: dict[str, np.ndarray], grid: np.ndarray,
               logical: int) -> dict[str, dict]:
    """Every variant ``args.repeat`` times, round robin (so drifts in the page cache hit all alike)."""
    block = args.block
    variants = {
        "raw_h5py": (".h5", lambda p: raw_h5py(p, data, grid, fsync=True)),
        "raw_h5py_blocks": (".h5", lambda p: raw_h5py(p, data, grid, fsync=True, block=block)),
        "hdf5": (".h5", lambda p: blockwise(p, data, grid, block, fsync=True)),
        "hdf5_lzf": (".h5", lambda p: blockwise(p, data, grid, block, fsync=True, compression="lzf")),
        "fits": (".fits", lambda p: blockwise(p, data, grid, block, fsync=True)),
    }
    if args.gzip:
        variants["hdf5_gzip"] = (".h5", lambda p: blockwise(p, data, grid, block, fsync=True, compression="gzip"))
    if args.page_cache_runs:
        variants["raw_h5py_nofsync"] = (".h5", lambda p: raw_h5py(p, data, grid, fsync=False))
        variants["raw_h5py_blocks_nofsync"] = (".h5", lambda p: raw_h5py(p, data, grid, fsync=False, block=block))
        variants["hdf5_nofsync"] = (".h5", lambda p: blockwise(p, data, grid, block, fsync=False))
        variants["fits_nofsync"] = (".fits", lambda p: blockwise(p, data, grid, block, fsync=False))
    runs: dict[str, list] = {k: [] for k in variants}
    labels = list(variants)
    for rep in range(args.repeat):
        shift = rep % len(labels)  # rotate the order: no variant always follows the same one
        for label in labels[shift:] + labels[:shift]:
            suffix, fn = variants[label]
            if rep >= 2 and label in ("hdf5_lzf", "hdf5_gzip"):  # 10-30x slower: two runs say enough
                continue
            path = workdir / f"{label}{suffix}"
            runs[label].append(_once(lambda fn=fn, path=path: fn(path), path))
            print(f"# {label} run {rep + 1}: {runs[label][-1][0]:.3f} s", file=sys.stderr, flush=True)
    for fmt in ("hdf5", "fits"):
        suffix, fn = variants[fmt]
        path = workdir / f"read{suffix}"
        fn(path)
        runs[f"read_{fmt}"] = [_once(lambda path=path: read_catalog(path), None) for _ in range(args.repeat)]
        path.unlink()
    return {label: _summary(r, logical) for label, r in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--grid", type=int, default=None,
                    help="PDF points (default: the posterior grid's, inference.posterior.GRID_POINTS)")
    ap.add_argument("--block", type=int, default=65536)
    ap.add_argument("--bank", type=int, default=65536, help="distinct PDFs the rows draw from")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--gzip", action="store_true", help="also time gzip + shuffle (slow)")
    ap.add_argument("--repeat", type=int, default=7, help="runs per measurement (median and min are reported)")
    ap.add_argument("--page-cache-runs", action="store_true",
                    help="also time the writes without fsync (to the page cache only), for reference")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--stream-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.grid is None:  # imported here only: it brings jax, whose memory a streaming child must not count
        from inference.posterior import GRID_POINTS

        args.grid = GRID_POINTS
    if args.stream_path:
        stream_child(args)
        return

    workdir = Path(tempfile.mkdtemp(prefix="bench-catalogs-", dir=args.dir))
    dropped = _flush_caches()
    load = os.getloadavg()
    t0 = time.perf_counter()
    bank = make_bank(min(args.rows, args.bank), args.grid)
    data = make_rows(bank, 0, args.rows, seed=1)
    gen_s = time.perf_counter() - t0
    logical = sum(v.nbytes for v in data.values()) + bank["grid"].nbytes
    results = write_runs(args, workdir, data, bank["grid"], logical)
    del data, bank
    if not args.no_stream:
        for fmt, suffix in (("hdf5", ".h5"), ("fits", ".fits")):
            path = workdir / f"stream{suffix}"
            cmd = [sys.executable, __file__, "--rows", str(args.rows), "--grid", str(args.grid), "--block",
                   str(args.block), "--bank", str(args.bank), "--stream-path", str(path)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[f"stream_{fmt}"] = json.loads(out.strip().splitlines()[-1])
            path.unlink(missing_ok=True)

    for label, res in results.items():
        if label.startswith(("hdf5", "fits")):
            tail = "_nofsync" if label.endswith("_nofsync") else ""
            for name, base in (("raw", results[f"raw_h5py{tail}"]), ("raw_blocks", results[f"raw_h5py_blocks{tail}"])):
                res[f"ratio_vs_{name}"] = round(res["seconds"] / base["seconds"], 2)
                res[f"ratio_vs_{name}_best"] = round(res["seconds_min"] / base["seconds_min"], 2)
    workdir.rmdir()
    report = {
        "benchmark": "catalogs write (block-wise, atomic) vs raw h5py",
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "rows": args.rows,
        "grid": args.grid,
        "block_rows": args.block,
        "logical_mb": round(logical / 1e6, 1),
        "fsync": "file and directory, every write except *_nofsync",
        "page_cache_dropped_between_runs": dropped,
        "load_average_1min": [round(load[0], 2), round(os.getloadavg()[0], 2)],
        "generate_seconds": round(gen_s, 1),
        "goal": "each default writer (hdf5, fits) within 2x of both raw h5py writes (whole and block-wise)",
        "goal_met": all(results[k]["ratio_vs_raw"] <= 2.0 and results[k]["ratio_vs_raw_blocks"] <= 2.0
                        for k in ("hdf5", "fits")),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: training throughput (samples/s) of the reference MDN and of the spline flow, in both XLA pool modes.

    .venv/bin/python bench/bench_train.py                      # CPU (2 cores in CI-like machines)
    .venv/bin/python bench/bench_train.py --batch 65536 --n 4194304 --convergence 300000   # on a GPU

Reference MDN (seed 002): 14 features -> 128-128-64 -> 10 Gaussian components; batch 1024. One epoch is one jitted
``lax.scan`` over the shuffled batches (:func:`models.training.scan_epoch`, what training runs); throughput is the
median over ``--epochs`` whole epochs after the compiling first one (min and max beside it).

Two modes, each in its own child process, because XLA sizes its CPU thread pool once, when jax creates its backend:

* ``deterministic``: what ``clustermass`` runs (:func:`pipeline.determinism.configure_determinism`, a pool of one
  thread, ``PJRT_NPROC=1``: the same numbers on any core count);
* ``pool``: ``CLUSTERMASS_DETERMINISTIC=0`` and no ``PJRT_NPROC``: XLA's default pool of one thread per usable core.

The children alternate (deterministic, pool, deterministic, pool, ... for ``--rounds`` rounds), so a change of load
on a shared machine hits both modes alike; each mode's median is over all its epochs. ``--convergence N`` also
times a full early-stopped MDN training on N synthetic observations, in the CLI's mode.
Goals (issue 4): >= 0.5 M samples/s on 2 CPU cores (MDN, batch 1024); >= 20 M samples/s on a GPU (large batch).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _measure import machine

from pipeline.determinism import POOL_VARIABLE, SWITCH, configure_determinism

#: the two modes: the CLI's (a fixed pool of one thread) and XLA's default pool (one thread per usable core)
MODES = ("deterministic", "pool")


def fake_data(n: int, n_features: int = 14, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.uniform(13.5, 15.2, n)
    x = (y[:, None] - 14.3) * rng.normal(1.0, 0.3, n_features) + rng.normal(0, 0.5, (n, n_features))
    return x.astype(np.float32), y.astype(np.float32)


def throughput(kind: str, n: int, batch: int, epochs: int) -> dict:
    """Compile one epoch of model ``kind``, then time ``epochs`` whole epochs; seconds of each."""
    import jax
    import jax.numpy as jnp

    from models.networks import init_params
    from models.spec import ModelSpec, TrainSpec
    from models.training import SpecLoss, TrainState, make_optimizer, scan_epoch

    spec = ModelSpec(kind=kind)
    x, y = fake_data(n)
    xj = jnp.asarray((x - x.mean(0)) / x.std(0))
    yj = jnp.asarray((y - y.mean()) / y.std())
    train = TrainSpec(batch_size=batch)
    n_batches = n // batch
    opt = make_optimizer(train, n_batches)
    params = init_params(spec, x.shape[1], jax.random.PRNGKey(0))
    state = TrainState(params, opt.init(params))
    loss_fn = SpecLoss(spec)
    key = jax.random.PRNGKey(1)

    def epoch(st: TrainState, k: jax.Array):
        return scan_epoch(st, xj, yj, k, loss=loss_fn, opt=opt, batch_size=batch, n_batches=n_batches)

    t0 = time.perf_counter()
    state, loss = epoch(state, key)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    times = []
    for e in range(epochs):
        t0 = time.perf_counter()
        state, loss = epoch(state, jax.random.fold_in(key, e))
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    return {"kind": kind, "batch": batch, "samples_per_epoch": n_batches * batch,
            "first_epoch_with_compile_s": round(compile_s, 2), "epoch_s": [round(t, 4) for t in times],
            "final_loss": round(float(loss), 4)}


def convergence(n: int, batch: int) -> dict:
    import numpy as np

    from models.model import train_model
    from models.spec import ModelSpec, TrainSpec

    x, y = fake_data(n, seed=2)
    cid = np.arange(n) // 3
    t0 = time.perf_counter()
    _, hist = train_model(x, y, cid, feature_names=[f"f{i}" for i in range(14)], spec=ModelSpec(kind="mdn"),
                          train=TrainSpec(ensemble=1, batch_size=batch))
    return {"observations": n, "epochs": len(hist[0].val_loss), "best_epoch": hist[0].best_epoch,
            "wall_s": round(time.perf_counter() - t0, 1)}


def child(args: argparse.Namespace) -> None:
    """One mode in this process: the pool is fixed (or not) before jax's first computation."""
    pool = configure_determinism(args.mode == "deterministic")
    import jax

    out = {"mode": args.mode, "pool_threads": pool if pool is not None else len(os.sched_getaffinity(0)),
           "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
           "results": [throughput(kind, args.n, args.batch, args.epochs) for kind in ("mdn", "flow")]}
    if args.convergence:
        out["convergence"] = convergence(args.convergence, args.batch)
    print(json.dumps(out))


def run_child(mode: str, args: argparse.Namespace, convergence_rows: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != POOL_VARIABLE}
    env[SWITCH] = "1" if mode == "deterministic" else "0"
    cmd = [sys.executable, __file__, "--mode", mode, "--n", str(args.n), "--batch", str(args.batch), "--epochs",
           str(args.epochs), "--convergence", str(convergence_rows)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict]) -> dict:
    """Per model: the median (and min, max) epoch over every epoch of every run of one mode."""
    out = {}
    for i, first in enumerate(runs[0]["results"]):
        epochs = [t for r in runs for t in r["results"][i]["epoch_s"]]
        samples = first["samples_per_epoch"]
        median = statistics.median(epochs)
        out[first["kind"]] = {
            "batch": first["batch"], "samples_per_epoch": samples, "epochs_timed": len(epochs),
            "median_epoch_s": round(median, 4), "samples_per_s_median": round(samples / median),
            "samples_per_s_min": round(samples / max(epochs)), "samples_per_s_max": round(samples / min(epochs)),
            "first_epoch_with_compile_s": [r["results"][i]["first_epoch_with_compile_s"] for r in runs],
            "final_loss": [r["results"][i]["final_loss"] for r in runs]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=262_144, help="samples per epoch")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=7, help="timed epochs per model and run (after the compiling one)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each mode")
    ap.add_argument("--convergence", type=int, default=0, help="also time a full training run on this many obs")
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        child(args)
        return
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for mode in MODES:
            # the convergence run once, in the CLI's mode, in the last round
            rows = args.convergence if (mode == "deterministic" and r == args.rounds - 1) else 0
            runs[mode].append(run_child(mode, args, rows))
            print(f"# round {r + 1} {mode}: "
                  + ", ".join(f"{x['kind']} {statistics.median(x['epoch_s']):.3f} s/epoch"
                              for x in runs[mode][-1]["results"]), file=sys.stderr, flush=True)
            load.append(os.getloadavg()[0])
    modes = {mode: {"pool_threads": runs[mode][0]["pool_threads"], **summarise(runs[mode])} for mode in MODES}
    det, pool = modes["deterministic"], modes["pool"]
    out = {"benchmark": "train", "date": datetime.date.today().isoformat(), "machine": machine(),
           "jax_backend": runs["deterministic"][0]["jax_backend"], "devices": runs["deterministic"][0]["devices"],
           "load_average_1min": [round(x, 2) for x in load],
           "deterministic_is_the_cli_mode": True, "modes": modes,
           "deterministic_vs_pool": {k: round(det[k]["samples_per_s_median"] / pool[k]["samples_per_s_median"], 2)
                                     for k in ("mdn", "flow")}}
    conv = [r["convergence"] for r in runs["deterministic"] if "convergence" in r]
    if conv:
        out["convergence"] = conv[0]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Benchmark: training throughput (samples/s) of the reference MDN and of the spline flow.

    .venv/bin/python bench/bench_train.py                      # CPU (2 cores in CI-like machines)
    .venv/bin/python bench/bench_train.py --batch 65536 --n 4194304 --convergence 300000   # on a GPU

Reference MDN (seed 002): 14 features -> 128-128-64 -> 10 Gaussian components; batch 1024. One epoch is one jitted
``lax.scan`` over batches; throughput is measured over whole epochs after compilation. ``--convergence N`` also
times a full early-stopped training run on N synthetic observations.
Goals (issue 4): >= 0.5 M samples/s on 2 CPU cores (MDN, batch 1024); >= 20 M samples/s on a GPU (large batch).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import machine

from models.model import train_model
from models.networks import init_params
from models.spec import ModelSpec, TrainSpec
from models.training import TrainState, _epoch, make_optimizer


def fake_data(n: int, n_features: int = 14, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(13.5, 15.2, n)
    x = (y[:, None] - 14.3) * rng.normal(1.0, 0.3, n_features) + rng.normal(0, 0.5, (n, n_features))
    return x.astype(np.float32), y.astype(np.float32)


def throughput(spec: ModelSpec, n: int, batch: int, epochs: int) -> dict:
    x, y = fake_data(n)
    xj = jnp.asarray((x - x.mean(0)) / x.std(0))
    yj = jnp.asarray((y - y.mean()) / y.std())
    train = TrainSpec(batch_size=batch)
    n_batches = n // batch
    opt = make_optimizer(train, n_batches)
    params = init_params(spec, x.shape[1], jax.random.PRNGKey(0))
    state = TrainState(params, opt.init(params))
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    state, loss = _epoch(state, xj, yj, key, spec=spec, opt=opt, batch_size=batch, n_batches=n_batches)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - t0
    times = []
    for e in range(epochs):
        t0 = time.perf_counter()
        state, loss = _epoch(state, xj, yj, jax.random.fold_in(key, e), spec=spec, opt=opt, batch_size=batch,
                             n_batches=n_batches)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"kind": spec.kind, "batch": batch, "samples_per_epoch": n_batches * batch,
            "first_epoch_with_compile_s": round(compile_s, 2), "best_epoch_s": round(best, 4),
            "samples_per_s": round(n_batches * batch / best), "final_loss": round(float(loss), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=262_144, help="samples per epoch")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--convergence", type=int, default=0, help="also time a full training run on this many obs")
    args = ap.parse_args()
    results = [throughput(ModelSpec(kind="mdn"), args.n, args.batch, args.epochs),
               throughput(ModelSpec(kind="flow"), args.n, args.batch, args.epochs)]
    out = {"benchmark": "train", "date": datetime.date.today().isoformat(), "machine": machine(),
           "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "results": results}
    if args.convergence:
        x, y = fake_data(args.convergence, seed=2)
        cid = np.arange(args.convergence) // 3
        t0 = time.perf_counter()
        _, hist = train_model(x, y, cid, feature_names=[f"f{i}" for i in range(14)], spec=ModelSpec(kind="mdn"),
                              train=TrainSpec(ensemble=1, batch_size=args.batch))
        out["convergence"] = {"observations": args.convergence, "epochs": len(hist[0].val_loss),
                              "best_epoch": hist[0].best_epoch, "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

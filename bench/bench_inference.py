"""Benchmark: posterior throughput (observations/s) on the default grid (inference.posterior.GRID_POINTS, 256 since
2026-12-02; 512 before), with the interim-prior correction.

    .venv/bin/python bench/bench_inference.py

Times the correction + normalisation + summaries alone (given network log densities), and the whole path from raw
features through an MDN and through the spline flow (the default run's model), one member and a 3-member ensemble,
to corrected posteriors and summaries (``inference.posterior.iter_posteriors``: every network once per row, blocks
on one thread per usable core). Goal (issue 13): >= 80 k observations/s end to end for a 3-member ensemble on 2 CPU
cores. Run it on a quiet machine: it measures throughput, and anything else running halves it.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import machine

from inference import priors
from inference.posterior import default_grid, iter_posteriors, log_prior_ratio, p_train_on, posterior_block
from models.model import TrainedModel
from models.networks import init_params
from models.prior import TrainingPrior
from models.spec import ModelSpec, Standardizer, TrainSpec
from pipeline.determinism import configure_determinism


def fake_model(n_members: int, kind: str = "mdn") -> TrainedModel:
    spec = ModelSpec(kind=kind)
    members = tuple(init_params(spec, 18, jax.random.PRNGKey(k)) for k in range(n_members))
    y = np.random.default_rng(0).uniform(13.5, 15.2, 10000)
    return TrainedModel(spec, TrainSpec(ensemble=n_members), tuple(f"f{i}" for i in range(18)),
                        Standardizer((0.0,) * 18, (1.0,) * 18), Standardizer((14.0,), (0.3,)), members,
                        TrainingPrior.estimate(y), "", {})


def main() -> None:
    configure_determinism()  # as the CLI: XLA's CPU pool of one thread (before jax's first computation)
    n = 262_144
    chunk = 1024
    rng = np.random.default_rng(1)
    model = fake_model(1)
    grid = default_grid(model)
    target = priors.flat(grid)
    results = {}
    # correction + summaries only
    ratio = jnp.asarray(log_prior_ratio(p_train_on(model, grid), target), jnp.float32)
    g = jnp.asarray(grid, jnp.float32)
    log_q = jnp.asarray(rng.normal(size=(chunk, len(grid))).astype(np.float32))
    jax.block_until_ready(posterior_block(log_q, ratio, g))
    t0 = time.perf_counter()
    reps = 100
    for _ in range(reps):
        out = posterior_block(log_q, ratio, g)
    jax.block_until_ready(out)
    results["correction_and_summaries_obs_per_s"] = round(reps * chunk / (time.perf_counter() - t0))
    x = rng.normal(size=(n, 18)).astype(np.float32)
    for kind in ("mdn", "flow"):
        for members in (1, 3):
            m = replace(fake_model(members, kind))
            for _ in iter_posteriors(m, x[: 2 * chunk], grid, target, chunk=chunk):
                pass  # compile
            t0 = time.perf_counter()
            rows = sum(len(b.pdf) for b in iter_posteriors(m, x, grid, target, chunk=chunk))
            rate = round(rows / (time.perf_counter() - t0))
            results[f"features_to_posteriors_{kind}_{members}_member_obs_per_s"] = rate
    print(json.dumps({"benchmark": "inference", "date": datetime.date.today().isoformat(), "machine": machine(),
                      "grid_points": len(grid), "chunk": chunk, "observations": n, **results}, indent=2))


if __name__ == "__main__":
    main()

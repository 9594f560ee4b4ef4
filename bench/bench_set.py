"""Benchmark: the set model (issue 19, models/set_*.py) against the feature flow, on a run's held-out hosts.

    .venv/bin/python bench/bench_set.py                         # runs/default, full set: mean, moments, residual
    .venv/bin/python bench/bench_set.py --set dynamics --variants mean,moments --max-epochs 20
    .venv/bin/python bench/bench_set.py --variants moments,features,attention --phi 64,64

The run directory is what ``make run`` / ``clustermass run`` writes: ``observations/`` (the feature table),
``members.h5`` (the members, in the table's row order) and ``model/`` with ``split.json`` (the held-out hosts, which
no model here sees either), ``msigma.json`` (the M-sigma law fitted on the training hosts) and the feature flows;
``validation/metrics.json`` holds the feature flow's figures.

Every variant is one set network (:class:`models.set_encoder.SetNetwork`, flow head) trained with
:func:`models.set_training.fit_set` on the run's training hosts only, split for early stopping exactly as the
feature flow's :func:`models.model.train_model` splits them (same validation hosts, same target standardisation:
the validation NLLs per dex are comparable with the feature flow's own). Variants:

* ``mean`` — mean pooling; ``moments`` — mean, std and max; ``attention`` — PMA attention pooling;
* ``residual`` — moments pooling, target the residual log10 M - M-sigma(sigma_v_std of the members) (the anchor's
  choice, Wang, Thiele & Ho 2026), the M-sigma estimate also in the context;
* ``features`` — moments pooling with the 18 standardised summary features in the context (``full`` only).

``--true-members`` trains and scores on the true members only (no interlopers): the anchor's idealised case, the
information the members carry when nothing contaminates them.

``full`` set: members' r_proj, v_los, log10 M*, and log10 of the member count in the context; complete lists.
``dynamics`` set: r_proj, v_los only, no count; the training lists are thinned afresh every epoch by the training
stage's rule (``[train] members_kept``, :func:`models.set_batches.thin_sets`), the validation lists once;
scored on complete held-out lists and on lists thinned to 40% exactly as ``clustermass validate`` thins them
(``metrics.json: dynamics_thinned``).

Scored as ``clustermass validate`` scores the feature flow: posteriors on the 256-point grid over the training
range, corrected from the interim prior (KDE of the training labels) to the flat prior; bias and scatter of the
corrected mode and median over 1e14-1e15 Msun/h, the largest |bias| of its 0.1-dex bins, 68/95% coverage
(importance-weighted to the flat prior). Nothing is tuned on the held-out hosts: the settings are the command
line's. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import machine

from pipeline.determinism import configure_determinism

configure_determinism()

import jax.numpy as jnp  # noqa: E402

from features.definitions import FEATURE_NAMES  # noqa: E402
from features.io import load_observation_table, read_members  # noqa: E402
from features.members import Members  # noqa: E402
from features.sets import FEATURE_SETS, thin  # noqa: E402
from inference.metrics import BIN_WIDTH, MASS_RANGE, DensityPosteriors, accuracy, calibrate  # noqa: E402
from inference.posterior import GRID_POINTS, log_prior_ratio, posterior_block  # noqa: E402
from inference.priors import resolve  # noqa: E402
from inference.validate import THINNED_COMPLETENESS, density_posteriors  # noqa: E402
from models.config import DEFAULT_MEMBERS_KEPT  # noqa: E402
from models.io import load_model  # noqa: E402
from models.model import TARGET, host_split  # noqa: E402
from models.prior import TrainingPrior  # noqa: E402
from models.set_batches import MEMBER_INPUTS, SetData, thin_sets, thinning_keep  # noqa: E402
from models.set_encoder import SetSpec, set_log_prob_grid  # noqa: E402
from models.set_training import fit_set  # noqa: E402
from models.spec import ModelSpec, Standardizer, TrainSpec  # noqa: E402
from models.stage import held_out_mask, load_msigma  # noqa: E402

VARIANTS = {  # name -> (pooling, residual to M-sigma, summary features in the context)
    "mean": ("mean", False, False),
    "moments": ("moments", False, False),
    "attention": ("attention", False, False),
    "residual": ("moments", True, False),
    "features": ("moments", False, True),
}


@dataclass(frozen=True)
class Prep:
    """Context and target of a variant, standardised with training-split statistics.

    ``y`` standardised as ``(log10 M - m - mean) / std`` with m the M-sigma estimate (0 unless residual);
    ``offset`` = m / std per observation, so that a grid point g of log10 M is ``(g - mean) / std - offset``.
    """

    feature_set: str
    residual: bool
    features: bool
    msigma: Any
    y_mean: float
    y_std: float
    ctx_scaler: Standardizer | None

    def m_sigma(self, data: SetData) -> np.ndarray:
        """M-sigma estimate log10 M [Msun/h] from the sets' own dispersion (ddof 1, km/s), as msigma.json reads
        sigma_v_std; clipped to the fit's plausible range, the fit's pivot where a set has < 2 members."""
        v = data.inputs[:, 1].astype(np.float64) * 1000.0  # v_los / (1000 km/s) -> km/s
        n = data.counts
        s1 = np.add.reduceat(v, data.offsets[:-1]) if len(v) else np.zeros(len(n))
        s2 = np.add.reduceat(v * v, data.offsets[:-1]) if len(v) else np.zeros(len(n))
        s1, s2 = np.where(n > 0, s1, 0.0), np.where(n > 0, s2, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma = np.sqrt(np.maximum(s2 - s1 * s1 / n, 0.0) / (n - 1))
        m = self.msigma.predict(np.where(n >= 2, sigma, self.msigma.pivot))
        return np.clip(np.where(np.isfinite(m), m, self.msigma.intercept), 12.5, 16.0)

    def raw_context(self, data: SetData, feats: np.ndarray | None) -> np.ndarray:
        cols = []
        if self.feature_set == "full":
            cols.append(np.log10(np.maximum(data.counts, 1))[:, None])
        if self.residual:
            cols.append(self.m_sigma(data)[:, None])
        if self.features:
            cols.append(np.asarray(feats, np.float64))
        return np.column_stack(cols) if cols else np.zeros((data.n_obs, 0))

    def apply(self, data: SetData, y_true: np.ndarray, feats: np.ndarray | None = None
              ) -> tuple[SetData, np.ndarray]:
        """``data`` with its context and standardised target; and the offsets (N,) of the grid."""
        raw = self.raw_context(data, feats)
        ctx = self.ctx_scaler.transform(raw) if self.ctx_scaler is not None else raw.astype(np.float32)
        m = self.m_sigma(data) if self.residual else np.zeros(data.n_obs)
        y = ((np.asarray(y_true, np.float64) - m - self.y_mean) / self.y_std).astype(np.float32)
        return replace(data, context=np.asarray(ctx, np.float32), y=y), m / self.y_std

    @classmethod
    def fit(cls, feature_set: str, residual: bool, features: bool, msigma: Any, data: SetData, y_true: np.ndarray,
            feats: np.ndarray | None) -> Prep:
        proto = cls(feature_set, residual, features, msigma, 0.0, 1.0, None)
        m = proto.m_sigma(data) if residual else np.zeros(data.n_obs)
        t = np.asarray(y_true, np.float64) - m
        raw = proto.raw_context(data, feats)
        scaler = Standardizer.fit(raw) if raw.shape[1] else None
        return cls(feature_set, residual, features, msigma, float(t.mean()), float(t.std()), scaler)


def posteriors(log_q: np.ndarray, true: np.ndarray, grid: np.ndarray, p_train: np.ndarray) -> dict[str, Any]:
    """Corrected (flat target prior) posteriors of per-dex log densities (N, G): accuracy and coverage."""
    target = resolve("flat", grid, p_train=p_train, snapshot=None)
    ratio = jnp.asarray(log_prior_ratio(p_train, target), jnp.float32)
    g = jnp.asarray(grid, jnp.float32)
    pdfs, raws, values = [], [], []
    for s in range(0, len(log_q), 1024):
        out = posterior_block(jnp.asarray(log_q[s:s + 1024]), ratio, g)
        pdfs.append(np.asarray(out["pdf"]))
        raws.append(np.asarray(out["raw_pdf"]))
        values.append({k: np.asarray(out[k]) for k in ("mode", "median")})
    post = DensityPosteriors(grid, np.concatenate(pdfs), {k: np.concatenate([v[k] for v in values])
                                                           for k in ("mode", "median")},
                             np.concatenate(raws), target.log_density, p_train, target.name)
    return summary(post, true)


def summary(post: DensityPosteriors, true: np.ndarray) -> dict[str, Any]:
    cal = calibrate(true, post)
    out: dict[str, Any] = {"n": len(true)}
    for est in ("mode", "median"):
        acc = accuracy(post.values[est], true)
        out[est] = {"scatter_dex": round(acc["scatter"], 4), "bias_dex": round(acc["bias"], 4),
                    "max_abs_bin_bias_dex": round(max(abs(b["bias"]) for b in acc["by_bin"] if b["n"]), 4)}
    out["coverage_68"], out["coverage_95"] = (round(c, 3) for c in cal.headline_corrected)
    return out


def load_run(run: Path):
    table, meta = load_observation_table(run)
    members = read_members(run)
    with h5py.File(run / "members.h5", "r") as fh:
        if not (np.array_equal(fh["cluster_id"][...], table["cluster_id"].to_numpy())
                and np.array_equal(fh["los"][...], table["los"].to_numpy())):
            raise SystemExit(f"{run}: members.h5 rows are not in the observation table's order")
    return table, meta, members


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=Path("runs/default"))
    ap.add_argument("--set", choices=("full", "dynamics"), default="full")
    ap.add_argument("--variants", default="mean,moments,residual")
    ap.add_argument("--phi", default="32,32", help="per-member MLP widths")
    ap.add_argument("--hidden", default="128,128,64", help="trunk widths (the feature flow's)")
    ap.add_argument("--cap", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--members-kept", default="",
                    help="lo,hi of the dynamics set's training thinning (default: the run's dynamics flow's)")
    ap.add_argument("--true-members", action="store_true",
                    help="train and score on the true members only (no interlopers: the idealised case)")
    args = ap.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown or (args.set == "dynamics" and "features" in args.variants.split(",")):
        raise SystemExit(f"unknown variants {unknown}; known {list(VARIANTS)} ('features' only for the full set)")

    start = time.perf_counter()
    run = args.run
    table, meta, members = load_run(run)
    if args.true_members:  # the anchor's idealised case: no interlopers (the information limit of the members)
        keep = members.is_true_member.astype(bool)
        counts = np.bincount(np.repeat(np.arange(members.n_obs), members.counts)[keep], minlength=members.n_obs)
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        members = Members(offsets, **{k: v[keep] for k, v in members.arrays().items()})
    model_dir = run / "model"
    cylinder = meta["config"]["cylinder"]
    msigma = load_msigma(model_dir / "msigma.json")
    feature_flow = load_model(model_dir / "flow" if args.set == "full" else model_dir / "dynamics" / "flow")
    metrics = json.loads((run / "validation" / "metrics.json").read_text())
    y_all = table[TARGET].to_numpy(np.float64)
    test = held_out_mask(table, model_dir)
    feats_all = table[list(FEATURE_NAMES)].to_numpy(np.float64)
    full_data = SetData.build(members, MEMBER_INPUTS[args.set])
    # the dynamics flow's thinning ([train] members_kept) and its rows' minimum member count, from its model.json
    selection = json.loads((model_dir / "dynamics" / "flow" / "model.json").read_text())["selection"] \
        if args.set == "dynamics" else {}
    members_kept = tuple(selection.get("completeness", {}).get("members_kept_log_uniform", DEFAULT_MEMBERS_KEPT))
    if args.members_kept:
        members_kept = tuple(float(c) for c in args.members_kept.split(","))
    min_thinned = int(selection.get("min_members", cylinder["min_members"]))

    # the training pool and its early-stopping split: the feature flow's (train_model: host_split, seed 0)
    if args.set == "full":
        usable = np.isfinite(feats_all).all(axis=1) & (table["n_members"].to_numpy() >= int(cylinder["min_members"]))
    else:
        usable = np.ones(len(table), bool)
    pool = np.flatnonzero(~test & usable)
    val_mask = host_split(table["cluster_id"].to_numpy()[pool], feature_flow.train.validation_fraction,
                          feature_flow.train.seed)
    tr_rows, val_rows = pool[~val_mask], pool[val_mask]
    train_prior = TrainingPrior.estimate(y_all[tr_rows])
    grid = np.linspace(train_prior.grid[0], train_prior.grid[-1], GRID_POINTS)
    p_train = train_prior(grid)

    # test sets: complete lists (all held-out rows) and, for dynamics, validate's 40% thinning
    test_rows = np.flatnonzero(test)
    tests: dict[str, tuple[SetData, np.ndarray, np.ndarray | None]] = {
        "complete": (full_data.take(test_rows), y_all[test_rows], feats_all[test_rows])}
    if args.set == "dynamics":
        judged = test_rows[y_all[test_rows] >= MASS_RANGE[0] - BIN_WIDTH]
        rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(0x40,)))  # evaluate_thinned's stream
        kept = thin(members.take(judged), np.full(len(judged), THINNED_COMPLETENESS), rng)
        ok = kept.counts >= min_thinned
        thinned = SetData.build(kept, MEMBER_INPUTS[args.set]).take(ok)
        tests["thinned_40pc"] = (thinned, y_all[judged][ok], None)

    spec = ModelSpec(kind="flow", hidden=tuple(int(h) for h in args.hidden.split(",")))
    train = TrainSpec(ensemble=1, batch_size=args.batch_size, max_epochs=args.max_epochs, patience=args.patience,
                      learning_rate=args.learning_rate, seed=args.seed)
    results: dict[str, Any] = {}
    for name in args.variants.split(","):
        pooling, residual, features = VARIANTS[name]
        sspec = SetSpec(inputs=MEMBER_INPUTS[args.set], phi=tuple(int(w) for w in args.phi.split(",")),
                        pooling=pooling, cap=args.cap)
        tr_data, val_data = full_data.take(tr_rows), full_data.take(val_rows)
        augment = None
        if args.set == "dynamics":  # thinned afresh every epoch; validation thinned once (the stage's stream)
            val_rng = np.random.default_rng(np.random.SeedSequence(args.seed, spawn_key=(0xC0,)))
            val_data = val_data.with_members(thinning_keep(val_data.counts, members_kept, val_rng))
            val_ok = val_data.counts >= min_thinned
            val_data, val_y = val_data.take(val_ok), y_all[val_rows][val_ok]
        else:
            val_y = y_all[val_rows]
        prep = Prep.fit(args.set, residual, features, msigma, tr_data, y_all[tr_rows],
                        feats_all[tr_rows] if features else None)
        val_ready, _ = prep.apply(val_data, val_y, feats_all[val_rows] if features else None)
        tr_ready, _ = prep.apply(tr_data, y_all[tr_rows], feats_all[tr_rows] if features else None)
        if args.set == "dynamics":
            y_tr = y_all[tr_rows]

            def augment(data: SetData, rng: np.random.Generator, prep: Prep = prep, y_tr: np.ndarray = y_tr
                        ) -> SetData:
                kept = thin_sets(data, members_kept, rng)
                ready, _ = prep.apply(kept, y_tr)
                return ready.take(ready.counts >= min_thinned)

        t0 = time.perf_counter()
        params, hist = fit_set(spec, sspec, train_data=tr_ready, val_data=val_ready, train=train, seed=args.seed,
                               augment=augment, progress=lambda e, tl, vl, name=name, t0=t0: print(
                                   f"{name} epoch {e} train {tl:.4f} val {vl:.4f} {time.perf_counter() - t0:.0f} s",
                                   file=sys.stderr, flush=True))
        train_seconds = time.perf_counter() - t0
        out: dict[str, Any] = {
            "pooling": pooling, "residual_to_msigma": residual, "summary_features": features,
            "epochs": len(hist.val_loss), "best_epoch": hist.best_epoch, "train_seconds": round(train_seconds, 1),
            "seconds_per_epoch": round(train_seconds / max(len(hist.val_loss), 1), 2),
            "best_val_nll_per_dex": round(min(hist.val_loss) + float(np.log(prep.y_std)), 4)}
        for label, (data, true, feats) in tests.items():
            ready, offset = prep.apply(data, true, feats if features else None)
            t1 = time.perf_counter()
            lq = set_log_prob_grid(spec, sspec, [params], ready, (grid - prep.y_mean) / prep.y_std,
                                   offset_std=offset) - np.log(prep.y_std)
            seconds = time.perf_counter() - t1
            out[label] = posteriors(lq, true, grid, p_train) | {
                "posteriors_per_second": round(len(true) / seconds)}
            if label == "complete" and np.any(data.counts > args.cap):  # what the cap costs: the capped sets again
                big = np.flatnonzero(data.counts > args.cap)
                wide = replace(sspec, cap=int(data.counts.max()))
                sub, off = prep.apply(data.take(big), true[big], feats[big] if features and feats is not None
                                      else None)
                lq_all = set_log_prob_grid(spec, wide, [params], sub, (grid - prep.y_mean) / prep.y_std,
                                           offset_std=off) - np.log(prep.y_std)
                mode_capped = grid[np.argmax(lq[big], axis=1)]
                mode_all = grid[np.argmax(lq_all, axis=1)]
                out["cap"] = {"cap": args.cap, "observations_above": len(big),
                              "fraction_above": round(len(big) / data.n_obs, 5),
                              "members_dropped_fraction": round(float(np.sum(data.counts[big] - args.cap)
                                                                      / data.counts.sum()), 5),
                              "mean_abs_uncorrected_mode_change_dex": round(float(np.mean(np.abs(
                                  mode_capped - mode_all))), 4)}
        results[name] = out
        print(json.dumps({name: out}), file=sys.stderr, flush=True)

    # the feature flow on the same held-out hosts: metrics.json, and its own per-network validation NLL
    flow_val = [min(m_hist.val_loss) + float(np.log(feature_flow.y_std)) for m_hist in _histories(feature_flow,
                                                                                                   model_dir, args.set)]
    reference: dict[str, Any] = {"ensemble": feature_flow.train.ensemble,
                                 "best_val_nll_per_dex_per_network": [round(v, 4) for v in flow_val]}
    if args.set == "full":
        reference["complete"] = {"mode": {"scatter_dex": round(metrics["scatter_dex"], 4),
                                          "bias_dex": round(metrics["bias_dex"], 4)},
                                 "coverage_68": round(metrics["coverage_68"], 3),
                                 "coverage_95": round(metrics["coverage_95"], 3)}
    else:
        data, true, feats = tests["complete"]
        x = np.column_stack([table[n].to_numpy(np.float64)[test_rows] for n in FEATURE_SETS["dynamics"]])
        ok = np.isfinite(x).all(axis=1)
        reference["complete"] = summary(density_posteriors(feature_flow, x[ok], "flat", None), true[ok])
        dyn = metrics["dynamics_thinned"]
        reference["thinned_40pc"] = {"mode": {"scatter_dex": round(dyn["corrected_mode"]["scatter"], 4),
                                              "bias_dex": round(dyn["corrected_mode"]["bias"], 4)},
                                     "coverage_68": round(dyn["coverage_68"], 3),
                                     "coverage_95": round(dyn["coverage_95"], 3)}
    document = {
        "benchmark": "set model vs feature flow on the run's held-out hosts (issue 19)",
        "date": datetime.date.today().isoformat(), "machine": machine(), "run": str(run),
        "feature_set": args.set, "settings": {k: v for k, v in vars(args).items() if k != "run"},
        "training_rows": len(tr_rows), "validation_rows": len(val_rows),
        "test_rows": {k: len(v[1]) for k, v in tests.items()},
        "msigma_contaminated_scatter_dex": round(metrics["msigma_scatter_dex"], 4),
        "feature_flow": reference, "set_models": results,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(document, indent=1))


def _histories(model: Any, model_dir: Path, feature_set: str) -> list[Any]:
    """The feature flow's per-network training histories (model.json)."""
    from models.spec import History

    path = (model_dir / "flow" if feature_set == "full" else model_dir / "dynamics" / "flow") / "model.json"
    return [History(tuple(m["history"]["train_loss"]), tuple(m["history"]["val_loss"]))
            for m in json.loads(path.read_text())["members"]]


if __name__ == "__main__":
    main()

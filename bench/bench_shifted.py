"""Benchmark: does the posterior's uncertainty survive a universe whose galaxies behave differently? (issue 13)

    .venv/bin/python bench/bench_shifted.py                       # everything, into .cache/bench-shifted
    .venv/bin/python bench/bench_shifted.py --work DIR --box-size 600 --no-epistemic

Steps (each is skipped when its output exists, so an interrupted benchmark resumes):

1. Two default runs (``clustermass run``, the flow trained on the full feature set): ``marginalised``, the default
   ``[synth]`` whose galaxy-halo connection is drawn per host from published ranges
   (:mod:`ingest.synth.galaxy_physics`), and ``fixed``, every galaxy-physics key at the centre of its range.
2. Test boxes never trained on (another seed, ``clustermass synth --config``, then ``clustermass observe``):
   ``fiducial`` (the fixed, central physics), ``velocity_bias_0.93``, ``velocity_bias_1.07``, ``satellites_-30%``
   and ``satellites_+30%`` (satellite abundance x0.7 and x1.3, the edges of the default range), ``satellites_-15%``
   and ``satellites_+15%`` (inside it), each shifted box otherwise fiducial.
3. Unless ``--no-epistemic``: the flow of the marginalised run trained again with ``[train] epistemic =
   "mc_dropout"`` and ``"bayes_by_backprop"`` (``clustermass train``, same observations and held-out hosts).
4. Every model is scored on the marginalised run's held-out hosts (in distribution) and on every test box (all
   hosts), under the flat target prior: bias and scatter of the corrected mode over 1e14-1e15 Msun/h [dex], the
   largest |bias| of its 0.1-dex bins there, 68/95% coverage (importance-weighted to the flat prior, as
   ``clustermass validate``; and of the uncorrected posterior under the training prior, unweighted), the mean
   negative log posterior density of the truth per dex (NLL, uncorrected), the median epistemic spread
   (:func:`models.model.epistemic_spread`, dex; also with every feature moved 3 training standard deviations up,
   inputs unlike any training observation), the training time per network and the posterior throughput.

Prints one JSON document and a Markdown table. Acceptance (issue 13): on every shifted box the marginalised model's
coverage is within 5 points of nominal and its per-bin |bias| <= 0.05 dex; in distribution it loses at most 10% in
scatter against the fixed model on the fiducial box.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import machine

from features.io import load_observation_table
from inference.metrics import MASS_RANGE, accuracy, calibrate
from inference.validate import density_posteriors
from ingest.synth.galaxy_physics import GALAXY_PHYSICS, KEYS, mean
from models.io import load_model
from models.model import TARGET, epistemic_spread, log_prob
from models.stage import held_out_mask
from pipeline.snapshot import Snapshot

#: independent test boxes: another seed than the training runs' (0), so no test host was ever trained on
TEST_SEED = 101
SHIFTS: dict[str, dict[str, float]] = {
    "fiducial": {},
    "velocity_bias_0.93": {"velocity_bias": 0.93},
    "velocity_bias_1.07": {"velocity_bias": 1.07},
    "satellites_-30%": {"satellite_abundance": 0.7},
    "satellites_+30%": {"satellite_abundance": 1.3},
    "satellites_-15%": {"satellite_abundance": 0.85},
    "satellites_+15%": {"satellite_abundance": 1.15},
}
#: the test sets the MC-dropout and Bayes-by-Backprop variants are scored on (24 and 8 network passes per
#: observation make scoring every box slow on 2 cores)
EPISTEMIC_SETS = ("fiducial", "velocity_bias_0.93", "satellites_-30%", "satellites_+15%")
EPISTEMIC: dict[str, str] = {
    "mc_dropout": 'epistemic = "mc_dropout"\ndropout = 0.1\nmc_samples = 8\n',
    "bayes_by_backprop": 'epistemic = "bayes_by_backprop"\n',
}


def fixed_centres() -> dict[str, Any]:
    """The fixed-physics universe: every galaxy-physics key at the centre of its default range, except the merger
    boost, which stays a uniform draw per merging host (a fixed boost would be a different tail, not its centre)."""
    centres: dict[str, Any] = {key: round(mean(getattr(GALAXY_PHYSICS, key)), 6) for key in KEYS}
    centres["merger_boost_dex"] = list(GALAXY_PHYSICS.merger_boost_dex)
    return centres


def _toml_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(float(value)) if isinstance(value, float) else repr(value)


def _synth_toml(box_size: float, seed: int, physics: dict[str, Any]) -> str:
    lines = ["[synth]", f"box_size = {box_size!r}", f"seed = {seed}"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in physics.items()]
    return "\n".join(lines) + "\n"


def _cli(*args: str, log: Path) -> float:
    """Run ``clustermass ARGS`` (quiet), its output into ``log``; the wall seconds."""
    start = time.perf_counter()
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, "-m", "clustermass", *args], stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"error: clustermass {' '.join(args)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


#: with --sensitivity: the default universe but a wider satellite-abundance range (how the shifted-box bias and the
#: in-distribution scatter trade against each other)
WIDE_ABUNDANCE = (0.5, 1.5)


def train_runs(work: Path, box_size: float, *, sensitivity: bool) -> dict[str, Path]:
    runs = {}
    universes: dict[str, dict[str, Any]] = {"marginalised": {}, "fixed": fixed_centres()}
    if sensitivity:
        universes["wide_abundance"] = {"satellite_abundance": list(WIDE_ABUNDANCE)}
    for name, physics in universes.items():
        run = work / f"run-{name}"
        if not (run / "model" / "flow" / "model.json").exists():
            config = work / f"run-{name}.toml"
            config.write_text(_synth_toml(box_size, 0, physics)
                              + '\n[train]\nmodels = ["flow"]\nfeature_sets = ["full"]\n'
                              + f'\n[output]\ndir = "{run}"\n')
            seconds = _cli("run", "--config", str(config), "--quiet", log=work / f"run-{name}.log")
            print(f"run {name}: {seconds:.0f} s", file=sys.stderr)
        runs[name] = run
    return runs


def test_boxes(work: Path, box_size: float, *, names: Sequence[str] | None = None) -> dict[str, Path]:
    """The observations of the test boxes ``names`` (default: every one of :data:`SHIFTS`), synthesised and observed
    into ``work`` where missing."""
    boxes = {}
    for name, shift in SHIFTS.items():
        if names is not None and name not in names:
            continue
        obs = work / f"obs-{name}"
        if not (obs / "observations").exists():
            box = work / f"box-{name}"
            config = work / f"box-{name}.toml"
            config.write_text(_synth_toml(box_size, TEST_SEED, fixed_centres() | shift))
            if not (box / "snapshot.json").exists():
                _cli("synth", "--config", str(config), "--out", str(box), "--quiet", log=work / f"box-{name}.log")
            _cli("observe", "--halos", str(box / "halos.h5"), "--galaxies", str(box / "galaxies.h5"), "--out",
                 str(obs), "--quiet", log=work / f"obs-{name}.log")
            print(f"test box {name}: written", file=sys.stderr)
        boxes[name] = obs
    return boxes


def epistemic_models(work: Path, run: Path) -> dict[str, Path]:
    models = {}
    for name, keys in EPISTEMIC.items():
        out = work / f"models-{name}"
        if not (out / "flow" / "model.json").exists():
            config = work / f"train-{name}.toml"
            config.write_text('[train]\nmodels = ["flow"]\nfeature_sets = ["full"]\n' + keys)
            _cli("train", "--observations", str(run), "--out", str(out), "--config", str(config), "--kind", "flow",
                 "--quiet", log=work / f"train-{name}.log")
        models[name] = out
    return models


def score(model_dir: Path, obs_dir: Path, *, held_out_of: Path | None, cache: Path) -> dict[str, Any]:
    """The metrics of the flow in ``model_dir`` on the observations in ``obs_dir`` (see the module docstring),
    kept in ``cache`` under the model file's digest (a retrained model is scored again)."""
    digest = hashlib.sha256((model_dir / "flow" / "model.json").read_bytes()).hexdigest()[:16]
    kept = cache / f"{digest}-{obs_dir.name}-{'held' if held_out_of else 'all'}.json"
    if kept.exists():
        return json.loads(kept.read_text())
    result = _score(model_dir, obs_dir, held_out_of=held_out_of)
    cache.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(result, default=float))
    return result


def _score(model_dir: Path, obs_dir: Path, *, held_out_of: Path | None) -> dict[str, Any]:
    model = load_model(model_dir / "flow")
    table, meta = load_observation_table(obs_dir)
    if held_out_of is not None:
        table = table[held_out_mask(table, held_out_of)].reset_index(drop=True)
    x = table[list(model.feature_names)].to_numpy(np.float64)
    keep = np.isfinite(x).all(axis=1)
    x, true = x[keep], table[TARGET].to_numpy(np.float64)[keep]
    start = time.perf_counter()
    post = density_posteriors(model, x, "flat", Snapshot.from_dict(meta["snapshot"]))
    rate = len(x) / (time.perf_counter() - start)
    cal = calibrate(true, post)
    acc = accuracy(post.values["mode"], true)
    bins = [b for b in acc["by_bin"] if b["n"] >= 20]
    in_range = (true >= MASS_RANGE[0]) & (true < MASS_RANGE[1])
    spread = epistemic_spread(model, x[in_range], post.grid)
    # inputs unlike any training observation: the same rows with every feature moved 3 training sd up
    far = x[in_range] + 3.0 * np.asarray(model.x_scaler.std)
    far_spread = epistemic_spread(model, far, post.grid)
    members = json.loads((model_dir / "flow" / "model.json").read_text())["members"]
    return {
        "n": len(true), "n_1e14_1e15": int(acc["n"]),
        "bias": acc["bias"], "scatter": acc["scatter"],
        "max_abs_bin_bias": max(abs(b["bias"]) for b in bins) if bins else None,
        "bin_bias": {f"{b['lo']:.1f}": round(b["bias"], 4) for b in bins},
        "coverage_68": cal.headline_corrected[0], "coverage_95": cal.headline_corrected[1],
        "uncorrected_coverage_68": cal.headline_uncorrected[0], "uncorrected_coverage_95": cal.headline_uncorrected[1],
        "nll_per_dex": float(-np.mean(log_prob(model, x[in_range], true[in_range]))),
        "median_epistemic_spread_dex": float(np.median(spread)),
        "median_epistemic_spread_features_plus_3sd_dex": float(np.median(far_spread)),
        "train_seconds_per_network": float(np.mean([m["history"]["seconds"] for m in members])),
        "networks": len(members),
        "posterior_obs_per_s": round(rate),
    }


def markdown(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = ("| model | test set | n (1e14-1e15) | bias | scatter | max bin abs(bias) | coverage 68 / 95 | "
            "NLL/dex | epistemic spread (same rows, features +3 sd) |")
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for model, sets in results.items():
        for name, m in sets.items():
            worst = "" if m["max_abs_bin_bias"] is None else f"{m['max_abs_bin_bias']:.3f}"
            rows.append(f"| {model} | {name} | {m['n_1e14_1e15']} | {m['bias']:+.3f} | {m['scatter']:.3f} | {worst} | "
                        f"{m['coverage_68']:.3f} / {m['coverage_95']:.3f} | {m['nll_per_dex']:.3f} | "
                        f"{m['median_epistemic_spread_dex']:.4f} "
                        f"({m['median_epistemic_spread_features_plus_3sd_dex']:.3f}) |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".cache/bench-shifted"))
    parser.add_argument("--box-size", type=float, default=800.0, help="every box's side, Mpc/h (default run: 800)")
    parser.add_argument("--no-epistemic", action="store_true", help="skip the MC-dropout and Bayes-by-Backprop runs")
    parser.add_argument("--sensitivity", action="store_true",
                        help=f"also train on a wider satellite-abundance range {WIDE_ABUNDANCE}")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = train_runs(args.work, args.box_size, sensitivity=args.sensitivity)
    boxes = test_boxes(args.work, args.box_size)
    models = {"marginalised (ensemble)": runs["marginalised"] / "model", "fixed (ensemble)": runs["fixed"] / "model"}
    if args.sensitivity:
        models[f"abundance {WIDE_ABUNDANCE[0]}-{WIDE_ABUNDANCE[1]} (ensemble)"] = runs["wide_abundance"] / "model"
    if not args.no_epistemic:
        models |= {f"marginalised ({k})": v for k, v in epistemic_models(args.work, runs["marginalised"]).items()}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, model_dir in models.items():
        held = runs["marginalised"] / "model"
        cache = args.work / "scores"
        results[name] = {"held-out (marginalised box)": score(model_dir, runs["marginalised"], held_out_of=held,
                                                              cache=cache)}
        for box, obs in boxes.items():
            if name.endswith("(ensemble)") or box in EPISTEMIC_SETS:
                results[name][box] = score(model_dir, obs, held_out_of=None, cache=cache)
                print(f"scored {name} on {box}", file=sys.stderr)
    doc = {"benchmark": "shifted_universes", "date": datetime.date.today().isoformat(), "machine": machine(),
           "box_size": args.box_size, "test_seed": TEST_SEED, "galaxy_physics_keys": list(KEYS),
           "fixed_physics": fixed_centres(), "shifts": SHIFTS, "results": results}
    print(json.dumps(doc, indent=2, default=float))
    print(markdown(results))


if __name__ == "__main__":
    main()

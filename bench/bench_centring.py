"""Benchmark: what centring errors cost the feature flows, trained with and without them (issue 19.5).

    .venv/bin/python bench/bench_centring.py --on runs/centring-on --off runs/centring-off

Inputs: two runs of the default pipeline on the same box, one observed with the published centring errors (the
default, ``[observe] centring = "zhang19-lauer14"``, :mod:`features.centring`), one from the true halo centres
(``centring = "none"``); README "Centring errors" gives the two commands. Each run trains the full and the dynamics
flow on its own observations and holds out the same hosts (the split is a function of the training seed and the
host ids).

Every model (trained with / without centring errors) is scored on its held-out hosts observed with and without
them. The held-out rows observed the other way are the other run's rows of those hosts: an observation is a
function of (host, line of sight, cylinder, centring, seed) alone, so they are exactly what ``clustermass validate
--centring`` observes again from the catalogs (the benchmark checks that the two runs differ only in centring and
that each run's own score reproduces its ``validation/metrics.json``).

Metrics, as ``clustermass validate`` computes them (:mod:`inference.validate`, :mod:`inference.metrics`) under the
flat target prior: bias and scatter of the corrected mode over 1e14-1e15 Msun/h [dex], the largest |bias| of its
0.1-dex bins holding >= 20 observations, 68/95% coverage importance-weighted to the target prior; for the full flow,
the dynamics flow on complete member lists, and the dynamics flow on lists randomly thinned to 40%
(:func:`inference.validate.evaluate_thinned`). Prints one JSON document and a Markdown table.

Acceptance (issue 19.5): trained with centring errors and scored on hosts with them, coverage within 3 points of
nominal and scatter at most 10% above the same model's on hosts without them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import machine

from features.io import load_observation_table, read_members
from inference.metrics import accuracy, calibrate
from inference.priors import DEFAULT_PRIOR
from inference.validate import density_posteriors, evaluate_thinned
from models.io import load_model, read_description
from models.model import TARGET
from models.stage import held_out_mask
from pipeline.snapshot import Snapshot

#: the test sets: the held-out hosts observed with the published centring errors, and from the true centres
SETS = {"with centring errors": "on", "without": "off"}
MIN_BIN_ROWS = 20


def _runs(on: Path, off: Path) -> dict[str, dict[str, Any]]:
    """Each run's observation table, members and metadata, after checking the two differ only in centring."""
    runs = {}
    for name, path in (("on", on), ("off", off)):
        table, meta = load_observation_table(path)
        runs[name] = {"path": path, "table": table, "meta": meta, "members": read_members(path)}
    a, b = (dict(runs[k]["meta"]["config"]) for k in ("on", "off"))
    centring = a.pop("centring")["model"], b.pop("centring", {"model": "none"})["model"]
    if a != b or runs["on"]["meta"]["snapshot"] != runs["off"]["meta"]["snapshot"] or centring[0] == "none" \
            or centring[1] != "none":
        raise SystemExit(f"expected two runs of one box and cylinder, centred (--on) and not (--off); got centring "
                         f"{centring} and configurations {a} vs {b}")
    return runs


def _flow_metrics(model, table, snapshot: Snapshot) -> dict[str, Any]:
    x = table[list(model.feature_names)].to_numpy(np.float64)
    keep = np.isfinite(x).all(axis=1)
    true = table[TARGET].to_numpy(np.float64)[keep]
    post = density_posteriors(model, x[keep], DEFAULT_PRIOR, snapshot)
    cal = calibrate(true, post)
    acc = accuracy(post.values["mode"], true)
    bins = [b for b in acc["by_bin"] if b["n"] >= MIN_BIN_ROWS]
    return {"n": int(keep.sum()), "n_1e14_1e15": int(acc["n"]), "bias": acc["bias"], "scatter": acc["scatter"],
            "max_abs_bin_bias": max(abs(b["bias"]) for b in bins),
            "coverage_68": cal.headline_corrected[0], "coverage_95": cal.headline_corrected[1]}


def score(model_dir: Path, rows: dict[str, Any], snapshot: Snapshot) -> dict[str, Any]:
    """The full and dynamics flows of ``model_dir`` on its held-out hosts' rows of one run (``rows``)."""
    mask = held_out_mask(rows["table"], model_dir)
    table, members = rows["table"][mask].reset_index(drop=True), rows["members"].take(mask)
    out = {"full": _flow_metrics(load_model(model_dir / "flow"), table, snapshot)}
    dyn_dir = model_dir / "dynamics" / "flow"
    dynamics = load_model(dyn_dir)
    out["dynamics"] = _flow_metrics(dynamics, table, snapshot)
    description = read_description(dyn_dir)
    thinned = evaluate_thinned(table, members, dynamics, min_members=int(description["selection"]["min_members"]),
                               r_aperture=float(description["observations"]["config"]["cylinder"]["r_aperture"]),
                               snapshot=snapshot)
    acc = thinned["corrected_mode"]
    bins = [b for b in acc["by_bin"] if b["n"] >= MIN_BIN_ROWS]
    out["dynamics_thinned_40"] = {"n": thinned["n"], "n_1e14_1e15": acc["n"], "bias": acc["bias"],
                                  "scatter": acc["scatter"], "max_abs_bin_bias": max(abs(b["bias"]) for b in bins),
                                  "coverage_68": thinned["coverage_68"], "coverage_95": thinned["coverage_95"]}
    return out


def acceptance(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Trained with centring errors: on hosts with them, coverage within 3 points and scatter <= 1.1x without."""
    out = {}
    trained = results["trained with centring errors"]
    for model in ("full", "dynamics", "dynamics_thinned_40"):
        w, wo = trained["with centring errors"][model], trained["without"][model]
        out[model] = {"coverage_68_within_3pp": abs(w["coverage_68"] - 0.68) <= 0.03,
                      "coverage_95_within_3pp": abs(w["coverage_95"] - 0.95) <= 0.03,
                      "scatter_ratio_with_over_without": w["scatter"] / wo["scatter"],
                      "scatter_at_most_10pc_worse": w["scatter"] <= 1.1 * wo["scatter"]}
    return out


def markdown(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = ("| model | trained | scored on hosts | n (1e14-1e15) | bias | scatter | max bin abs(bias) | "
            "coverage 68 / 95 |")
    rows = [head, "|---" * (head.count("|") - 1) + "|"]
    for model in ("full", "dynamics", "dynamics_thinned_40"):
        for trained, sets in results.items():
            for name, m in sets.items():
                m = m[model]
                rows.append(f"| {model} | {trained.removeprefix('trained ')} | {name} | {m['n_1e14_1e15']} | "
                            f"{m['bias']:+.3f} | {m['scatter']:.3f} | {m['max_abs_bin_bias']:.3f} | "
                            f"{m['coverage_68']:.3f} / {m['coverage_95']:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--on", type=Path, default=Path("runs/centring-on"), help="the run with centring errors")
    parser.add_argument("--off", type=Path, default=Path("runs/centring-off"), help="the run without")
    args = parser.parse_args()
    runs = _runs(args.on, args.off)
    snapshot = Snapshot.from_dict(runs["on"]["meta"]["snapshot"])
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for trained, run in (("trained with centring errors", "on"), ("trained without", "off")):
        model_dir = runs[run]["path"] / "model"
        results[trained] = {name: score(model_dir, runs[which], snapshot) for name, which in SETS.items()}
        own = json.loads((runs[run]["path"] / "validation" / "metrics.json").read_text())
        mine = results[trained][next(k for k, v in SETS.items() if v == run)]["full"]
        if not np.isclose(own["scatter_dex"], mine["scatter"], rtol=1e-6, atol=1e-9):
            raise SystemExit(f"{run}: scored {mine['scatter']} but validate wrote {own['scatter_dex']}")
        print(f"scored {trained}", file=sys.stderr)
    doc = {"benchmark": "centring", "date": datetime.date.today().isoformat(), "machine": machine(),
           "runs": {"on": str(args.on), "off": str(args.off)},
           "centring": runs["on"]["meta"]["config"]["centring"], "target_prior": DEFAULT_PRIOR,
           "results": results, "acceptance": acceptance(results)}
    print(json.dumps(doc, indent=2, default=float))
    print(markdown(results))


if __name__ == "__main__":
    main()

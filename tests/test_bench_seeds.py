"""bench/bench_seeds.py (issue 20): the seeds' metrics.json combined, and issue 20's acceptance judged on them, from
hand-made metrics; finished runs reused without running anything."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_seeds.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_seeds", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_seeds"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_seeds", None)


def _range(lo, hi, c68=None, c95=None, ess=None, n=0, u68=0.5, u95=0.9):
    if not n:
        return {"lo": lo, "hi": hi, "n": 0, **dict.fromkeys(("ess", "coverage_68", "coverage_95", "se_68", "se_95",
                                                             "uncorrected_68", "uncorrected_95"))}
    return {"lo": lo, "hi": hi, "n": n, "ess": ess, "coverage_68": c68, "coverage_95": c95, "se_68": 0.01,
            "se_95": 0.01, "uncorrected_68": u68, "uncorrected_95": u95}


def _bins(changes: dict[float, tuple[int, float | None, float]]) -> list[dict]:
    """Ten 0.1-dex bins over 14-15, each n 100, bias 0, se 0.005, except ``changes``: lo -> (n, bias, se)."""
    out = []
    for i in range(10):
        lo = round(14.0 + 0.1 * i, 6)
        n, bias, se = changes.get(lo, (100, 0.0, 0.005))
        out.append({"lo": lo, "hi": round(lo + 0.1, 6), "n": n, "bias": bias, "bias_se": se, "scatter": 0.1})
    return out


#: three seeds: overall 68% coverage 0.60 / 0.70 / 0.66 at ESS 100 / 300 / 100 (ESS-weighted 0.672, within 2
#: points; plain mean 0.653, not); 13-13.5 empty everywhere; 13.5-14 calibrated; 14-14.5 empty in seed 0, 0.60 and
#: 0.68 at ESS 200 and 600 in the others (0.66); 14.5-15 0.50 / 0.50 / 0.60 at ESS 50 / 50 / 100 (0.55: fails);
#: bin 14.0 biased +0.03 in seeds 0 and 2 (pooled +0.012: passes), bin 14.7 -0.03 in every seed (fails), bin 14.9
#: empty in seed 0
SEEDS = {
    0: {"scatter": 0.10, "bias": -0.01, "c68": 0.60, "ess": 100, "ranges": [
        _range(13.0, 13.5), _range(13.5, 14.0, 0.67, 0.95, 1000, 5000), _range(14.0, 14.5),
        _range(14.5, 15.0, 0.50, 0.90, 50, 200), _range(15.0, None)],
        "bins": _bins({14.0: (100, 0.03, 0.01), 14.7: (100, -0.03, 0.005), 14.9: (0, None, None)})},
    1: {"scatter": 0.11, "bias": 0.0, "c68": 0.70, "ess": 300, "ranges": [
        _range(13.0, 13.5), _range(13.5, 14.0, 0.68, 0.95, 1000, 5000), _range(14.0, 14.5, 0.60, 0.94, 200, 400),
        _range(14.5, 15.0, 0.50, 0.90, 50, 200), _range(15.0, None)],
        "bins": _bins({14.0: (300, 0.0, 0.01), 14.7: (100, -0.03, 0.005), 14.9: (40, 0.01, 0.02)})},
    2: {"scatter": 0.12, "bias": 0.01, "c68": 0.66, "ess": 100, "ranges": [
        _range(13.0, 13.5), _range(13.5, 14.0, 0.69, 0.95, 1000, 5000), _range(14.0, 14.5, 0.68, 0.96, 600, 1200),
        _range(14.5, 15.0, 0.60, 0.92, 100, 300), _range(15.0, None)],
        "bins": _bins({14.0: (100, 0.03, 0.01), 14.7: (100, -0.03, 0.005), 14.9: (40, 0.01, 0.02)})},
}


def _metrics(seed: int) -> dict:
    s = SEEDS[seed]
    return {"n_test": 1000 + seed, "scatter_dex": s["scatter"], "bias_dex": s["bias"], "coverage_68": s["c68"],
            "coverage_95": 0.95, "coverage_effective_sample_size": s["ess"], "coverage_by_mass_range": s["ranges"],
            "bias_by_bin": s["bins"], "acceptance": {"scatter_at_most_half_msigma": {"pass": True}}}


def test_the_seeds_are_combined_weighted_by_effective_sample_size_and_judged(bench):
    combined = bench.aggregate({seed: bench.seed_figures(_metrics(seed)) for seed in SEEDS}, scatter_limit=0.12)
    cov = combined["coverage"]["68"]
    assert cov["ess_weighted"] == pytest.approx((60 + 210 + 66) / 500) and cov["ess"] == 500
    assert cov["mean"] == pytest.approx((0.60 + 0.70 + 0.66) / 3)
    assert cov["se"] == pytest.approx((0.672 * 0.328 / 500) ** 0.5)
    verdicts = combined["acceptance"]
    assert verdicts["coverage_68_within_2pp"]["pass"] and verdicts["coverage_95_within_2pp"]["pass"]
    assert verdicts["coverage_68_within_2pp"]["plain_mean"] == pytest.approx(0.6533, abs=1e-4)

    low, mid, upper, top, above = combined["coverage_by_mass_range"]
    assert low["n"] == 0 and low["coverage_68"] is None and low["seeds"] == 0
    assert above["n"] == 0 and above["seeds"] == 0
    assert mid["coverage_68"] == pytest.approx(0.68) and mid["ess"] == 3000 and mid["n"] == 15000
    assert upper["seeds"] == 2 and upper["n"] == 1600 and upper["ess"] == 800
    assert upper["coverage_68"] == pytest.approx(0.66) and upper["mean_68"] == pytest.approx(0.64)
    assert upper["coverage_95"] == pytest.approx((0.94 * 200 + 0.96 * 600) / 800)
    assert upper["uncorrected_68"] == pytest.approx(0.5)
    assert top["coverage_68"] == pytest.approx(0.55) and top["se_68"] == pytest.approx((0.55 * 0.45 / 200) ** 0.5)
    ranges = verdicts["coverage_within_3pp_in_every_mass_range"]
    assert not ranges["pass"] and ranges["failing_ranges"] == ["14.5-15"]
    assert [r["range"] for r in ranges["ranges"]] == ["13.5-14", "14-14.5", "14.5-15"]

    bins = {b["lo"]: b for b in combined["bias_by_bin"]}
    assert bins[14.0]["bias"] == pytest.approx(6 / 500) and bins[14.0]["n"] == 500
    assert bins[14.0]["bias_se"] == pytest.approx((1 + 9 + 1) ** 0.5 / 500)
    assert bins[14.9]["seeds"] == 2 and bins[14.9]["n"] == 80 and bins[14.9]["bias"] == pytest.approx(0.01)
    assert bins[14.9]["by_seed"] == [None, 0.01, 0.01] and bins[14.0]["by_seed"] == [0.03, 0.0, 0.03]
    assert bins[14.7]["bias"] == pytest.approx(-0.03)
    bias = verdicts["bias_within_max_0.02_or_2se_in_every_bin"]
    assert not bias["pass"] and bias["failing_bins"] == [(14.7, -0.03)] and bias["bins_checked"] == 10

    assert combined["scatter_dex"]["mean"] == pytest.approx(0.11)
    assert verdicts["scatter_not_worse_than_baseline"]["pass"]
    assert not bench.aggregate({s: bench.seed_figures(_metrics(s)) for s in SEEDS}, scatter_limit=0.105)[
        "acceptance"]["scatter_not_worse_than_baseline"]["pass"]
    assert combined["bias_dex"]["mean"] == pytest.approx(0.0) and not combined["passed"]


def test_the_run_configuration_is_the_default_with_the_seed_and_the_run_directory(bench):
    extra = {"synth": {"box_size": 110.0, "seed": 9, "workers": 1}, "train": {"hidden": [32, 32], "ensemble": 1},
             "observe": {"centring": "none"}}
    doc = tomllib.loads(bench.config_text(2, extra))
    assert doc == {"synth": {"box_size": 110.0, "seed": 2, "workers": 1}, "train": {"hidden": [32, 32], "ensemble": 1},
                   "observe": {"centring": "none"}, "output": {"dir": "run"}}
    assert tomllib.loads(bench.config_text(0)) == {"synth": {"seed": 0}, "output": {"dir": "run"}}


def _finished_run(work: Path, seed: int, bench, text: str | None = None) -> None:
    d = work / f"seed-{seed}"
    (d / "run" / "validation").mkdir(parents=True)
    (d / "config.toml").write_text(text or bench.config_text(seed))
    (d / "run" / "run.json").write_text(json.dumps({"config": str((d / "config.toml").resolve()),
                                                    "total_seconds": 200.0 + seed}))
    (d / "run" / "validation" / "metrics.json").write_text(json.dumps(_metrics(seed)))
    (d / "bench.json").write_text(json.dumps({"wall_s": 250.0 + seed}))


def test_finished_runs_are_reused_and_the_figures_written(bench, tmp_path, monkeypatch, capsys):
    def no_run(*args, **kwargs):
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(bench, "clustermass_command", no_run)  # what a run would call first
    for seed in SEEDS:
        _finished_run(tmp_path, seed, bench)
    doc = bench.main(["--work", str(tmp_path), "--seeds", "0", "1", "2"])
    assert [doc["runs"][s]["reused"] for s in ("0", "1", "2")] == [True] * 3
    assert doc["runs"]["1"]["wall_s"] == 251.0 and doc["runs"]["2"]["flow_seconds"] == 202.0
    assert json.loads((tmp_path / "bench-seeds.json").read_text()) == json.loads(json.dumps(doc))
    assert doc["combined"]["coverage"]["68"]["ess_weighted"] == pytest.approx(0.672)
    out = capsys.readouterr().out
    assert "| ESS-weighted |" in out and "FAIL coverage_within_3pp_in_every_mass_range (failing: 14.5-15)" in out
    assert "| 14.9-15.0 | 80 | -, +0.010, +0.010 | +0.0100 +- 0.0141 |" in out
    # seed 1's configuration changed (or --fresh): it is run again
    (tmp_path / "seed-1" / "config.toml").write_text(bench.config_text(1, {"train": {"ensemble": 1}}))
    with pytest.raises(AssertionError, match="ran"):
        bench.main(["--work", str(tmp_path), "--seeds", "0", "1"])
    (tmp_path / "seed-1" / "config.toml").write_text(bench.config_text(1))
    assert bench.main(["--work", str(tmp_path), "--seeds", "1"])["runs"]["1"]["reused"]
    with pytest.raises(AssertionError, match="ran"):
        bench.main(["--work", str(tmp_path), "--seeds", "1", "--fresh"])


def test_a_seed_without_a_scatter_is_left_out_of_the_mean(bench):
    """A run with no held-out row in 1e14-1e15 has no scatter or bias (null in metrics.json): the mean is over the
    others, and with none at all the scatter criterion fails."""
    figures = {seed: bench.seed_figures(_metrics(seed)) for seed in SEEDS}
    figures[1] |= {"scatter_dex": None, "bias_dex": None}
    combined = bench.aggregate(figures, scatter_limit=0.12)
    assert combined["scatter_dex"]["mean"] == pytest.approx(0.11) and combined["bias_dex"]["mean"] == 0.0
    assert combined["scatter_dex"]["sd_over_seeds"] == pytest.approx(0.02 ** 0.5 * 0.1)
    for f in figures.values():
        f["scatter_dex"] = None
    assert not bench.aggregate(figures)["acceptance"]["scatter_not_worse_than_baseline"]["pass"]
    assert "| 0 |  | n/a |" in bench.markdown({"per_seed": {str(s): f for s, f in figures.items()}, "runs": {},
                                                "combined": bench.aggregate(figures)})

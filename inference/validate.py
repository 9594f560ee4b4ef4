"""Validation on held-out hosts: accuracy of every method, calibration, acceptance checks, metrics.json and plots.

Methods compared (log10 M200c estimates): the M-sigma power law, the MSE regression, the uncorrected posterior
mean (what NLL training alone gives) and the corrected mode and median of every density model (MDN, flow). The
main model (default: the flow when trained) provides the catalog, the calibration and the headline metrics.
Accuracy is bias and scatter of log10(M_est / M_true) over 1e14-1e15 h^-1 Msun and in 0.1-dex bins of true mass.
Calibration: coverage of central credible intervals and the PIT histogram — for the corrected posterior on the
held-out set importance-weighted to the target prior, for the uncorrected one on the held-out set as drawn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pandas as pd

from inference import calibration, plots
from inference.posterior import default_grid, p_train_on, posteriors
from inference.priors import TargetPrior, resolve
from inference.summaries import pit
from models.model import TARGET, TrainedModel, predict_point
from models.msigma import MSigmaFit
from pipeline.files import write_json
from pipeline.snapshot import Snapshot

MASS_RANGE = (14.0, 15.0)
BIN_WIDTH = 0.1
MIN_BIN_COUNT = 30
COVERAGE_TOLERANCE = 0.03


def bin_edges(lo: float = MASS_RANGE[0], hi: float = MASS_RANGE[1], width: float = BIN_WIDTH) -> np.ndarray:
    return np.round(np.arange(lo, hi + width / 2, width), 6)


def accuracy(est: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Bias/scatter over MASS_RANGE and per 0.1-dex bin."""
    sel = (true >= MASS_RANGE[0]) & (true < MASS_RANGE[1])
    return {"range": list(MASS_RANGE), **calibration.bias_scatter(est[sel], true[sel]),
            "by_bin": calibration.binned(est, true, bin_edges())}


def acceptance(metrics: dict[str, Any], main_kind: str) -> dict[str, Any]:
    """The science acceptance criteria of issue 5 for the main model, each with its numbers and a verdict."""
    main = metrics["methods"][f"{main_kind}_corrected_mode"]
    bins = [b for b in main["by_bin"] if b["n"] >= MIN_BIN_COUNT]
    bad = [b for b in bins if abs(b["bias"]) > max(0.02, 2 * b["bias_se"])]
    ms = metrics["methods"]["msigma"]["scatter"]
    c68, c95 = metrics["coverage_68"], metrics["coverage_95"]
    full_mse = metrics["methods"]["mse_regression"]["full_range_by_bin"]
    unc_kind = "mdn" if "mdn_uncorrected_mean" in metrics["methods"] else main_kind
    full_unc = metrics["methods"][f"{unc_kind}_uncorrected_mean"]["full_range_by_bin"]
    ends = lambda rows: [r for r in rows if r["n"] >= MIN_BIN_COUNT]  # noqa: E731
    return {
        "bias_within_max_0.02_or_2se_in_every_bin": {"pass": not bad, "bins_checked": len(bins),
                                                      "failing_bins": [(b["lo"], round(b["bias"], 4)) for b in bad]},
        "scatter_at_most_half_msigma": {"pass": bool(main["scatter"] <= 0.5 * ms), "scatter": main["scatter"],
                                        "msigma_scatter": ms},
        "coverage_68_within_3pp": {"pass": bool(abs(c68 - 0.68) <= COVERAGE_TOLERANCE), "value": c68},
        "coverage_95_within_3pp": {"pass": bool(abs(c95 - 0.95) <= COVERAGE_TOLERANCE), "value": c95},
        "mse_and_uncorrected_mean_biased_at_ends": {
            "mse_lowest_bin_bias": ends(full_mse)[0]["bias"] if ends(full_mse) else None,
            "mse_highest_bin_bias": ends(full_mse)[-1]["bias"] if ends(full_mse) else None,
            "uncorrected_mean_lowest_bin_bias": ends(full_unc)[0]["bias"] if ends(full_unc) else None,
            "uncorrected_mean_highest_bin_bias": ends(full_unc)[-1]["bias"] if ends(full_unc) else None,
        },
    }


def validate(
    test: pd.DataFrame,
    models: dict[str, TrainedModel],
    msigma: MSigmaFit,
    *,
    prior: str = "flat",
    main: str | None = None,
    snapshot: Snapshot | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    n_examples: int = 4,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics (and plots in ``out_dir``) for held-out observations ``test`` (a feature table with the truth).

    Returns (metrics, posterior) where posterior holds the main model's grid, pdf and summaries for the catalog.
    """
    density = [k for k, m in models.items() if m.spec.is_density]
    if not density:
        raise ValueError("validate: expected at least one density model (mdn or flow)")
    main_kind = main if main is not None else ("flow" if "flow" in density else density[0])
    if main_kind not in density:
        raise ValueError(f"validate: main model '{main_kind}' is not among the density models {density}")
    main_model = models[main_kind]
    true = test[TARGET].to_numpy(np.float64)
    full_edges = np.round(np.arange(np.floor(true.min() * 10) / 10, true.max() + 0.1, BIN_WIDTH), 6)

    methods: dict[str, dict[str, Any]] = {}
    ms_est = msigma.predict(test["sigma_v_std"].to_numpy())
    methods["msigma"] = accuracy(ms_est, true)
    estimates = {"M-sigma": ms_est}
    if "mse" in models:
        mse_est = predict_point(models["mse"], test[list(models["mse"].feature_names)].to_numpy())
        methods["mse_regression"] = accuracy(mse_est, true) | {
            "full_range_by_bin": calibration.binned(mse_est, true, full_edges)}
        estimates["MSE regression"] = mse_est

    results = {}
    for kind, model in models.items():
        if not model.spec.is_density:
            continue
        x = test[list(model.feature_names)].to_numpy()
        g = default_grid(model)
        t = resolve(prior, g, p_train=p_train_on(model, g), snapshot=snapshot)
        pdf, values = posteriors(model, x, g, t)
        raw_pdf, _ = posteriors(model, x, g, resolve("training", g, p_train=p_train_on(model, g), snapshot=None))
        results[kind] = (g, t, pdf, values, raw_pdf)
    for kind, (_, _, _, vals, _) in results.items():
        label = "MDN" if kind == "mdn" else "flow"
        methods[f"{kind}_uncorrected_mean"] = accuracy(vals["uncorrected_mean"], true) | {
            "full_range_by_bin": calibration.binned(vals["uncorrected_mean"], true, full_edges)}
        methods[f"{kind}_corrected_mode"] = accuracy(vals["mode"], true)
        methods[f"{kind}_corrected_median"] = accuracy(vals["median"], true)
        if kind == "mdn":
            estimates["MDN uncorrected mean"] = vals["uncorrected_mean"]
        estimates[f"{label} corrected mode"] = vals["mode"]
    g, t, pdf, values, raw_pdf = results[main_kind]
    if "mse_regression" not in methods:  # keep the schema stable when no MSE model was trained
        methods["mse_regression"] = {"by_bin": [], "full_range_by_bin": [], "scatter": float("nan")}

    # calibration
    pit_corr = np.asarray(pit(jnp.asarray(g), jnp.asarray(pdf), jnp.asarray(true)))
    pit_raw = np.asarray(pit(jnp.asarray(g), jnp.asarray(raw_pdf), jnp.asarray(true)))
    weights = calibration.importance_weights(true, g, t.log_density, p_train_on(main_model, g))
    levels = np.asarray(calibration.LEVELS)
    cov_corr = calibration.coverage(pit_corr, levels, weights)
    cov_raw = calibration.coverage(pit_raw, levels)
    c68, c95 = calibration.coverage(pit_corr, (0.68, 0.95), weights)
    u68, u95 = calibration.coverage(pit_raw, (0.68, 0.95))
    hist_corr = calibration.pit_histogram(pit_corr, weights=weights)
    hist_raw = calibration.pit_histogram(pit_raw)

    main_row = methods[f"{main_kind}_corrected_mode"]
    metrics: dict[str, Any] = {
        "n_test": len(test),
        "n_test_hosts": int(test["cluster_id"].nunique()),
        "n_test_1e14_1e15": main_row["n"],
        "target_prior": t.name,
        "estimator": f"{main_kind} corrected posterior mode",
        "scatter_dex": main_row["scatter"],
        "bias_dex": main_row["bias"],
        "bias_by_bin": main_row["by_bin"],
        "coverage_68": float(c68),
        "coverage_95": float(c95),
        "coverage_effective_sample_size": calibration.effective_sample_size(weights),
        "uncorrected_coverage_68": float(u68),
        "uncorrected_coverage_95": float(u95),
        "coverage_curve": {"levels": levels.tolist(), "corrected": cov_corr.tolist(), "uncorrected": cov_raw.tolist()},
        "pit_histogram": {"edges": hist_corr[1].tolist(), "corrected": hist_corr[0].tolist(),
                          "uncorrected": hist_raw[0].tolist()},
        "msigma_scatter_dex": methods["msigma"]["scatter"],
        "msigma_bias_dex": methods["msigma"]["bias"],
        "msigma_fit": msigma.to_dict(),
        "mse_regression_bias_by_bin": methods["mse_regression"]["by_bin"],
        "methods": methods,
    }
    metrics["main_model"] = main_kind
    metrics["acceptance"] = acceptance(metrics, main_kind)
    metrics = _clean(metrics)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plots.predicted_vs_true(true, estimates, out / "predicted_vs_true.png")
        plots.bias_scatter_by_bin({k: v["by_bin"] for k, v in methods.items() if v.get("by_bin")},
                                  out / "bias_scatter_by_bin.png")
        plots.coverage_curve(levels, {"corrected (weighted to target prior)": cov_corr, "uncorrected": cov_raw},
                             out / "coverage.png")
        plots.pit_histograms({"corrected (weighted)": hist_corr, "uncorrected": hist_raw}, out / "pit.png")
        pick = np.argsort(true)[np.linspace(0, len(true) - 1, n_examples).astype(int)]
        plots.example_posteriors(g, pdf[pick], raw_pdf[pick], true[pick], out / "example_posteriors.png")
        write_json(out / "metrics.json", metrics)
    return metrics, {"grid": g, "pdf": pdf, "values": values, "target": t}


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def load_prior_for(model: TrainedModel, name: str, snapshot: Snapshot | None) -> TargetPrior:
    grid = default_grid(model)
    return resolve(name, grid, p_train=p_train_on(model, grid), snapshot=snapshot)

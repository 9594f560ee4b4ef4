"""Validation metrics on held-out observations, as pure functions: arrays in, numbers out.

Methods compared (log10 M200c estimates, dex of Msun/h): the M-sigma power law, the MSE regression, the uncorrected
posterior mean (what NLL training alone gives) and the corrected mode and median of every density model (MDN,
flow, set model). The main model (default: the flow when trained) provides the headline numbers and the calibration.
Accuracy is bias and scatter of log10(M_est / M_true) over ``MASS_RANGE`` (1e14-1e15 h^-1 Msun) and in
``BIN_WIDTH`` bins of true mass. Calibration: coverage of central credible intervals and the PIT histogram — for
the corrected posterior on the held-out set importance-weighted to the target prior, for the uncorrected one on the
held-out set as drawn (:mod:`inference.calibration`) — over ``MASS_RANGE`` (the headline, as bias and scatter: the
reference study's range), over every row, and in the true-mass ranges ``COVERAGE_MASS_RANGES``
(:func:`coverage_by_mass_range`, with each range's effective sample size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from inference import calibration
from inference.summaries import pit

#: log10 M200c [Msun/h] range of the headline bias and scatter
MASS_RANGE = (14.0, 15.0)
#: width of the true-mass bins, dex
BIN_WIDTH = 0.1
#: true-mass ranges [lo, hi) of log10 M200c [Msun/h] in which the coverage is reported (issue 20): the low-mass
#: groups real lists contain, then the reference study's range in halves, then the massive end (no upper edge)
COVERAGE_MASS_RANGES: tuple[tuple[float, float], ...] = ((13.0, 13.5), (13.5, 14.0), (14.0, 14.5), (14.5, 15.0),
                                                          (15.0, math.inf))


def bin_edges(lo: float = MASS_RANGE[0], hi: float = MASS_RANGE[1], width: float = BIN_WIDTH) -> np.ndarray:
    """Edges of ``width``-dex bins from ``lo`` to ``hi`` (log10 Msun/h)."""
    return np.round(np.arange(lo, hi + width / 2, width), 6)


def full_range_edges(true: np.ndarray) -> np.ndarray:
    """``BIN_WIDTH`` bins over the whole range of ``true`` (for the biases of the baselines at the ends)."""
    return np.round(np.arange(np.floor(true.min() * 10) / 10, true.max() + 0.1, BIN_WIDTH), 6)


def accuracy(est: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Bias/scatter of ``est - true`` [dex] over MASS_RANGE and per bin (:func:`bin_edges`)."""
    sel = (true >= MASS_RANGE[0]) & (true < MASS_RANGE[1])
    return {"range": list(MASS_RANGE), **calibration.bias_scatter(est[sel], true[sel]),
            "by_bin": calibration.binned(est, true, bin_edges())}


@dataclass(frozen=True)
class DensityPosteriors:
    """One density model's posteriors of the held-out set.

    grid : (G,) log10 M200c [Msun/h]; pdf : (N, G) corrected to the target prior; values : its summaries (N,)
    (:data:`inference.posterior.SUMMARY_COLUMNS` names without the prefix); raw_pdf : (N, G) uncorrected;
    log_target : (G,) natural log of the target prior; p_train : (G,) the interim prior, per dex; target_name :
    the target prior's name.
    """

    grid: np.ndarray
    pdf: np.ndarray
    values: dict[str, np.ndarray]
    raw_pdf: np.ndarray
    log_target: np.ndarray
    p_train: np.ndarray
    target_name: str


@dataclass(frozen=True)
class Calibration:
    """Coverage and PIT of the main model: corrected (importance-weighted) and uncorrected.

    The headline numbers, curves and histograms are over the held-out rows of true mass in ``MASS_RANGE``
    (10^14-10^15, as the bias and scatter; ``weights`` are theirs); ``all_masses`` gives the corrected 68% and 95%
    coverage over every held-out row (importance weights over the whole grid, dominated by the few rows at its top:
    ``all_masses_ess``), and ``by_mass_range`` the ranges of :data:`COVERAGE_MASS_RANGES`.
    """

    levels: np.ndarray
    corrected: np.ndarray
    uncorrected: np.ndarray
    pit_corrected: tuple[np.ndarray, np.ndarray]
    pit_uncorrected: tuple[np.ndarray, np.ndarray]
    weights: np.ndarray
    headline_corrected: tuple[float, float]  # 68% and 95% coverage
    headline_uncorrected: tuple[float, float]
    by_mass_range: list[dict[str, Any]]  # :func:`coverage_by_mass_range`
    all_masses: tuple[float, float] = (float("nan"), float("nan"))
    all_masses_ess: float = float("nan")


def methods_accuracy(true: np.ndarray, *, msigma: np.ndarray, mse: np.ndarray | None,
                     density: dict[str, DensityPosteriors], msigma_pure: np.ndarray | None = None
                     ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Accuracy of every method, and the estimates by display name (for the plots).

    ``msigma``: the contaminated M-sigma baseline (all cylinder members); ``msigma_pure``: the same law on the true
    members' dispersion (mocks only), the best a dispersion alone can do.
    """
    edges = full_range_edges(true)
    methods: dict[str, dict[str, Any]] = {"msigma": accuracy(msigma, true)}
    estimates = {"M-sigma": msigma}
    if msigma_pure is not None:
        methods["msigma_pure"] = accuracy(msigma_pure, true)
        estimates["M-sigma, true members"] = msigma_pure
    if mse is not None:
        methods["mse_regression"] = accuracy(mse, true) | {"full_range_by_bin": calibration.binned(mse, true, edges)}
        estimates["MSE regression"] = mse
    for kind, post in density.items():
        vals = post.values
        label = {"mdn": "MDN", "set": "set model"}.get(kind, "flow")
        methods[f"{kind}_uncorrected_mean"] = accuracy(vals["uncorrected_mean"], true) | {
            "full_range_by_bin": calibration.binned(vals["uncorrected_mean"], true, edges)}
        methods[f"{kind}_corrected_mode"] = accuracy(vals["mode"], true)
        methods[f"{kind}_corrected_median"] = accuracy(vals["median"], true)
        if kind == "mdn":
            estimates["MDN uncorrected mean"] = vals["uncorrected_mean"]
        estimates[f"{label} corrected mode"] = vals["mode"]
    if "mse_regression" not in methods:  # keep the schema stable when no MSE model was trained
        methods["mse_regression"] = {"by_bin": [], "full_range_by_bin": [], "scatter": float("nan")}
    return methods, estimates


def coverage_by_mass_range(true: np.ndarray, pit_corrected: np.ndarray, weights: np.ndarray,
                           pit_uncorrected: np.ndarray,
                           ranges: Sequence[tuple[float, float]] = COVERAGE_MASS_RANGES) -> list[dict[str, Any]]:
    """68% and 95% coverage in each true-mass range ``[lo, hi)`` of ``ranges`` (log10 M200c [Msun/h]; ``hi`` inf:
    no upper edge, written ``None``).

    ``pit_corrected``: PIT of the truth under the corrected posterior, weighted by the importance ``weights``
    (p_target / p_train at the truth); ``pit_uncorrected``: under the uncorrected one, unweighted. Each range gives
    ``{lo, hi, n, ess, coverage_68, coverage_95, se_68, se_95, uncorrected_68, uncorrected_95}``: ``n`` rows,
    ``ess`` their Kish effective sample size (:func:`calibration.effective_sample_size` of their weights), the
    corrected coverage and its binomial standard error sqrt(c (1 - c) / ess), the uncorrected coverage. A range
    holding no row has ``n`` 0 and every other number None.
    """
    true = np.asarray(true, np.float64)
    weights = np.asarray(weights, np.float64)
    if not (len(pit_corrected) == len(weights) == len(pit_uncorrected) == len(true)):
        raise ValueError(f"expected true, PITs and weights of one length, got {len(true)}, {len(pit_corrected)}, "
                         f"{len(weights)} and {len(pit_uncorrected)}")
    rows = []
    for lo, hi in ranges:
        sel = (true >= lo) & (true < hi)
        row: dict[str, Any] = {"lo": float(lo), "hi": float(hi) if np.isfinite(hi) else None, "n": int(sel.sum())}
        if not sel.any():
            rows.append(row | dict.fromkeys(("ess", "coverage_68", "coverage_95", "se_68", "se_95",
                                             "uncorrected_68", "uncorrected_95")))
            continue
        ess = calibration.effective_sample_size(weights[sel])
        c68, c95 = (float(c) for c in calibration.coverage(np.asarray(pit_corrected)[sel], (0.68, 0.95),
                                                            weights[sel]))
        u68, u95 = (float(c) for c in calibration.coverage(np.asarray(pit_uncorrected)[sel], (0.68, 0.95)))
        rows.append(row | {"ess": ess, "coverage_68": c68, "coverage_95": c95,
                           "se_68": _binomial_se(c68, ess), "se_95": _binomial_se(c95, ess),
                           "uncorrected_68": u68, "uncorrected_95": u95})
    return rows


def _binomial_se(fraction: float, n_eff: float) -> float:
    """sqrt(c (1 - c) / n_eff); a weighted fraction rounded a hair past 0 or 1 counts as 0 or 1."""
    return math.sqrt(max(fraction * (1 - fraction), 0.0) / n_eff)


def calibrate(true: np.ndarray, post: DensityPosteriors,
              ranges: Sequence[tuple[float, float]] = COVERAGE_MASS_RANGES) -> Calibration:
    """Coverage curves and PIT histograms of ``post`` over the rows of true mass in ``MASS_RANGE``: corrected weighted
    by p_target / p_train, uncorrected as is; the corrected 68/95% coverage over every row; and the coverage in the
    true-mass ``ranges`` (:func:`coverage_by_mass_range`). Without a row in ``MASS_RANGE`` (a box of small hosts
    only) the headline is over every row."""
    g = jnp.asarray(post.grid)
    true = np.asarray(true, np.float64)
    pit_corr = np.asarray(pit(g, jnp.asarray(post.pdf), jnp.asarray(true)))
    pit_raw = np.asarray(pit(g, jnp.asarray(post.raw_pdf), jnp.asarray(true)))
    weights = calibration.importance_weights(true, post.grid, post.log_target, post.p_train)
    levels = np.asarray(calibration.LEVELS)
    a68, a95 = calibration.coverage(pit_corr, (0.68, 0.95), weights)
    head = (true >= MASS_RANGE[0]) & (true < MASS_RANGE[1])
    if not head.any():
        head = np.ones(len(true), bool)
    pc, pr, w = pit_corr[head], pit_raw[head], weights[head]
    c68, c95 = calibration.coverage(pc, (0.68, 0.95), w)
    u68, u95 = calibration.coverage(pr, (0.68, 0.95))
    return Calibration(levels, calibration.coverage(pc, levels, w), calibration.coverage(pr, levels),
                       calibration.pit_histogram(pc, weights=w), calibration.pit_histogram(pr),
                       w, (float(c68), float(c95)), (float(u68), float(u95)),
                       coverage_by_mass_range(true, pit_corr, weights, pit_raw, ranges), (float(a68), float(a95)),
                       calibration.effective_sample_size(weights))


def validation_metrics(true: np.ndarray, n_hosts: int, *, methods: dict[str, dict[str, Any]], cal: Calibration,
                       main_kind: str, target_name: str, msigma_fit: dict[str, Any], n_invalid: int
                       ) -> dict[str, Any]:
    """The metrics.json document (without the acceptance verdicts): headline numbers of the main model, coverage,
    PIT, the baselines and every method's accuracy. NaN becomes None (JSON).

    ``n_invalid``: how many held-out rows the main model gave no posterior for (network output NaN or +inf, flag
    ``INVALID_OUTPUT``): such rows are skipped by the scatter and counted as misses by the coverage, so they are
    reported, and judged, on their own (``n_invalid_posteriors``)."""
    main_row = methods[f"{main_kind}_corrected_mode"]
    c68, c95 = cal.headline_corrected
    u68, u95 = cal.headline_uncorrected
    metrics: dict[str, Any] = {
        "n_test": len(true),
        "n_test_hosts": n_hosts,
        "n_invalid_posteriors": int(n_invalid),
        "n_test_1e14_1e15": main_row["n"],
        "target_prior": target_name,
        "estimator": f"{main_kind} corrected posterior mode",
        "scatter_dex": main_row["scatter"],
        "bias_dex": main_row["bias"],
        "bias_by_bin": main_row["by_bin"],
        "coverage_68": c68,
        "coverage_95": c95,
        "coverage_effective_sample_size": calibration.effective_sample_size(cal.weights),
        "coverage_range": list(MASS_RANGE),
        "coverage_all_masses_68": cal.all_masses[0],
        "coverage_all_masses_95": cal.all_masses[1],
        "coverage_all_masses_effective_sample_size": cal.all_masses_ess,
        "uncorrected_coverage_68": u68,
        "uncorrected_coverage_95": u95,
        "coverage_by_mass_range": cal.by_mass_range,
        "coverage_curve": {"levels": cal.levels.tolist(), "corrected": cal.corrected.tolist(),
                           "uncorrected": cal.uncorrected.tolist()},
        "pit_histogram": {"edges": cal.pit_corrected[1].tolist(), "corrected": cal.pit_corrected[0].tolist(),
                          "uncorrected": cal.pit_uncorrected[0].tolist()},
        "msigma_scatter_dex": methods["msigma"]["scatter"],
        "msigma_bias_dex": methods["msigma"]["bias"],
        "msigma_pure_scatter_dex": methods.get("msigma_pure", {}).get("scatter"),
        "msigma_fit": msigma_fit,
        "mse_regression_bias_by_bin": methods["mse_regression"]["by_bin"],
        "methods": methods,
        "main_model": main_kind,
    }
    return json_safe(metrics)


def json_safe(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj

"""Accuracy and calibration, as pure functions on arrays (log10 masses in dex of Msun/h).

Coverage is only defined when the test set follows the posterior's prior: a posterior corrected to a target prior
is checked on the held-out set importance-weighted by p_target / p_train (the test masses follow the training
distribution); the uncorrected posterior is checked on the held-out set as drawn. Weighted fractions are used
instead of resampling (same expectation, no resampling noise); the effective sample size is reported.
"""

from __future__ import annotations

import itertools

import numpy as np

LEVELS = (*tuple(np.round(np.linspace(0.05, 0.95, 19), 2)), 0.99)


def _weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"expected weights of shape ({n},), got {w.shape}")
    return w


def bias_scatter(est: np.ndarray, true: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Mean (bias) and standard deviation (scatter) of est - true, with the standard error of the bias."""
    est, true = np.asarray(est, np.float64), np.asarray(true, np.float64)
    if est.shape != true.shape:
        raise ValueError(f"expected est and true of equal shape, got {est.shape} and {true.shape}")
    ok = np.isfinite(est) & np.isfinite(true)
    w = _weights(len(est), weights)[ok]
    r = est[ok] - true[ok]
    n = int(ok.sum())
    if n == 0 or w.sum() <= 0:
        return {"n": n, "bias": float("nan"), "scatter": float("nan"), "bias_se": float("nan")}
    bias = float(np.average(r, weights=w))
    scatter = float(np.sqrt(np.average((r - bias) ** 2, weights=w)))
    n_eff = w.sum() ** 2 / np.sum(w**2)
    return {"n": n, "bias": bias, "scatter": scatter, "bias_se": scatter / np.sqrt(max(n_eff, 1.0))}


def binned(est: np.ndarray, true: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None) -> list[dict]:
    """:func:`bias_scatter` in bins of the true value: [{lo, hi, n, bias, scatter, bias_se}, ...]."""
    true = np.asarray(true, np.float64)
    w = _weights(len(true), weights)
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (true >= lo) & (true < hi)
        row = bias_scatter(np.asarray(est)[sel], true[sel], w[sel])
        out.append({"lo": round(float(lo), 6), "hi": round(float(hi), 6), **row})
    return out


def coverage(pit: np.ndarray, levels=LEVELS, weights: np.ndarray | None = None) -> np.ndarray:
    """Fraction of central credible intervals of each level that hold the truth: |PIT - 1/2| <= level / 2."""
    pit = np.asarray(pit, np.float64)
    w = _weights(len(pit), weights)
    inside = np.abs(pit[:, None] - 0.5) <= np.asarray(levels)[None, :] / 2
    return (w[:, None] * inside).sum(axis=0) / w.sum()


def pit_histogram(pit: np.ndarray, bins: int = 20, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Density histogram of the PIT on [0, 1] (flat at 1 for a calibrated posterior): (counts, edges)."""
    w = _weights(len(pit), weights)
    counts, edges = np.histogram(np.clip(pit, 0, 1), bins=bins, range=(0, 1), weights=w, density=True)
    return counts, edges


def importance_weights(true: np.ndarray, grid: np.ndarray, log_target: np.ndarray,
                       p_train: np.ndarray) -> np.ndarray:
    """p_target(true) / p_train(true), normalised to mean 1 (p_train floored as in the correction)."""
    from inference.posterior import P_TRAIN_FLOOR

    pt = np.maximum(np.asarray(p_train, np.float64), P_TRAIN_FLOOR * np.max(p_train))
    log_w = np.interp(true, grid, np.asarray(log_target, np.float64) - np.log(pt))
    w = np.exp(log_w - np.max(log_w))
    return w / w.mean()


def effective_sample_size(weights: np.ndarray) -> float:
    w = np.asarray(weights, np.float64)
    return float(w.sum() ** 2 / np.sum(w**2))

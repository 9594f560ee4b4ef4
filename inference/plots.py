"""Validation plots (PNG). matplotlib with the Agg backend; nothing here computes a metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pipeline.files import atomic_output


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG) whole or not at all (:func:`pipeline.files.atomic_output`: a failure such as
    a full disk removes the temporary and is one line naming ``path``); the figure is closed either way."""
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def predicted_vs_true(true: np.ndarray, estimates: dict[str, np.ndarray], path: Path) -> Path:
    """The seed lecture's plot: estimate vs truth with the 1:1 line, one panel per method."""
    n = len(estimates)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), sharex=True, sharey=True, squeeze=False)
    lo, hi = float(np.nanmin(true)) - 0.1, float(np.nanmax(true)) + 0.1
    for ax, (name, est) in zip(axes[0], estimates.items(), strict=True):
        ax.hexbin(true, est, gridsize=45, extent=(lo, hi, lo, hi), bins="log", cmap="viridis", mincnt=1)
        ax.plot([lo, hi], [lo, hi], "w--", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(r"true $\log_{10} M_{200c}$ [$h^{-1} M_\odot$]")
    axes[0][0].set_ylabel(r"estimated $\log_{10} M_{200c}$")
    return save_figure(fig, path)


def bias_scatter_by_bin(by_method: dict[str, list[dict]], path: Path) -> Path:
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6.5, 6), sharex=True)
    for name, rows in by_method.items():
        mid = np.array([0.5 * (r["lo"] + r["hi"]) for r in rows])
        bias = np.array([r["bias"] for r in rows])
        se = np.array([r["bias_se"] for r in rows])
        scatter = np.array([r["scatter"] for r in rows])
        a1.errorbar(mid, bias, yerr=se, marker="o", ms=3, capsize=2, label=name)
        a2.plot(mid, scatter, marker="o", ms=3, label=name)
    a1.axhline(0, color="k", lw=0.8)
    a1.axhspan(-0.02, 0.02, color="0.85", zorder=0)
    a1.set_ylim(-0.3, 0.3)  # baselines far off scale are clipped; metrics.json has every value
    a2.set_ylim(0.0, 0.5)
    a1.set_ylabel("bias [dex]")
    a2.set_ylabel("scatter [dex]")
    a2.set_xlabel(r"true $\log_{10} M_{200c}$ [$h^{-1} M_\odot$]")
    a1.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def coverage_curve(levels: np.ndarray, curves: dict[str, np.ndarray], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for name, cov in curves.items():
        ax.plot(levels, cov, marker="o", ms=3, label=name)
    ax.set_xlabel("credible level")
    ax.set_ylabel("coverage")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def pit_histograms(hists: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (counts, edges) in hists.items():
        ax.stairs(counts, edges, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("PIT")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def example_posteriors(grid: np.ndarray, pdfs: np.ndarray, raw: np.ndarray, true: np.ndarray, path: Path) -> Path:
    n = len(true)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 2.8), squeeze=False)
    for ax, p, q, t in zip(axes[0], pdfs, raw, true, strict=True):
        ax.plot(grid, p, label="corrected")
        ax.plot(grid, q, ls=":", label="uncorrected")
        ax.axvline(t, color="k", lw=0.8)
        ax.set_xlabel(r"$\log_{10} M_{200c}$")
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)


def query_posterior(grid: np.ndarray, pdf: np.ndarray, summary: dict[str, Any], path: Path) -> Path:
    """One cluster's posterior density on ``grid`` [log10 Msun/h], its 68% interval and mode (``clustermass query``).

    ``summary``: the query's summary (:data:`inference.posterior.SUMMARY_COLUMNS` keys, ``n_members``, ``prior``;
    the title names the model's inputs and, for a set model, says so).
    """
    s = summary
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(grid, pdf, color="C0")
    ax.axvspan(s["log10_m200c_p16"], s["log10_m200c_p84"], color="C0", alpha=0.2, label="68% interval")
    ax.axvline(s["log10_m200c_mode"], color="C1", label=f"mode {s['log10_m200c_mode']:.3f}")
    ax.set_xlabel(r"$\log_{10} M_{200c}$ [$h^{-1} M_\odot$]")
    ax.set_ylabel("posterior density [1/dex]")
    flags = ", ".join(s.get("flag_names") or []) or "no flags"
    inputs = s.get("model_inputs", "") + (" set" if s.get("model_kind") == "set" else "")  # the family, if set
    ax.set_title(f"{s['n_members']} members, {inputs} model, prior {s['prior']}; {flags}", fontsize=8)
    ax.legend(fontsize=8)
    return save_figure(fig, Path(path))

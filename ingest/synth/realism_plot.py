"""The realism report of a synthetic box as one PNG page (matplotlib, Agg): each statistic beside its published
value. Nothing here computes a statistic (:mod:`ingest.synth.realism` does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.files import atomic_output


def plot_realism(report: dict[str, Any], path: str | Path) -> Path:
    """Three panels: SMF ratio to Li & White (2009), satellites per host vs UniverseMachine, a table of scalars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    smf = report["smf"]
    ax = axes[0]
    ax.plot(smf["log10_mstar"], smf["ratio"], "o-")
    ax.axhspan(*smf["accept"], color="C2", alpha=0.15, label="accepted")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel(r"$\log_{10} M_*$ [$M_\odot$]")
    ax.set_ylabel("SMF / Li & White 2009")
    ax.legend(fontsize=8)
    rich = report["satellites_per_host"]
    ax = axes[1]
    mids = [0.5 * (b["lo"] + min(b["hi"], 15.5)) for b in rich["bins"]]
    ax.semilogy(mids, [b["median_r200c"] or float("nan") for b in rich["bins"]], "o-", label="box, < R200c")
    ax.semilogy(mids, [b["median_rvir"] or float("nan") for b in rich["bins"]], "s--", label="box, < Rvir")
    ax.semilogy(mids, rich["value"], "k*", ms=10, label="UniverseMachine (Ho+19), < Rvir")
    ax.set_xlabel(r"$\log_{10} M_{200c}$ [$h^{-1} M_\odot$]")
    ax.set_ylabel(r"median satellites, $M_* \geq 10^{9.5} M_\odot$")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.axis("off")
    rows = []
    for key in ("satellite_fraction", "sigma_15", "msigma_pure"):
        r = report[key]
        value = r["measured"]
        rows.append([key, "-" if value is None else f"{value:.3g}", f"{r['value']:.4g}", f"{r['accept']}"])
    table = ax.table(cellText=rows, colLabels=["statistic", "box", "published", "accepted"], loc="center")
    table.scale(1.0, 1.6)
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    fig.tight_layout()
    out = Path(path)
    try:
        with atomic_output(out) as tmp:  # a failure (a full disk) leaves no temporary behind
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out

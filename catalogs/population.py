"""The mass function of a catalog's clusters (issue 20.3): ``clustermass population CATALOG --out DIR``.

The file edge of :mod:`inference.population`: read a catalog (HDF5 or FITS) with
:func:`~catalogs.io.read_posteriors` (which refuses, in one line naming the file, a catalog without its PDF column,
PDFs that do not integrate to 1, a grid that does not match them, or no priors), keep one line of sight per host,
run the population maths, and write ``DIR/population.json`` (:func:`pipeline.files.write_json`) and
``DIR/population.png`` (matplotlib, Agg, written atomically).

Masses are log10 M200c in Msun/h; a volume is comoving (Mpc/h)^3; counts are numbers of clusters.

What the catalog may carry in its provenance (and what happens without it):

* ``snapshot`` (JSON, as every run's catalog has): the redshift and cosmology of the Tinker et al. (2008)
  dn/dlog10 M (:func:`inference.priors.tinker08`, the target prior's code path); without it the amplitude is
  skipped and the within-bin shape is flat;
* ``volume`` (float, (Mpc/h)^3): the box volume times the fraction of its hosts the catalog holds; ``--volume``
  gives or overrides it; without either, the binned counts are reported and the amplitude skipped, with a note;
* ``selection`` (JSON ``{"edges": [log10 M200c bin edges], "fraction": [kept fraction of hosts per bin]}``): the
  probability S(M) that a host of true mass M is in the catalog, 0 below the first edge and 1 above the last
  (:func:`inference.population.step_selection`); without it S = 1.

True counts, the amplitude fitted to the true masses and the acceptance checks of issue 20 need
``log10_m200c_true`` (mocks).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catalogs.io import read_posteriors
from catalogs.schema import CatalogError
from inference import population as pop
from inference.diagnostics import FLAGS
from inference.priors import tinker08
from pipeline.errors import ConfigError
from pipeline.files import write_json
from pipeline.snapshot import Snapshot

SUMMARY_FILE = "population.json"
PLOT_FILE = "population.png"
#: rows whose PDF cannot be used as a likelihood (NaN, or flat for want of support on the grid)
UNUSABLE_FLAGS = FLAGS["INVALID_OUTPUT"] | FLAGS["NO_SUPPORT"]
DEFAULT_BOOTSTRAP = pop.BOOTSTRAP_REPLICATES
DEFAULT_SEED = pop.BOOTSTRAP_SEED
WITHIN_BIN = pop.WITHIN_BIN_SHAPES


def _provenance_json(path: Path, provenance: Mapping[str, Any], key: str) -> Any:
    """Provenance key ``key`` parsed as JSON (None where absent); a value that is not JSON is refused in one line."""
    if key not in provenance:
        return None
    try:
        return json.loads(provenance[key])
    except (TypeError, ValueError) as exc:
        raise CatalogError(path, f"provenance key '{key}' is not valid JSON ({exc})") from None


def catalog_snapshot(path: Path, provenance: Mapping[str, Any]) -> Snapshot | None:
    """The snapshot (redshift, cosmology, box) the catalog's provenance names, or None."""
    data = _provenance_json(path, provenance, "snapshot")
    if data is None:
        return None
    try:
        return Snapshot.from_dict(data, where="provenance key 'snapshot'")
    except ConfigError as exc:
        raise CatalogError(path, str(exc)) from None


def catalog_selection(path: Path, provenance: Mapping[str, Any]) -> tuple[pop.Shape | None, dict[str, Any] | None]:
    """The selection S(M) of the provenance key ``selection`` and the table itself, or (None, None)."""
    data = _provenance_json(path, provenance, "selection")
    if data is None:
        return None, None
    try:
        edges, fraction = data["edges"], data["fraction"]
        return pop.step_selection(edges, fraction), {"edges": list(edges), "fraction": list(fraction)}
    except (KeyError, TypeError, ValueError) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CatalogError(path, f"provenance key 'selection': expected {{\"edges\": [log10 M200c], \"fraction\": "
                                 f"[one per bin, 0-1]}}: {what}") from None


def catalog_volume(path: Path, provenance: Mapping[str, Any], volume: float | None) -> tuple[float | None, str]:
    """The volume [(Mpc/h)^3] and where it came from: ``volume`` (the option) if given, else provenance
    ``volume``, else (None, why not)."""
    if volume is not None:
        return float(volume), "--volume"
    if "volume" not in provenance:
        return None, "no volume: give --volume (Mpc/h)^3 or a catalog whose provenance has 'volume'"
    value = provenance["volume"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise CatalogError(path, f"provenance key 'volume': expected a positive volume in (Mpc/h)^3, got {value!r}")
    return float(value), "provenance"


def check_options(*, volume: float | None = None, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED,
                  fit_range: Sequence[float] = pop.FIT_RANGE, within_bin: str = WITHIN_BIN[0]) -> None:
    """The command's options checked before the catalog is read (one-line :class:`ConfigError` naming the option)."""
    if seed < 0:
        raise ConfigError(f"expected a non-negative seed, got {seed}", where="population --seed")
    if volume is not None and not (math.isfinite(volume) and volume > 0):
        raise ConfigError(f"expected a positive volume in (Mpc/h)^3, got {volume!r}", where="population --volume")
    if bootstrap < 2:
        raise ConfigError(f"expected at least 2 bootstrap replicates, got {bootstrap}", where="population --bootstrap")
    lo, hi = fit_range
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"expected LO < HI in log10 M200c [Msun/h], got {lo:g} {hi:g}",
                          where="population --fit-range")
    if within_bin not in WITHIN_BIN:
        raise ConfigError(f"expected one of {list(WITHIN_BIN)}, got {within_bin!r}", where="population --within-bin")


def _column(table: Any, name: str) -> np.ndarray | None:
    return np.asarray(table[name]) if name in table.colnames else None


def _floats(values: Any) -> list[float | None]:
    return [None if not math.isfinite(float(v)) else float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def _counts(block: pop.BinnedCounts) -> dict[str, Any]:
    return {"counts": _floats(block.counts), "sd": _floats(block.sd)}


def population_summary(path: str | os.PathLike[str], *, volume: float | None = None,
                       bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED,
                       fit_range: Sequence[float] = pop.FIT_RANGE, within_bin: str = WITHIN_BIN[0]) -> dict[str, Any]:
    """The population inference of the catalog at ``path`` as a JSON-ready dict (see README, "Using the catalog in
    a cosmology analysis"): binned counts by EM deconvolution with bootstrap errors, the naive histogram of the
    posterior modes, and (given a volume and the snapshot) the Tinker08 amplitude; against the truth for mocks.

    ``volume`` [(Mpc/h)^3] overrides the provenance's; ``bootstrap`` replicates resampling clusters, seeded by
    ``seed``; ``fit_range`` (lo, hi) log10 M200c [Msun/h] of the amplitude and of the acceptance checks (bin
    edges); ``within_bin``: ``"tinker08"`` (Tinker08 times the selection, where the snapshot is known) or
    ``"flat"``. Raises :class:`CatalogError` (one line naming the file) for a catalog that cannot be used and
    :class:`ConfigError` for options that do not fit it.
    """
    started = time.perf_counter()
    check_options(volume=volume, bootstrap=bootstrap, seed=seed, fit_range=fit_range, within_bin=within_bin)
    path = Path(path)
    post = read_posteriors(path)
    table, provenance = post.table, post.provenance
    n_rows = len(table)
    flags = _column(table, "flags")
    usable = np.all(np.isfinite(post.pdf), axis=1)
    if flags is not None:
        usable &= (flags.astype(np.int64) & UNUSABLE_FLAGS) == 0
    rows = np.flatnonzero(usable)
    ids, los = _column(table, "cluster_id"), _column(table, "los")
    try:
        rows = rows[pop.one_per_host(ids[rows], los[rows])]
    except ValueError as exc:
        raise CatalogError(path, f"one line of sight per host: {exc}", column="los") from None
    if rows.size == 0:
        raise CatalogError(path, f"no usable rows: every one of the {n_rows} rows is flagged INVALID_OUTPUT or "
                                 "NO_SUPPORT, or the catalog is empty")
    grid = post.grid
    edges = pop.bin_edges(grid)
    try:
        in_range = pop.range_mask(edges, fit_range)
    except ValueError as exc:
        raise ConfigError(f"{exc}; the catalog's grid spans [{grid[0]:.4f}, {grid[-1]:.4f}]",
                          where="population --fit-range") from None
    like = pop.likelihoods(post.pdf[rows], post.target_prior, grid)

    snapshot = catalog_snapshot(path, provenance)
    selection, selection_table = catalog_selection(path, provenance)
    vol, vol_source = catalog_volume(path, provenance, volume)
    notes: list[str] = []

    def mass_function(x: np.ndarray) -> np.ndarray:  # dn/dlog10 M [(Mpc/h)^-3 per dex] times the selection
        n = np.exp(tinker08(np.asarray(x, dtype=np.float64), snapshot).log_density)
        return n * (selection(x) if selection is not None else 1.0)

    if within_bin == "tinker08" and snapshot is None:
        notes.append("the catalog's provenance has no snapshot: the within-bin shape is flat, the amplitude skipped")
    shape = mass_function if within_bin == "tinker08" and snapshot is not None else selection
    weights = pop.bootstrap_weights(len(rows), bootstrap, seed)
    bin_like = pop.bin_likelihoods(like, grid, edges, shape)
    # smoothed toward the within-bin shape's own mass function (Tinker08 times the selection), so the selection's
    # steps (the balanced bins) are not smoothed away
    binned = pop.binned_counts(bin_like, edges, bootstrap=weights, reference=pop.shape_integrals(edges, shape))
    modes = np.asarray(table["log10_m200c_mode"], dtype=np.float64)[rows]
    naive = pop.histogram(modes, edges, bootstrap=weights)

    true_col = _column(table, "log10_m200c_true")
    true = None if true_col is None else true_col.astype(np.float64)[rows]
    if true is not None and not np.all(np.isfinite(true)):
        raise CatalogError(path, "log10_m200c_true is not finite in every used row", column="log10_m200c_true")
    truth = None if true is None else pop.histogram(true, edges, bootstrap=weights)

    summary: dict[str, Any] = {
        "catalog": str(path),
        "rows": n_rows,
        "rows_unusable": int(n_rows - usable.sum()),
        "clusters": int(rows.size),
        "line_of_sight": "the lowest los index of each cluster_id among its usable rows "
                         "(inference.population.one_per_host)",
        "target_prior": provenance.get("target_prior"),
        "grid": {"lo": float(grid[0]), "hi": float(grid[-1]), "points": len(grid)},
        "bins": {"edges": _floats(edges), "width_dex": pop.BIN_WIDTH, "in_fit_range": [bool(v) for v in in_range]},
        "fit_range": [float(fit_range[0]), float(fit_range[1])],
        "within_bin_shape": "tinker08 x selection" if shape is mass_function else
                            ("selection (flat)" if shape is not None else "flat"),
        "selection": selection_table,
        "volume": vol,
        "volume_source": vol_source if vol is not None else None,
        "bootstrap": {"replicates": int(bootstrap), "seed": int(seed)},
        "em": {"method": f"smoothed EM (EMS, Silverman et al. 1990), smoothing {pop.EMS_SMOOTHING:g} of ln(counts / "
                         "within-bin shape integral) toward its neighbours; stopped when the counts stop moving",
               "iterations": int(binned.fit.iterations[0]),
               "converged": bool(binned.fit.converged[0]),
               "replicate_iterations_median": float(np.median(binned.fit.iterations[1:]))},
        "recovered": _counts(binned),
        "naive_modes": _counts(naive),
        "true": None if truth is None else _counts(truth),
        "notes": notes,
    }
    if truth is not None:
        summary["log_likelihood"] = {
            "recovered": float(pop.extended_log_likelihood(bin_like, binned.counts)[0]),
            "true_counts": float(pop.extended_log_likelihood(bin_like, truth.counts)[0]),
            "note": "extended ln L of the binned model (nats, same constant): far above the true counts' means "
                    "likelihoods with more structure than the truth supports",
        }
    summary["amplitude"] = _amplitude(path, like, grid, edges, in_range, weights, snapshot, vol, vol_source,
                                      mass_function, true, naive)
    summary["acceptance"] = _acceptance(summary, binned, naive, truth, in_range)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _amplitude(path: Path, like: np.ndarray, grid: np.ndarray, edges: np.ndarray, in_range: np.ndarray,
               weights: np.ndarray, snapshot: Snapshot | None, volume: float | None, volume_source: str,
               mass_function: pop.Shape, true: np.ndarray | None, naive: pop.BinnedCounts) -> dict[str, Any]:
    """The Tinker08 amplitude block of the summary: fitted hierarchically, to the true masses, to the modes."""
    if snapshot is None:
        return {"skipped": "the catalog's provenance has no snapshot (redshift, cosmology) for the Tinker08 shape"}
    if volume is None:
        return {"skipped": volume_source}
    expected = volume * pop.shape_integrals(edges, mass_function)
    total = float(expected[in_range].sum())
    hier = pop.fit_amplitude(pop.bin_likelihoods(like, grid, edges, mass_function), expected, in_range,
                             bootstrap=weights)
    block: dict[str, Any] = {
        "model": "A V n_T08(M) S(M) over the fit range (Tinker et al. 2008, colossus, 200c, at the catalog's "
                 "redshift and cosmology); free 0.1-dex bins outside it",
        "expected_in_range_for_A_1": total,
        "hierarchical": {"A": hier.amplitude, "se": hier.se, "cycles": int(hier.fit.iterations[0]),
                         "converged": bool(hier.fit.converged[0])},
        "model_counts": _floats(hier.counts),
    }
    naive_reps = naive.replicates[:, in_range].sum(axis=1) / total
    block["naive_modes"] = {"A": float(naive.counts[in_range].sum() / total), "se": float(naive_reps.std(ddof=1))}
    if true is not None:
        inside = (true >= edges[0]) & (true <= edges[-1])
        if np.any(mass_function(true[inside]) <= 0):
            raise CatalogError(path, "the selection in the provenance is 0 at the true mass of a cluster in the "
                                     "catalog", column="log10_m200c_true")
        truth = pop.fit_amplitude(pop.point_bin_likelihoods(true[inside], edges, mass_function), expected, in_range,
                                  bootstrap=weights[:, inside])
        block["true"] = {"A": truth.amplitude, "se": truth.se, "clusters_outside_bins": int((~inside).sum())}
        block["difference_se"] = float(np.std(hier.replicates - truth.replicates, ddof=1))
    return block


def _acceptance(summary: dict[str, Any], binned: pop.BinnedCounts, naive: pop.BinnedCounts,
                truth: pop.BinnedCounts | None, in_range: np.ndarray) -> dict[str, Any]:
    """Issue 20's acceptance on a mock catalog (values and verdicts), and whether the naive mode histogram misses."""
    if truth is None:
        return {"skipped": "no log10_m200c_true column: the checks need the true masses (mocks)"}
    out: dict[str, Any] = {"recovered_counts": pop.count_checks(binned.counts, truth.counts, binned.sd, in_range)}
    amp = summary["amplitude"]
    if "hierarchical" in amp:
        out["amplitude_within_1se_of_true"] = pop.amplitude_check(amp["hierarchical"]["A"], amp["hierarchical"]["se"],
                                                                  amp["true"]["A"])
    naive_checks = pop.count_checks(naive.counts, truth.counts, naive.sd, in_range)
    misses = not (naive_checks["every_bin_within_2sd"]["pass"] and naive_checks["pull_rms_at_most_1.5"]["pass"])
    inside_true, inside_naive = float(truth.counts[in_range].sum()), float(naive.counts[in_range].sum())
    out["naive_mode_histogram"] = {**naive_checks, "misses": bool(misses),
                                   "excess_in_fit_range": inside_naive - inside_true,
                                   "excess_fraction_in_fit_range": (inside_naive / inside_true - 1.0
                                                                    if inside_true > 0 else None)}
    return out


def write_summary(summary: Mapping[str, Any], out: str | os.PathLike[str]) -> Path:
    """``out/population.json`` written atomically."""
    return write_json(Path(out) / SUMMARY_FILE, dict(summary))


def write_plot(summary: Mapping[str, Any], out: str | os.PathLike[str]) -> Path:
    """``out/population.png``: left, the recovered counts per bin with bootstrap error bars against the true
    counts (and the fitted Tinker08 model); right, the naive histogram of posterior modes against the same; below
    each, the pulls (estimate - true) / sd. Counts on a log axis; the fit range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(summary["bins"]["edges"], dtype=np.float64)
    mid = 0.5 * (edges[1:] + edges[:-1])
    lo, hi = summary["fit_range"]
    true = summary["true"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True, sharey="row", gridspec_kw={"height_ratios": [3, 1]})
    shown = [np.asarray(summary[k]["counts"], dtype=np.float64) for k in ("recovered", "naive_modes")]
    if true is not None:
        shown.append(np.asarray(true["counts"], dtype=np.float64))
    floor, top_count = 0.3, max(1.0, float(np.nanmax(np.concatenate(shown))))  # counts below `floor`: a marker
    panels = (("recovered", "EM deconvolution of the likelihoods"), ("naive_modes", "naive: histogram of modes"))
    for col, (key, title) in enumerate(panels):
        top, bottom = axes[0][col], axes[1][col]
        est = np.asarray(summary[key]["counts"], dtype=np.float64)
        sd = np.asarray(summary[key]["sd"], dtype=np.float64)
        if true is not None:
            top.stairs(np.asarray(true["counts"], dtype=np.float64), edges, color="k", lw=1.2, label="true counts")
        color = "C0" if col == 0 else "C3"
        seen = est >= floor
        top.errorbar(mid[seen], est[seen], yerr=sd[seen], fmt="o", ms=3, capsize=2, color=color, label=title)
        if not seen.all():
            top.plot(mid[~seen], np.full((~seen).sum(), floor), "v", ms=5, color=color, label=f"below {floor:g}")
        amp = summary["amplitude"]
        if col == 0 and "hierarchical" in amp:
            model = np.asarray(amp["model_counts"], dtype=np.float64)
            inside = np.asarray(summary["bins"]["in_fit_range"], dtype=bool)
            a = amp["hierarchical"]
            top.plot(mid[inside], model[inside], color="C2", lw=1,
                     label=f"Tinker08 x {a['A']:.3f} ± {a['se']:.3f}")
        top.set_yscale("log")
        top.set_ylim(floor * 0.8, top_count * 2.0)
        top.set_title(title, fontsize=9)
        top.legend(fontsize=7)
        for ax in (top, bottom):
            ax.axvspan(lo, hi, color="0.93", zorder=0)
        if true is not None:
            p = pop.pulls(est, np.asarray(true["counts"], dtype=np.float64), sd)
            bottom.plot(mid, np.clip(p, -6, 6), "o", ms=3, color=color)
            bottom.axhspan(-2, 2, color="0.85", zorder=0)
            bottom.axhline(0, color="k", lw=0.6)
            bottom.set_ylim(-6.5, 6.5)
        bottom.set_xlabel(r"$\log_{10} M_{200c}$ [$h^{-1} M_\odot$]")
    axes[0][0].set_ylabel("clusters per 0.1 dex")
    axes[1][0].set_ylabel("pull (clipped at ±6)")
    fig.suptitle(f"{Path(summary['catalog']).name}: {summary['clusters']} clusters (one line of sight each)",
                 fontsize=9)
    from inference.plots import save_figure

    return save_figure(fig, Path(out) / PLOT_FILE)


def population(path: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """:func:`population_summary` of the catalog at ``path`` written to ``out`` (JSON and plot); returns the
    summary with ``outputs`` (the paths written)."""
    summary = population_summary(path, **options)
    plot = write_plot(summary, out)
    summary["outputs"] = {"summary": str(Path(out) / SUMMARY_FILE), "plot": str(plot)}
    write_summary(summary, out)
    return summary

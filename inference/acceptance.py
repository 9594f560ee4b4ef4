"""Acceptance: the science criteria a validation must meet, judged on its metrics (numbers in, verdicts out).

For the main model's corrected posterior mode on held-out hosts, over 1e14-1e15 h^-1 Msun:

- per 0.1-dex bin of true mass holding at least ``MIN_BIN_COUNT`` observations, |bias| <= max(``BIAS_LIMIT``,
  2 standard errors of the bias);
- scatter at most ``MSIGMA_SCATTER_FRACTION`` of the M-sigma baseline's;
- 68% and 95% coverage (importance-weighted to the target prior) within ``COVERAGE_TOLERANCE`` of nominal.

- the dynamics-only model, on held-out observations whose members are randomly thinned to 40% (when validated):
  68% and 95% coverage within ``COVERAGE_TOLERANCE`` and |bias| <= max(``DYNAMICS_BIAS_LIMIT``, 2 standard errors)
  in every well-populated bin; the dynamics set model the same (``dynamics_thinned_set``, when it is not the main
  model);
- the completeness test (``dynamics_completeness``, issue 19.2): the same held-out clusters at 20, 40, 70 and 100%
  completeness give corrected-mode biases within ``COMPLETENESS_BIAS_SPREAD`` of each other (max - min), for the
  main model's dynamics counterpart and, when it is not the main model, the dynamics set model.

The biases of the MSE regression and of the uncorrected posterior mean in the lowest and highest well-populated
bins are reported (the regression-to-the-mean the interim-prior correction removes); they carry no verdict.
"""

from __future__ import annotations

from typing import Any

#: fewest observations a bin needs to be judged
MIN_BIN_COUNT = 30
#: per-bin bias limit, dex (or two standard errors, whichever is larger)
BIAS_LIMIT = 0.02
#: the main model's scatter may be at most this fraction of M-sigma's
MSIGMA_SCATTER_FRACTION = 0.5
#: allowed distance of the 68% and 95% coverage from nominal
COVERAGE_TOLERANCE = 0.03
#: per-bin bias limit of the dynamics-only model on thinned members, dex
DYNAMICS_BIAS_LIMIT = 0.03
#: largest spread (max - min) of a dynamics model's corrected-mode bias over the completenesses of the
#: completeness test, dex (issue 19.2)
COMPLETENESS_BIAS_SPREAD = 0.03


def acceptance(metrics: dict[str, Any], main_kind: str) -> dict[str, Any]:
    """Each criterion for the main model ``main_kind`` with its numbers and a verdict (``pass``).

    ``metrics``: the document of :func:`inference.metrics.validation_metrics`.
    """
    main = metrics["methods"][f"{main_kind}_corrected_mode"]
    bins = [b for b in main["by_bin"] if b["n"] >= MIN_BIN_COUNT]
    bad = [b for b in bins if abs(b["bias"]) > max(BIAS_LIMIT, 2 * b["bias_se"])]
    ms = metrics["methods"]["msigma"]["scatter"]
    c68, c95 = metrics["coverage_68"], metrics["coverage_95"]
    full_mse = metrics["methods"]["mse_regression"]["full_range_by_bin"]
    unc_kind = "mdn" if "mdn_uncorrected_mean" in metrics["methods"] else main_kind
    full_unc = metrics["methods"][f"{unc_kind}_uncorrected_mean"]["full_range_by_bin"]

    def ends(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r["n"] >= MIN_BIN_COUNT]

    scatter_ok = main["scatter"] is not None and ms is not None and main["scatter"] <= MSIGMA_SCATTER_FRACTION * ms
    verdicts: dict[str, Any] = {
        "every_held_out_row_has_a_posterior": {"pass": metrics["n_invalid_posteriors"] == 0,
                                               "n_invalid": metrics["n_invalid_posteriors"]},
        "bias_within_max_0.02_or_2se_in_every_bin": {"pass": not bad, "bins_checked": len(bins),
                                                      "failing_bins": [(b["lo"], round(b["bias"], 4)) for b in bad]},
        "scatter_at_most_half_msigma": {"pass": bool(scatter_ok), "scatter": main["scatter"], "msigma_scatter": ms},
        "coverage_68_within_3pp": {"pass": _near(c68, 0.68), "value": c68},
        "coverage_95_within_3pp": {"pass": _near(c95, 0.95), "value": c95},
        "mse_and_uncorrected_mean_biased_at_ends": {
            "mse_lowest_bin_bias": ends(full_mse)[0]["bias"] if ends(full_mse) else None,
            "mse_highest_bin_bias": ends(full_mse)[-1]["bias"] if ends(full_mse) else None,
            "uncorrected_mean_lowest_bin_bias": ends(full_unc)[0]["bias"] if ends(full_unc) else None,
            "uncorrected_mean_highest_bin_bias": ends(full_unc)[-1]["bias"] if ends(full_unc) else None,
        },
    }
    if metrics.get("dynamics_thinned"):
        verdicts["dynamics_model_on_members_thinned_to_40pc"] = _thinned_verdict(metrics["dynamics_thinned"])
    if metrics.get("dynamics_thinned_set"):
        verdicts["dynamics_set_model_on_members_thinned_to_40pc"] = _thinned_verdict(metrics["dynamics_thinned_set"])
    completeness = metrics.get("dynamics_completeness")
    if completeness:
        spreads = completeness["bias_spread"]
        if main_kind in spreads:
            verdicts["dynamics_bias_independent_of_completeness"] = _completeness_verdict(completeness, main_kind)
        if main_kind != "set" and "set" in spreads:
            verdicts["dynamics_set_bias_independent_of_completeness"] = _completeness_verdict(completeness, "set")
    return verdicts


def _thinned_verdict(thinned: dict[str, Any]) -> dict[str, Any]:
    """A dynamics model on members thinned to 40%: coverage, and the bias of every well-populated bin."""
    rows = [b for b in thinned["corrected_mode"]["by_bin"] if b["n"] >= MIN_BIN_COUNT]
    off = [b for b in rows if abs(b["bias"]) > max(DYNAMICS_BIAS_LIMIT, 2 * b["bias_se"])]
    ok = not off and _near(thinned["coverage_68"], 0.68) and _near(thinned["coverage_95"], 0.95)
    return {"pass": bool(ok), "coverage_68": thinned["coverage_68"], "coverage_95": thinned["coverage_95"],
            "bins_checked": len(rows), "failing_bins": [(b["lo"], round(b["bias"], 4)) for b in off]}


def _completeness_verdict(completeness: dict[str, Any], kind: str) -> dict[str, Any]:
    """The dynamics model ``kind``'s bias spread over the completeness test's levels (None: a level had no bias)."""
    spread = completeness["bias_spread"][kind]
    return {"pass": spread is not None and spread <= COMPLETENESS_BIAS_SPREAD, "model": kind, "spread": spread,
            "limit": COMPLETENESS_BIAS_SPREAD,
            "bias_by_completeness": {c: v["bias"] for c, v in completeness["models"][kind].items()}}


def _near(value: float | None, nominal: float) -> bool:
    return value is not None and abs(value - nominal) <= COVERAGE_TOLERANCE


def passed(verdicts: dict[str, Any]) -> bool:
    """True when every criterion that carries a verdict passed."""
    return all(v["pass"] for v in verdicts.values() if "pass" in v)

"""Acceptance verdicts on hand-made metrics: each threshold passes at its edge and fails just past it."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from inference.acceptance import (
    BIAS_LIMIT,
    COVERAGE_TOLERANCE,
    MIN_BIN_COUNT,
    MIN_RANGE_ESS,
    RANGE_COVERAGE_TOLERANCE,
    acceptance,
    mass_range_coverage_verdict,
    passed,
)
from inference.metrics import COVERAGE_MASS_RANGES, accuracy, bin_edges

RANGE_VERDICT = "coverage_within_3pp_in_every_mass_range"


def _bin(lo: float, bias: float, n: int = 100, se: float = 0.001) -> dict:
    return {"lo": lo, "hi": round(lo + 0.1, 6), "n": n, "bias": bias, "bias_se": se, "scatter": 0.1}


def _range(lo: float, hi: float | None, c68: float = 0.68, c95: float = 0.95, ess: float | None = 5000.0,
           n: int = 10000) -> dict:
    return {"lo": lo, "hi": hi, "n": n, "ess": ess, "coverage_68": c68, "coverage_95": c95,
            "se_68": None, "se_95": None, "uncorrected_68": 0.68, "uncorrected_95": 0.95}


def _metrics(**changes) -> dict:
    """A metrics document that passes every criterion; ``changes`` edit it."""
    bins = [_bin(round(14.0 + 0.1 * i, 6), 0.0) for i in range(10)]
    m = {
        "n_invalid_posteriors": 0,
        "coverage_68": 0.68,
        "coverage_95": 0.95,
        "coverage_by_mass_range": [_range(lo, None if hi == np.inf else hi) for lo, hi in COVERAGE_MASS_RANGES],
        "methods": {
            "flow_corrected_mode": {"by_bin": bins, "scatter": 0.1},
            "msigma": {"scatter": 0.3},
            "mse_regression": {"full_range_by_bin": [_bin(13.5, 0.09), _bin(14.5, 0.0), _bin(15.0, -0.1)]},
            "mdn_uncorrected_mean": {"full_range_by_bin": [_bin(13.5, 0.08, n=5), _bin(13.6, 0.07)]},
        },
    }
    for path, value in changes.items():
        node = m
        *keys, last = path.split("/")
        for k in keys:
            node = node[k] if not k.isdigit() else node[int(k)]
        node[int(last) if last.isdigit() else last] = value
    return m


def test_a_good_validation_passes_every_criterion():
    verdicts = acceptance(_metrics(), "flow")
    assert passed(verdicts)
    assert verdicts["bias_within_max_0.02_or_2se_in_every_bin"]["bins_checked"] == 10
    ends = verdicts["mse_and_uncorrected_mean_biased_at_ends"]
    assert ends["mse_lowest_bin_bias"] == 0.09 and ends["mse_highest_bin_bias"] == -0.1
    assert ends["uncorrected_mean_lowest_bin_bias"] == 0.07  # the 5-observation bin is too small to count


@pytest.mark.parametrize(("bias", "se", "ok"), [(BIAS_LIMIT, 0.001, True), (BIAS_LIMIT + 1e-4, 0.001, False),
                                                (0.05, 0.03, True), (-0.05, 0.02, False)])
def test_bias_limit_is_the_larger_of_the_limit_and_two_standard_errors(bias, se, ok):
    m = _metrics(**{"methods/flow_corrected_mode/by_bin/3": _bin(14.3, bias, se=se)})
    check = acceptance(m, "flow")["bias_within_max_0.02_or_2se_in_every_bin"]
    assert check["pass"] is ok
    assert check["failing_bins"] == ([] if ok else [(14.3, round(bias, 4))])


def test_sparse_bins_are_not_judged():
    m = _metrics(**{"methods/flow_corrected_mode/by_bin/9": _bin(14.9, 0.5, n=MIN_BIN_COUNT - 1)})
    check = acceptance(m, "flow")["bias_within_max_0.02_or_2se_in_every_bin"]
    assert check["pass"] and check["bins_checked"] == 9


@pytest.mark.parametrize(("level", "name"), [("coverage_68", "coverage_68_within_2pp"),
                                             ("coverage_95", "coverage_95_within_2pp")])
def test_coverage_within_tolerance_of_nominal(level, name):
    nominal = 0.68 if level == "coverage_68" else 0.95
    assert acceptance(_metrics(**{level: nominal - COVERAGE_TOLERANCE + 1e-9}), "flow")[name]["pass"]
    assert not acceptance(_metrics(**{level: nominal + COVERAGE_TOLERANCE + 1e-3}), "flow")[name]["pass"]
    assert not acceptance(_metrics(**{level: nominal - 0.025}), "flow")[name]["pass"]  # issue 20: 2 points, not 3
    failing = acceptance(_metrics(**{level: None}), "flow")  # undefined coverage never passes
    assert not failing[name]["pass"] and not passed(failing)


def test_every_judged_mass_range_is_judged_and_the_lowest_and_highest_only_reported():
    check = acceptance(_metrics(**{"coverage_by_mass_range/0": _range(13.0, 13.5, c68=0.3, c95=0.6),
                                   "coverage_by_mass_range/4": _range(15.0, None, c68=0.2, c95=0.5)}),
                       "flow")[RANGE_VERDICT]
    assert check["pass"] and check["failing_ranges"] == [] and check["skipped"] == []
    assert [r["range"] for r in check["ranges"]] == ["13.5-14", "14-14.5", "14.5-15"]


@pytest.mark.parametrize("index", [1, 2, 3])
@pytest.mark.parametrize(("level", "nominal"), [("68", 0.68), ("95", 0.95)])
def test_coverage_in_a_mass_range_within_3_points_of_nominal(index, level, nominal):
    lo, hi = COVERAGE_MASS_RANGES[index]
    hi = None if hi == np.inf else hi

    def check(value: float) -> dict:
        row = _range(lo, hi, **{f"c{level}": value})  # ess 5000: two standard errors are below 3 points
        return acceptance(_metrics(**{f"coverage_by_mass_range/{index}": row}), "flow")[RANGE_VERDICT]

    assert check(nominal - RANGE_COVERAGE_TOLERANCE + 1e-9)["pass"]
    failing = check(nominal + RANGE_COVERAGE_TOLERANCE + 1e-3)
    assert not failing["pass"] and failing["failing_ranges"] == [check(nominal)["ranges"][index - 1]["range"]]
    assert not check(nominal - 0.031)["pass"]  # issue 20: 3 points


def test_a_mass_range_with_a_small_effective_sample_size_is_allowed_two_standard_errors():
    """At ess 100 a calibrated 68% coverage has a standard error of 4.7 points: 0.60 is within two (9.3 points) and
    passes, 0.58 does not; the allowance is the calibrated standard error, not the measured coverage's."""
    def check(c68: float, ess: float) -> dict:
        rows = [_range(13.5, 14.0), _range(14.0, 14.5), _range(14.5, 15.0, c68=c68, ess=ess, n=300)]
        return mass_range_coverage_verdict(rows)

    assert check(0.60, 100)["pass"] and check(0.60, 100)["ranges"][2]["allowed_68"] == pytest.approx(0.0933, abs=1e-4)
    assert not check(0.58, 100)["pass"]
    assert not check(0.60, 1000)["pass"]  # the same coverage at a larger ess is judged at 3 points


def test_mass_ranges_without_rows_or_too_few_effective_rows_are_skipped_and_listed():
    rows = [_range(13.5, 14.0), _range(14.0, 14.5, c68=0.1, ess=MIN_RANGE_ESS - 1, n=50),
            _range(14.5, 15.0, c68=None, c95=None, ess=None, n=0)]
    check = mass_range_coverage_verdict(rows)
    assert check["pass"] and [r["range"] for r in check["ranges"]] == ["13.5-14"]
    assert check["skipped"] == [
        {"range": "14-14.5", "n": 50, "ess": MIN_RANGE_ESS - 1, "why": f"effective sample size below {MIN_RANGE_ESS}"},
        {"range": "14.5-15", "n": 0, "ess": None, "why": "no rows"}]
    nothing = mass_range_coverage_verdict([_range(13.0, 13.5), rows[2]])  # no judged range: nothing shown
    assert not nothing["pass"] and nothing["ranges"] == []
    undefined = mass_range_coverage_verdict([_range(13.5, 14.0, c95=None)])
    assert not undefined["pass"] and undefined["failing_ranges"] == ["13.5-14"]


def test_scatter_must_be_at_most_half_of_msigma():
    assert acceptance(_metrics(**{"methods/flow_corrected_mode/scatter": 0.15}), "flow")[
        "scatter_at_most_half_msigma"]["pass"]
    failing = acceptance(_metrics(**{"methods/flow_corrected_mode/scatter": 0.1501}), "flow")
    assert not failing["scatter_at_most_half_msigma"]["pass"] and not passed(failing)


def test_main_model_kind_selects_the_rows_judged():
    m = _metrics()
    m["methods"]["mdn_corrected_mode"] = copy.deepcopy(m["methods"]["flow_corrected_mode"])
    m["methods"]["mdn_corrected_mode"]["by_bin"][0] = _bin(14.0, 0.2)
    assert passed(acceptance(m, "flow")) and not passed(acceptance(m, "mdn"))


def test_accuracy_bins_and_range_on_known_offsets():
    true = np.repeat(bin_edges()[:-1] + 0.05, 40)
    est = true + 0.03
    acc = accuracy(est, true)
    assert acc["n"] == len(true) and acc["bias"] == pytest.approx(0.03) and acc["scatter"] == pytest.approx(0.0)
    assert [b["n"] for b in acc["by_bin"]] == [40] * 10


def test_dynamics_model_on_thinned_members_is_judged_when_validated():
    m = _metrics()
    assert "dynamics_model_on_members_thinned_to_40pc" not in acceptance(m, "flow")
    good = {"coverage_68": 0.69, "coverage_95": 0.94,
            "corrected_mode": {"by_bin": [_bin(14.0, 0.029), _bin(14.1, -0.01)]}}
    m["dynamics_thinned"] = good
    check = acceptance(m, "flow")["dynamics_model_on_members_thinned_to_40pc"]
    assert check["pass"] and check["bins_checked"] == 2
    m["dynamics_thinned"] = good | {"corrected_mode": {"by_bin": [_bin(14.0, 0.035)]}}
    assert not passed(acceptance(m, "flow"))
    m["dynamics_thinned"] = good | {"coverage_68": 0.72}
    assert not acceptance(m, "flow")["dynamics_model_on_members_thinned_to_40pc"]["pass"]
    m["dynamics_thinned"] = good | {"coverage_68": 0.705}  # the dynamics model keeps issue 12's 3 points
    assert acceptance(m, "flow")["dynamics_model_on_members_thinned_to_40pc"]["pass"]


def test_a_held_out_row_without_a_posterior_fails_the_validation():
    """A row the network answered with NaN (flag INVALID_OUTPUT) would only lower the coverage a little and vanish
    from the scatter: it fails the validation on its own."""
    verdicts = acceptance(_metrics(n_invalid_posteriors=1), "flow")
    assert verdicts["every_held_out_row_has_a_posterior"] == {"pass": False, "n_invalid": 1}
    assert not passed(verdicts)


def test_invalid_rows_counts_rows_with_any_nan_or_inf():
    from inference.validate import invalid_rows

    pdf = np.ones((5, 4))
    pdf[1, 2], pdf[3, :], pdf[4, 0] = np.nan, np.nan, np.inf
    assert invalid_rows(pdf) == 3
    assert invalid_rows(np.ones((2, 4))) == 0

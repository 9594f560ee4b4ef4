"""Rows that are not posteriors are never passed off as ones (issue 18.7): a network log density that is NaN or +inf
gives a NaN pdf, NaN summaries and flag INVALID_OUTPUT (catalogs keep the row; `query` refuses in one line); a
density that is zero everywhere on the grid gives a flat pdf and flag NO_SUPPORT. Nothing else is touched."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from test_model_files import R_APERTURE, SNAPSHOT, build_run_models, sky_cluster_files, toy_clusters

import inference.posterior as posterior
from catalogs.io import read_catalog
from catalogs.stage import catalog_stage
from clustermass.cli import main
from features.definitions import compute_features
from inference.diagnostics import FLAGS, flag_bits, flag_names
from inference.posterior import SUMMARY_COLUMNS, normalise, posterior_block

GRID = np.linspace(13.0, 15.5, 256)
INVALID, NO_SUPPORT = FLAGS["INVALID_OUTPUT"], FLAGS["NO_SUPPORT"]
SUMMARIES = list(SUMMARY_COLUMNS)


def gaussian(mu: float, sigma: float = 0.15) -> np.ndarray:
    return -0.5 * ((GRID - mu) / sigma) ** 2


def rows() -> dict[str, np.ndarray]:
    """One row of network log densities per case (G,)."""
    partial = gaussian(14.2)
    partial[:40] = -np.inf  # -inf somewhere is a density that is zero there: fine
    one_nan = gaussian(14.5)
    one_nan[100] = np.nan
    one_inf = gaussian(14.5)
    one_inf[30] = np.inf
    return {"good": gaussian(14.5), "one NaN": one_nan, "all NaN": np.full(len(GRID), np.nan),
            "+inf": one_inf, "all -inf": np.full(len(GRID), -np.inf), "partly -inf": partial}


EXPECTED = {"good": 0, "one NaN": INVALID, "all NaN": INVALID, "+inf": INVALID, "all -inf": NO_SUPPORT,
            "partly -inf": 0}


def _block(log_q: np.ndarray, ratio: np.ndarray | None = None) -> dict[str, np.ndarray]:
    ratio = np.zeros(len(GRID)) if ratio is None else ratio
    out = posterior_block(jnp.asarray(log_q, jnp.float32), jnp.asarray(ratio, jnp.float32), jnp.asarray(GRID))
    return {k: np.asarray(v) for k, v in out.items()}


def test_each_kind_of_row_is_flagged_and_only_valid_rows_have_numbers():
    cases = rows()
    out = _block(np.stack(list(cases.values())))
    for i, (case, expected) in enumerate(EXPECTED.items()):
        assert out["flags"][i] == expected, case
        if expected == INVALID:
            assert np.all(np.isnan(out["pdf"][i])) and np.all(np.isnan(out["raw_pdf"][i])), case
            assert all(np.isnan(out[name][i]) for name in SUMMARIES), case
            continue
        assert np.all(np.isfinite(out["pdf"][i])) and all(np.isfinite(out[name][i]) for name in SUMMARIES), case
        assert np.trapezoid(out["pdf"][i], GRID) == pytest.approx(1.0, rel=1e-4), case
        if expected == NO_SUPPORT:
            np.testing.assert_allclose(out["pdf"][i], 1.0 / (GRID[-1] - GRID[0]), rtol=1e-5)
            assert out["median"][i] == pytest.approx(GRID.mean(), abs=1e-3)
    # a good row is not changed by its neighbours: the same numbers alone as in the block
    alone = _block(cases["good"][None, :])
    for name in ("pdf", *SUMMARIES):
        np.testing.assert_array_equal(out[name][0], alone[name][0], err_msg=name)
    assert out["median"][0] == pytest.approx(14.5, abs=0.01)


def test_normalise_itself_never_turns_nan_into_a_density():
    cases = rows()
    pdf = np.asarray(normalise(jnp.asarray(np.stack([cases["one NaN"], cases["all NaN"], cases["+inf"]])),
                               jnp.asarray(GRID)))
    assert np.all(np.isnan(pdf))


def test_a_target_prior_that_excludes_every_mass_the_network_allows_is_no_support():
    ratio = np.where(GRID < 14.0, 0.0, -np.inf)  # zero prior above 10^14
    log_q = np.where(GRID >= 14.0, gaussian(14.5), -np.inf)  # no network density below
    out = _block(np.stack([log_q, gaussian(13.5)]), ratio)
    assert list(out["flags"]) == [NO_SUPPORT, 0]
    assert np.isfinite(out["uncorrected_mode"][0]) and out["uncorrected_mode"][0] == pytest.approx(14.5, abs=0.01)


def test_the_posterior_bits_reach_the_flags_and_their_names():
    bits = flag_bits(np.ones(3), np.zeros(3), posterior=np.array([0, INVALID, NO_SUPPORT]))
    assert list(bits) == [0, INVALID, NO_SUPPORT]
    assert flag_names(INVALID) == ["INVALID_OUTPUT"] and flag_names(NO_SUPPORT) == ["NO_SUPPORT"]
    assert flag_names(INVALID | FLAGS["GRID_EDGE"]) == ["GRID_EDGE", "INVALID_OUTPUT"]


def _corrupt(monkeypatch, bad: np.ndarray | None, value: float):
    """Make the network's log density ``value`` on the grid for feature rows equal to ``bad`` (every row if None):
    what a broken or corrupt model returns, through the real posterior code."""
    real = posterior.grid_density

    def grid_density(model, grid, **kwargs):
        density = real(model, grid, **kwargs)

        def call(xb):
            out = np.array(density(xb))
            hit = np.ones(len(xb), bool) if bad is None else np.all(np.asarray(xb) == bad, axis=1)
            out[hit, len(grid) // 2] = value
            if np.isneginf(value):
                out[hit] = value
            return jnp.asarray(out)
        return call

    monkeypatch.setattr(posterior, "grid_density", grid_density)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_run_models(tmp_path_factory.mktemp("posterior") / "model")


def _table(n: int = 6) -> pd.DataFrame:
    offsets, r, v, m, mass = toy_clusters(n, seed=11)
    table = pd.DataFrame(compute_features(offsets, r, v, m, r_aperture=R_APERTURE))
    table["cluster_id"], table["los"], table["log10_m200c_true"] = np.arange(n), 0, mass
    return table


def test_a_catalog_keeps_a_broken_row_unmistakable_and_the_others_untouched(models, tmp_path, monkeypatch):
    table = _table()
    clean = read_catalog(catalog_stage(table, models, tmp_path / "clean", prior="flat", snapshot=SNAPSHOT)[0])
    features = list(json.loads((models / "flow" / "model.json").read_text())["features"])
    _corrupt(monkeypatch, table.loc[2, features].to_numpy(np.float64), np.nan)
    paths = catalog_stage(table, models, tmp_path / "broken", prior="flat", snapshot=SNAPSHOT)
    for path in paths:
        t = read_catalog(path)
        assert len(t) == len(table)
        assert t["flags"][2] & INVALID and np.all(np.isnan(np.asarray(t["log10_m200c_pdf"][2])))
        assert all(np.isnan(t[column][2]) for column in SUMMARY_COLUMNS.values())
        others = np.arange(len(table)) != 2
        assert not np.any(np.asarray(t["flags"])[others] & (INVALID | NO_SUPPORT))
        for column in [*SUMMARY_COLUMNS.values(), "log10_m200c_pdf", "flags"]:
            np.testing.assert_array_equal(np.asarray(t[column])[others], np.asarray(clean[column])[others],
                                          err_msg=column)


def _members_file(tmp_path) -> str:
    _, r, v, m, _ = toy_clusters(1, seed=3)
    path = tmp_path / "m.csv"
    np.savetxt(path, np.column_stack([r, v, m]), delimiter=",", header="r_proj,v_los,log10_mstar", comments="")
    return str(path)


def test_query_refuses_a_network_output_of_nan_in_one_line(models, tmp_path, capsys, monkeypatch):
    _corrupt(monkeypatch, None, np.nan)
    code = main(["query", "--model", str(models), "--members", _members_file(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == (f"error: {models / 'flow'}: the network's log density is NaN or infinite for these members' "
                   "features (flag INVALID_OUTPUT): a bug or a corrupt model; retrain it\n")


def test_query_flags_a_posterior_without_support(models, tmp_path, capsys, monkeypatch):
    _corrupt(monkeypatch, None, -np.inf)
    code = main(["query", "--model", str(models), "--members", _members_file(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    answer = json.loads(out)
    assert answer["flags"] & NO_SUPPORT and "NO_SUPPORT" in answer["flag_names"]
    assert any(w.startswith("flag NO_SUPPORT: the corrected posterior is zero everywhere") for w in answer["warnings"])


def test_a_real_catalog_flags_broken_rows_too(models, tmp_path, capsys, monkeypatch):
    """`infer` (catalogs/real.py) carries the posterior's bits into the flags column like the run's catalogs."""
    galaxies, centres = sky_cluster_files(tmp_path)
    _corrupt(monkeypatch, None, np.nan)
    code = main(["infer", "--model", str(models), "--members", str(galaxies), "--clusters", str(centres), "--out",
                 str(tmp_path / "cat")])
    _, err = capsys.readouterr()
    assert code == 0, err
    t = read_catalog(tmp_path / "cat" / "catalog.h5")
    assert len(t) == 1 and t["flags"][0] & INVALID and np.isnan(t["log10_m200c_median"][0])


def test_validation_counts_held_out_rows_without_a_posterior(models, monkeypatch):
    """`validate` (inference.validate.evaluate) reports the main model's INVALID_OUTPUT rows and fails on them."""
    from inference.validate import evaluate
    from models.msigma import FEATURE, fit_msigma
    from models.stage import load_models

    table = _table(12)
    features = list(json.loads((models / "flow" / "model.json").read_text())["features"])
    loaded = {"flow": load_models(models)["flow"]}
    msigma = fit_msigma(table[FEATURE].to_numpy(), table["log10_m200c_true"].to_numpy())
    _corrupt(monkeypatch, table.loc[4, features].to_numpy(np.float64), np.nan)
    metrics = evaluate(table, loaded, msigma, prior="flat", snapshot=SNAPSHOT).metrics
    assert metrics["n_invalid_posteriors"] == 1
    assert metrics["acceptance"]["every_held_out_row_has_a_posterior"] == {"pass": False, "n_invalid": 1}
    ranges = metrics["coverage_by_mass_range"]  # issue 20: every range reported, the invalid row among its misses
    true = table["log10_m200c_true"].to_numpy()
    assert [(r["lo"], r["hi"]) for r in ranges] == [(13.0, 13.5), (13.5, 14.0), (14.0, 14.5), (14.5, 15.0),
                                                    (15.0, None)]
    assert [r["n"] for r in ranges] == [int(((true >= lo) & (true < (hi or np.inf))).sum()) for lo, hi in
                                        ((r["lo"], r["hi"]) for r in ranges)]
    assert "pass" in metrics["acceptance"]["coverage_within_3pp_in_every_mass_range"]


def _off_centre(r: np.ndarray) -> np.ndarray:
    """Projected radii [Mpc/h] of members seen from a centre off their cluster: all in [0.52, 1) r_aperture, none in
    the inner half (issue 19: real lists' centres, and the mocks' since `features.centring`)."""
    return R_APERTURE * (0.52 + 0.48 * r / R_APERTURE)


def test_a_held_out_row_centred_off_its_cluster_has_a_posterior(models):
    """Issue 19: two held-out rows of a run with centring errors had no member inside r_aperture / 2; their inner
    dispersion was NaN, so was the flow's density (INVALID_OUTPUT) and `validate` failed
    every_held_out_row_has_a_posterior. The feature is now defined (all members' dispersion) and so is the row."""
    from inference.validate import evaluate
    from models.msigma import FEATURE, fit_msigma
    from models.stage import load_models

    offsets, r, v, m, mass = toy_clusters(12, seed=11)
    r[offsets[4] : offsets[5]] = _off_centre(r[offsets[4] : offsets[5]])
    table = pd.DataFrame(compute_features(offsets, r, v, m, r_aperture=R_APERTURE))
    table["cluster_id"], table["los"], table["log10_m200c_true"] = np.arange(12), 0, mass
    assert table.loc[4, "frac_inner"] == 0
    msigma = fit_msigma(table[FEATURE].to_numpy(), mass)
    validation = evaluate(table, {"flow": load_models(models)["flow"]}, msigma, prior="flat", snapshot=SNAPSHOT)
    assert validation.metrics["n_invalid_posteriors"] == 0
    assert validation.metrics["acceptance"]["every_held_out_row_has_a_posterior"]["pass"]
    assert np.all(np.isfinite(validation.main.pdf[4])) and np.isfinite(validation.main.values["mode"][4])


def test_query_answers_for_members_centred_off_their_cluster(models, tmp_path, capsys):
    """The same through `query`: a user's centre that leaves the inner half of the aperture empty gets a mass,
    not 'features ... are undefined'."""
    _, r, v, m, _ = toy_clusters(1, seed=3)
    path = tmp_path / "off.csv"
    np.savetxt(path, np.column_stack([_off_centre(r), v, m]), delimiter=",", header="r_proj,v_los,log10_mstar",
               comments="")
    code = main(["query", "--model", str(models), "--members", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    answer = json.loads(out)
    assert answer["n_members"] == len(r) and not answer["flags"] & INVALID
    assert np.isfinite(answer["log10_m200c_median"])

"""The set model in the pipeline (issue 19.3): ``[train] models = ["flow", "set"]`` trains set models beside the
feature flows (model/set, model/dynamics/set), validate scores them beside the flows (metrics.json), and the
catalog can be filled from them (models/stage.py, inference/validate.py, catalogs/stage.py)."""

from __future__ import annotations

import numpy as np
import pytest

from clustermass.cli import main
from features.io import load_observation_table, read_members
from features.sets import FEATURE_SETS
from inference.posterior import prepare
from models.config import TrainSection
from models.io import load_model, read_description
from models.set_batches import MEMBER_INPUTS
from models.set_model import TrainedSetModel, set_data
from models.stage import held_out_mask, load_models, load_msigma, train_stage

#: the set models and flows of the fixture: one network each, two epochs, small widths; the M-sigma residual
#: target, so that the law must be fitted before the set models train
SECTION = TrainSection(models=("flow", "set"), ensemble=1, max_epochs=2, hidden=(16,), n_bins=4, set_phi=(8,),
                       set_cap=16, set_max_epochs=2, set_batch_size=64, set_target="msigma_residual")


@pytest.fixture(scope="module")
def run(tiny_box, tmp_path_factory):
    """Observations of the session's tiny box (~370 rows) and a model directory trained by :func:`train_stage` with
    :data:`SECTION` (~40 s on 2 loaded cores, most of it compiling): the module's one training."""
    d = tmp_path_factory.mktemp("set-stage")
    assert main(["observe", "--halos", str(tiny_box / "halos.h5"), "--galaxies", str(tiny_box / "galaxies.h5"),
                 "--out", str(d / "obs"), "--quiet", "--regions", "2"]) == 0
    table, meta = load_observation_table(d / "obs")
    summary = train_stage(table, SECTION, d / "model", quiet=True, members=read_members(d / "obs"),
                          observations={"config": meta["config"], "snapshot": meta["snapshot"]})
    return d, summary


def test_the_set_models_are_trained_beside_the_flows_and_recorded_like_them(run):
    d, summary = run
    model_dir = d / "model"
    assert sorted(summary["models"]) == ["dynamics/flow", "dynamics/set", "full/flow", "full/set"]
    law = load_msigma(model_dir / "msigma.json")
    for feature_set, directory in (("full", model_dir / "set"), ("dynamics", model_dir / "dynamics" / "set")):
        model = load_model(directory)
        assert isinstance(model, TrainedSetModel) and model.feature_set == feature_set
        assert model.set_spec.inputs == MEMBER_INPUTS[feature_set] and model.set_spec.cap == SECTION.set_cap
        assert model.target == "msigma_residual" and model.msigma == law  # the run's law, fitted first
        assert model.train.max_epochs == SECTION.set_max_epochs and model.spec.kind == "flow"
        description, flow = read_description(directory), read_description(directory.parent / "flow")
        assert description["kind"] == "set" and description["features"] == list(FEATURE_SETS[feature_set])
        for key in ("observations", "selection", "training_members", "typicality", "inputs", "feature_set",
                    "test_hosts_seed"):  # inputs and selection recorded like the flow's
            assert description[key] == flow[key], key
    assert set(load_models(model_dir)) == {"flow", "set"}
    # trained on the flow's non-test hosts only
    table, _ = load_observation_table(d / "obs")
    test_ids = set(table.loc[held_out_mask(table, model_dir), "cluster_id"])
    assert summary["models"]["full/set"]["train_rows"] == summary["models"]["full/flow"]["train_rows"]
    assert summary["models"]["full/set"]["train_rows"] + len(table[table.cluster_id.isin(test_ids)]) <= len(table)


def held_out_rows(d):
    """The run's held-out rows (re-indexed from 0), their members in the same order, and the observations' meta."""
    table, meta = load_observation_table(d / "obs")
    held = held_out_mask(table, d / "model")
    return table[held].reset_index(drop=True), read_members(d / "obs").take(held), meta


def test_the_set_models_give_finite_posteriors_of_held_out_members(run):
    d, _ = run
    test, members, _ = held_out_rows(d)
    for directory in (d / "model" / "set", d / "model" / "dynamics" / "set"):
        model = load_model(directory)
        pdf, values = prepare(model, "flat", snapshot=None).evaluate(set_data(model, members))
        assert pdf.shape == (len(test), 256) and np.isfinite(pdf).all() and np.isfinite(values["mode"]).all()


def test_the_set_model_reads_members_or_refuses_in_one_line(tmp_path, run):
    from pipeline.errors import ConfigError

    d, _ = run
    table, meta = load_observation_table(d / "obs")
    with pytest.raises(ConfigError, match=r"the set model \('set'\) reads every observation's members: expected the "
                                          r"observations' members\.h5$"):
        train_stage(table, SECTION, tmp_path / "m", quiet=True, members=None,
                    observations={"config": meta["config"], "snapshot": meta["snapshot"]})


def test_the_train_command_reads_members_for_the_set_model(run, tmp_path, monkeypatch):
    """``clustermass train --kind set`` on the full set only still needs members.h5: the command reads it."""
    d, _ = run
    seen = {}

    def recorded(table, section, out, **kwargs):
        seen["members"] = kwargs["members"]
        return {"models": {}, "msigma": {"intercept": 14.0, "slope": 3.0, "pivot": 500.0, "scatter": 0.3},
                "test_rows": 0}

    monkeypatch.setattr("models.stage.train_stage", recorded)
    config = tmp_path / "c.toml"
    config.write_text("[train]\nfeature_sets = ['full']\n")
    assert main(["train", "--observations", str(d / "obs"), "--out", str(tmp_path / "m"), "--kind", "set",
                 "--config", str(config), "--quiet"]) == 0
    assert seen["members"] is not None and seen["members"].n_obs == len(load_observation_table(d / "obs")[0])


@pytest.fixture(scope="module")
def validated(run, tmp_path_factory):
    """``validate_stage`` of the run on its held-out rows and their members (the flow main)."""
    from inference.validate import validate_stage

    d, _ = run
    test, members, _ = held_out_rows(d)
    out = tmp_path_factory.mktemp("validation")
    metrics = validate_stage(test, d / "model", out, members=members)
    return metrics, test, members


def test_validate_scores_the_set_models_beside_the_flows(validated):
    metrics, _, _ = validated
    assert metrics["main_model"] == "flow"
    methods = metrics["methods"]
    for name in ("set_corrected_mode", "set_corrected_median", "set_uncorrected_mean", "flow_corrected_mode"):
        assert methods[name]["n"] == methods["flow_corrected_mode"]["n"] > 0, name
    assert "not_scored" not in metrics
    flow, dyn_set = metrics["dynamics_thinned"], metrics["dynamics_thinned_set"]
    assert flow["completeness"] == dyn_set["completeness"] == 0.4
    for thinned in (flow, dyn_set):  # the coverage ranges the thinned rows (from 10^13.9 up) cover whole
        assert [(r["lo"], r["hi"]) for r in thinned["coverage_by_mass_range"]] == [(14.0, 14.5), (14.5, 15.0),
                                                                                   (15.0, None)]
    assert len(metrics["coverage_by_mass_range"]) == 5
    assert flow["n"] == dyn_set["n"] > 0  # the same thinned lists for both models
    verdicts = metrics["acceptance"]
    for name in ("dynamics_model_on_members_thinned_to_40pc", "dynamics_set_model_on_members_thinned_to_40pc",
                 "dynamics_bias_independent_of_completeness", "dynamics_set_bias_independent_of_completeness"):
        assert "pass" in verdicts[name], name
    assert verdicts["dynamics_set_bias_independent_of_completeness"]["model"] == "set"


def test_the_completeness_test_scores_the_same_clusters_at_every_completeness(validated, run):
    """20, 40, 70 and 100%: the same clusters for both dynamics models at every level (the 20% lists decide which);
    at 100% the lists are complete: the flow's bias is then its bias on the rows' own features."""
    from inference.metrics import accuracy
    from inference.validate import density_posteriors, evaluate_completeness

    metrics, test, members = validated
    block = metrics["dynamics_completeness"]
    assert block["levels"] == [0.2, 0.4, 0.7, 1.0] and set(block["models"]) == {"flow", "set"}
    counts = {(kind, c): v["n"] for kind, levels in block["models"].items() for c, v in levels.items()}
    assert sorted({c for _, c in counts}) == ["0.2", "0.4", "0.7", "1"] and len(set(counts.values())) == 1
    judged = int((test.log10_m200c_true >= 13.9).sum())  # hosts from 0.1 dex below the judged range up
    assert block["n"] > 0 and block["n"] + block["n_dropped_too_few"] == judged
    for kind in ("flow", "set"):
        biases = [v["bias"] for v in block["models"][kind].values()]
        assert block["bias_spread"][kind] == pytest.approx(max(biases) - min(biases))
    d, _ = run
    flow = load_model(d / "model" / "dynamics" / "flow")
    complete = evaluate_completeness(test, members, {"flow": flow}, min_members=block["min_members"],
                                     r_aperture=1.6, levels=(1.0,))["models"]["flow"]["1"]
    judged_rows = test[test.log10_m200c_true >= 13.9]
    names = list(flow.feature_names)
    ok = (np.isfinite(judged_rows[names].to_numpy()).all(axis=1)
          & (judged_rows.n_members >= block["min_members"]).to_numpy())
    post = density_posteriors(flow, judged_rows[names].to_numpy()[ok], "flat", None)
    direct = accuracy(post.values["mode"], judged_rows.log10_m200c_true.to_numpy()[ok])
    assert complete["n"] == direct["n"] > 0
    assert complete["bias"] == pytest.approx(direct["bias"], abs=1e-5)


def test_the_completeness_lists_are_nested_and_complete_at_100pc(validated):
    from inference.validate import completeness_lists

    _, _, members = validated
    lists = completeness_lists(members, (0.2, 0.4, 0.7, 1.0), seed=3)
    assert lists[1.0].offsets.tolist() == members.offsets.tolist()
    np.testing.assert_array_equal(lists[1.0].galaxy_id, members.galaxy_id)
    total = members.offsets[-1]
    for low, high in ((0.2, 0.4), (0.4, 0.7), (0.7, 1.0)):
        assert set(lists[low].galaxy_id.tolist()) <= set(lists[high].galaxy_id.tolist())  # nested
        assert abs(lists[low].offsets[-1] / total - low) < 0.03  # about that fraction of the members
    # every list keeps its members with their observation (per-observation counts never grow)
    assert (lists[0.2].counts <= lists[0.4].counts).all() and (lists[0.7].counts <= members.counts).all()
    assert completeness_lists(members, (0.4,), seed=3)[0.4].offsets.tolist() == lists[0.4].offsets.tolist()


def test_validate_can_take_the_set_model_as_main_and_skips_it_without_members(run, tmp_path):
    from inference.validate import evaluate, validate_stage

    d, _ = run
    test, members, _ = held_out_rows(d)
    models = load_models(d / "model")
    msigma = load_msigma(d / "model" / "msigma.json")
    main_set = evaluate(test, models, msigma, main="set", members=members).metrics
    assert main_set["main_model"] == "set" and main_set["estimator"] == "set corrected posterior mode"
    assert main_set["scatter_dex"] == main_set["methods"]["set_corrected_mode"]["scatter"]
    without = evaluate(test, models, msigma).metrics
    assert without["not_scored"] == {"set": "no members of the scored rows (members.h5)"}
    assert "set_corrected_mode" not in without["methods"] and without["main_model"] == "flow"
    with pytest.raises(Exception, match="main model 'set' is not among the density models"):
        validate_stage(test, d / "model", tmp_path / "v", main="set")


def test_the_catalog_is_filled_by_the_set_model_from_the_members(run, tmp_path):
    from catalogs.io import read_catalog
    from catalogs.stage import catalog_stage
    from inference.posterior import SUMMARY_COLUMNS
    from pipeline.errors import InputError
    from pipeline.snapshot import Snapshot

    d, _ = run
    test, members, meta = held_out_rows(d)
    snapshot = Snapshot.from_dict(meta["snapshot"])
    paths = catalog_stage(test, d / "model", tmp_path / "set", prior="flat", snapshot=snapshot, main="set",
                          members=members, chunk=40)  # several blocks of sets
    catalog = read_catalog(paths[0])
    assert catalog.meta["provenance"]["model"] == "set" and catalog.meta["provenance"]["model_kind"] == "set"
    assert len(catalog) == len(test)
    model = load_model(d / "model" / "set")
    pdf, values = prepare(model, "flat", snapshot=snapshot).evaluate(set_data(model, members))
    # the same posteriors as all sets at once (up to float32 rounding: blocks of 40 sets compile other batch shapes;
    # a set above the cap keeps a subsample seeded by its own members, whatever block it is in)
    assert (members.counts > model.set_spec.cap).any()
    np.testing.assert_allclose(np.asarray(catalog["log10_m200c_pdf"]), pdf, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(catalog[SUMMARY_COLUMNS["median"]]), values["median"], atol=1e-4)
    assert np.isfinite(np.asarray(catalog["ood_score"])).all()  # the diagnostics score the summary features
    flow = read_catalog(catalog_stage(test, d / "model", tmp_path / "flow", prior="flat", snapshot=snapshot)[0])
    assert flow.meta["provenance"]["model_kind"] == "flow"
    np.testing.assert_array_equal(np.asarray(flow["ood_score"]), np.asarray(catalog["ood_score"]))
    with pytest.raises(InputError, match=r"set: the set model reads every observation's members: expected the "
                                         rf"members of the {len(test)} rows \(members\.h5\), got none$"):
        catalog_stage(test, d / "model", tmp_path / "none", prior="flat", snapshot=snapshot, main="set")


def test_completeness_acceptance_judges_the_bias_spread():
    from inference.acceptance import COMPLETENESS_BIAS_SPREAD, acceptance

    def metrics(spreads: dict[str, float | None]) -> dict:
        by_bin = [{"lo": 14.0, "n": 100, "bias": 0.0, "bias_se": 0.01}]
        doc = {"methods": {"flow_corrected_mode": {"by_bin": by_bin, "scatter": 0.1},
                           "msigma": {"scatter": 0.3}, "flow_uncorrected_mean": {"full_range_by_bin": []},
                           "mse_regression": {"full_range_by_bin": []}},
               "coverage_68": 0.68, "coverage_95": 0.95, "coverage_by_mass_range": [], "n_invalid_posteriors": 0,
               "dynamics_completeness": {"bias_spread": spreads, "models": {
                   k: {"0.2": {"bias": 0.0}, "1": {"bias": v}} for k, v in spreads.items()}}}
        return acceptance(doc, "flow")

    ok = metrics({"flow": COMPLETENESS_BIAS_SPREAD - 0.001, "set": 0.05})
    assert ok["dynamics_bias_independent_of_completeness"]["pass"]
    assert not ok["dynamics_set_bias_independent_of_completeness"]["pass"]
    assert ok["dynamics_set_bias_independent_of_completeness"]["bias_by_completeness"] == {"0.2": 0.0, "1": 0.05}
    bad = metrics({"flow": COMPLETENESS_BIAS_SPREAD + 0.001})
    assert not bad["dynamics_bias_independent_of_completeness"]["pass"]
    assert "dynamics_set_bias_independent_of_completeness" not in bad
    assert not metrics({"flow": None})["dynamics_bias_independent_of_completeness"]["pass"]

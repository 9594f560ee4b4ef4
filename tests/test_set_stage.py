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


def test_the_set_models_give_finite_posteriors_of_held_out_members(run):
    d, _ = run
    table, _ = load_observation_table(d / "obs")
    held = held_out_mask(table, d / "model")
    members = read_members(d / "obs").take(held)
    for directory in (d / "model" / "set", d / "model" / "dynamics" / "set"):
        model = load_model(directory)
        pdf, values = prepare(model, "flat", snapshot=None).evaluate(set_data(model, members))
        assert pdf.shape == (int(held.sum()), 256) and np.isfinite(pdf).all() and np.isfinite(values["mode"]).all()


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

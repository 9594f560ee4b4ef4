"""Set-model files (issue 19.3): ``model.json`` of kind ``"set"`` records the encoder, feature set, target, context
and M-sigma law; a saved model loads back to identical densities, and every corrupted field is refused in one line
naming the file and the key (models/io.py)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from features.definitions import compute_features
from features.sets import FEATURE_SETS
from models.io import MODEL_JSON, load_model, read_description, save_model, write_description
from models.msigma import fit_msigma
from models.prior import TrainingPrior
from models.set_batches import MEMBER_INPUTS, SetData
from models.set_encoder import SetSpec, init_set_params
from models.set_model import (
    TrainedSetModel,
    context_names,
    members_from_arrays,
    raw_context,
    set_log_prob_per_dex,
)
from models.spec import ModelSpec, Standardizer, TrainSpec
from pipeline.errors import InputError
from tests.test_model_files import R_APERTURE, stage_extra, toy_clusters

HEAD = ModelSpec(kind="flow", hidden=(8,), n_bins=4)
GRID = np.linspace(13.4, 15.1, 24)


def toy_members(n: int = 60, seed: int = 0):
    offsets, r, v, m, mass = toy_clusters(n, seed)
    return members_from_arrays(offsets, r, v, m), mass, (offsets, r, v, m)


def make_set_model(feature_set: str = "full", target: str = "mass") -> tuple[TrainedSetModel, dict]:
    """An untrained set model (initial weights moved by N(0, 0.3), so that no symmetry of the initialisation hides a
    parameter that failed to load) of the training stage's shape, and the stage's extras (cylinder, snapshot,
    selection, typicality of the feature set's summary features): files and inputs, not answers. Deterministic."""
    members, mass, (offsets, r, v, m) = toy_members()
    set_spec = SetSpec(inputs=MEMBER_INPUTS[feature_set], phi=(8,), cap=16)
    counts = np.diff(offsets)
    msigma, shift = None, 0.0
    if target == "msigma_residual":
        sigma = np.array([np.std(v[a:b], ddof=1) for a, b in itertools.pairwise(offsets)])
        msigma = fit_msigma(sigma, mass)
        shift = msigma.predict(sigma)
    names = context_names(feature_set, target)
    raw = raw_context(feature_set, target, msigma, SetData.build(members, set_spec.inputs))
    params = init_set_params(HEAD, set_spec, len(names), jax.random.PRNGKey(1))
    noise = np.random.default_rng(2)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a + 0.3 * noise.normal(size=a.shape), np.float32), params)
    model = TrainedSetModel(
        spec=HEAD, set_spec=set_spec, train=TrainSpec(ensemble=1), feature_set=feature_set, target=target,
        msigma=msigma, context_names=names, ctx_scaler=Standardizer.fit(raw) if names else None,
        y_scaler=Standardizer.fit(mass - shift), members=(params,), training_prior=TrainingPrior.estimate(mass),
        data_digest="0" * 64, split={"train_rows": len(mass), "val_rows": 0})
    feats = compute_features(offsets, r, v, m, r_aperture=R_APERTURE)
    x = np.column_stack([feats[name] for name in FEATURE_SETS[feature_set]])
    extra = stage_extra(feature_set, x, counts)
    return model, extra


def build_set_model(directory: Path, feature_set: str = "full", target: str = "mass") -> Path:
    """:func:`make_set_model` written by :func:`models.io.save_model`."""
    model, extra = make_set_model(feature_set, target)
    return save_model(directory, model, extra=extra)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("set-models")
    return {"residual": build_set_model(root / "residual", "full", "msigma_residual"),
            "dynamics": build_set_model(root / "dynamics", "dynamics", "mass")}


@pytest.fixture
def residual_dir(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine["residual"], tmp_path / "set"))


@pytest.fixture
def dynamics_dir(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine["dynamics"], tmp_path / "set"))


def _meta(d: Path) -> dict:
    return json.loads((d / MODEL_JSON).read_text())


@pytest.mark.parametrize("which", ["residual", "dynamics"])
def test_a_saved_set_model_loads_back_to_identical_densities(pristine, which):
    """Everything that shapes a density travels: parameters, encoder, context scaler, target scaler and M-sigma
    law (the residual model's densities are shifted by it), the training prior."""
    directory = pristine[which]
    meta = _meta(directory)
    assert meta["kind"] == "set" and meta["model"]["kind"] == "flow"
    assert meta["set_encoder"]["inputs"] == list(MEMBER_INPUTS[meta["feature_set"]])
    assert meta["features"] == list(FEATURE_SETS[meta["feature_set"]])  # the diagnostics' summary features
    model = load_model(directory)
    assert isinstance(model, TrainedSetModel)
    original, _ = make_set_model(meta["feature_set"], meta["target"]["learned"])
    for name in ("spec", "set_spec", "train", "feature_set", "target", "msigma", "context_names", "ctx_scaler",
                 "y_scaler", "training_prior", "data_digest", "split"):
        assert getattr(model, name) == getattr(original, name), name
    for loaded, written in zip(model.members, original.members, strict=True):
        jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, written)
    members, _, _ = toy_members(25, seed=4)
    density = set_log_prob_per_dex(model, members, GRID)
    assert np.isfinite(density).all()
    np.testing.assert_array_equal(density, set_log_prob_per_dex(original, members, GRID))
    if which == "residual":
        assert model.msigma is not None and model.context_names == ("log10_n_members", "log10_m200c_msigma")
    else:
        assert model.msigma is None and model.ctx_scaler is None and model.context_names == ()


def _set(path: str, value):
    def edit(meta: dict) -> None:
        keys = path.replace("]", "").replace("[", ".").split(".")
        node = meta
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


def _drop_path(path: str):
    def edit(meta: dict) -> None:
        *parents, last = path.split(".")
        node = meta
        for key in parents:
            node = node[key]
        del node[last]
    return edit


def _short_context(meta: dict) -> None:
    meta["context"]["mean"] = meta["context"]["mean"][:-1]


def _mass_with_msigma(meta: dict) -> None:
    meta["target"]["learned"] = "mass"
    meta["context"]["names"], meta["context"]["mean"], meta["context"]["std"] = (
        ["log10_n_members"], meta["context"]["mean"][:1], meta["context"]["std"][:1])


# the residual (full set, two context columns) model: each edit restamped, so only the schema can refuse it
RESIDUAL_CASES = {
    "kind": (_set("kind", "sets"), r"kind: expected one of \['mdn', 'flow', 'mse', 'set'\], got 'sets'"),
    "no set_encoder": (_drop_path("set_encoder"), r"set_encoder is missing$"),
    "no cap": (_drop_path("set_encoder.cap"), r"set_encoder\.cap is missing; retrain the model"),
    "unknown pooling": (_set("set_encoder.pooling", "max"),
                        r"set_encoder: pooling must be one of \['mean', 'moments', 'attention'\], got 'max'"),
    "phi not widths": (_set("set_encoder.phi", [0]), r"set_encoder: phi must be positive layer widths"),
    "inputs of another set": (_set("set_encoder.inputs", ["r_proj", "v_los"]),
                              r"set_encoder\.inputs: expected the member inputs of the 'full' set "
                              r"\['r_proj', 'v_los', 'log10_mstar'\], got \['r_proj', 'v_los'\]"),
    "unknown input": (_set("set_encoder.inputs", ["r_proj", "v_los", "g_r"]), r"set_encoder: inputs must be"),
    "head not a density": (_set("model.kind", "mse"), r"model\.kind: expected the density head of a set model"),
    "feature set without members": (_set("feature_set", "richness"),
                                    r"feature_set: a set model reads the members of one of \['full', 'dynamics'\]"),
    "features not the set's": (_set("features", list(FEATURE_SETS["dynamics"])),
                               r"features: expected the 'full' set in its order"),
    "no feature set": (_drop_path("feature_set"), r"feature_set is missing; retrain the model"),
    "not an ensemble": (_set("training.epistemic", "bayes_by_backprop"),
                        r"training\.epistemic: expected 'ensemble' \(the only method of set models\)"),
    "no learned target": (_drop_path("target.learned"), r"target\.learned is missing; retrain"),
    "unknown learned target": (_set("target.learned", "richness"),
                               r"target\.learned: expected one of \['mass', 'msigma_residual'\], got 'richness'"),
    "target std": (_set("target.std[0]", 0.0), r"target\.std\[0\] must be finite and > 0, got 0"),
    "no msigma": (_drop_path("msigma"), r"msigma is missing$"),
    "msigma pivot": (_set("msigma.pivot", 0.0), r"msigma\.pivot must be finite and > 0, got 0"),
    "msigma slope": (_set("msigma.slope", "steep"), r"msigma\.slope: expected a number"),
    "msigma without mass range": (_drop_path("msigma.mass_range"), r"msigma\.mass_range is missing; retrain"),
    "msigma on a mass model": (_mass_with_msigma, r"msigma is present, but target\.learned is 'mass'"),
    "no context": (_drop_path("context"), r"context is missing$"),
    "context names": (_set("context.names", ["log10_m200c_msigma", "log10_n_members"]),
                      r"context\.names: expected \['log10_n_members', 'log10_m200c_msigma'\] \(the 'full' set, "
                      r"target 'msigma_residual'\)"),
    "context scaler length": (_short_context, r"context\.mean: expected 2 entries \(one per context column\), got 1"),
    "context std": (_set("context.std[1]", -1.0), r"context\.std\[1\] must be finite and > 0, got -1"),
    "context NaN": (_set("context.mean[0]", math.nan), r"context\.mean\[0\] must be finite"),
    "typicality of other features": (_set("typicality.mean", [0.0] * 14), r"typicality\.mean: expected 18 entries"),
}
# the dynamics model (mass, no context columns)
DYNAMICS_CASES = {
    "a scaler without context": (_set("context.mean", [1.0]),
                                 r"context: expected no scaler \(mean, std\) for a model without context columns"),
    "a count in the context": (_set("context.names", ["log10_n_members"]),
                               r"context\.names: expected \[\] \(the 'dynamics' set, target 'mass'\)"),
    "stellar masses read": (_set("set_encoder.inputs", ["r_proj", "v_los", "log10_mstar"]),
                            r"set_encoder\.inputs: expected the member inputs of the 'dynamics' set"),
}


def _refused(directory: Path, edit, message: str) -> None:
    meta = _meta(directory)
    edit(meta)
    write_description(directory, meta)  # a consistent digest: only the schema can refuse it
    for reader in (load_model, read_description):
        with pytest.raises(InputError, match=message) as info:
            reader(directory)
        assert str(info.value).startswith(f"{directory / MODEL_JSON}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("case", list(RESIDUAL_CASES))
def test_a_corrupted_set_description_is_refused_naming_the_key(residual_dir, case):
    _refused(residual_dir, *RESIDUAL_CASES[case])


@pytest.mark.parametrize("case", list(DYNAMICS_CASES))
def test_a_corrupted_dynamics_set_description_is_refused_naming_the_key(dynamics_dir, case):
    _refused(dynamics_dir, *DYNAMICS_CASES[case])


@pytest.mark.parametrize(("edit", "message"), [
    (_set("set_encoder.phi", [16]), r"member-0\.msgpack: parameter shapes do not match the described network|"
                                    r"member-0\.msgpack: parameters do not fit the described network"),
    (_set("set_encoder.pooling", "attention"), r"member-0\.msgpack: parameters do not fit the described network"),
])
def test_an_encoder_the_parameters_do_not_fit_is_refused(residual_dir, edit, message):
    """A plausible encoder (passes the schema) that is not the one trained: the parameter file says so."""
    meta = _meta(residual_dir)
    edit(meta)
    write_description(residual_dir, meta)
    read_description(residual_dir)  # the description alone is plausible
    with pytest.raises(InputError, match=message) as info:
        load_model(residual_dir)
    assert "\n" not in str(info.value)


def test_an_edited_set_description_is_refused_by_its_digest(residual_dir):
    meta = _meta(residual_dir)
    meta["msigma"]["intercept"] += 0.1  # plausible: only the digest can tell
    (residual_dir / MODEL_JSON).write_text(json.dumps(meta, indent=1))
    with pytest.raises(InputError, match=r"content_sha256: the description does not match its digest"):
        load_model(residual_dir)


def test_a_tampered_set_parameter_file_is_refused(residual_dir):
    path = residual_dir / "member-0.msgpack"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(InputError, match=r"member-0\.msgpack: checksum mismatch"):
        load_model(residual_dir)

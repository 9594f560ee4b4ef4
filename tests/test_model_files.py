"""Model files validated as a whole: a tampered or malformed model.json, or a parameter file named outside the model
directory, is refused with one line naming the file and the key (models/io.py)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from clustermass.cli import main
from features.definitions import compute_features
from features.sets import FEATURE_SETS, INPUTS
from models.io import (
    CONTENT_KEY,
    MODEL_JSON,
    content_digest,
    load_model,
    read_description,
    save_model,
    write_description,
)
from models.model import TrainedModel
from models.networks import init_params
from models.prior import TrainingPrior
from models.spec import ModelSpec, Standardizer, TrainSpec
from models.typicality import typicality_stats
from pipeline.cosmology import MDPL2
from pipeline.errors import InputError
from pipeline.snapshot import Snapshot

R_APERTURE = 1.6
SNAPSHOT = Snapshot(box_size=150.0, scale_factor=0.8951, cosmology=MDPL2, name="test-box")


def toy_clusters(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Member lists of ``n`` toy clusters (10-100 members, r_proj [Mpc/h] in the aperture, v_los [km/s] Gaussian of
    a dispersion set by the mass, log10 M* in [9.5, 11.5]) and their log10 M200c [Msun/h]: ragged offsets, r, v,
    log10 M*, masses."""
    rng = np.random.default_rng(seed)
    mass = rng.uniform(13.5, 15.0, n)
    counts = rng.integers(10, 101, n)
    sigma = 500.0 * 10 ** ((mass - 14.0) / 3.0)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    r = rng.uniform(0.01, R_APERTURE, offsets[-1])
    v = rng.normal(0.0, np.repeat(sigma, counts))
    m = rng.uniform(9.5, 11.5, offsets[-1])
    return offsets, r, v, m, mass


def build_model(directory: Path, feature_set: str = "full", kind: str = "flow") -> Path:
    """An untrained (initial weights) model of the training stage's shape: enough to check files and inputs, not
    to answer well. Written by :func:`save_model` with the stage's extras (cylinder, snapshot, typicality)."""
    offsets, r, v, m, mass = toy_clusters()
    feats = compute_features(offsets, r, v, m, r_aperture=R_APERTURE)
    names = FEATURE_SETS[feature_set]
    x = np.column_stack([feats[name] for name in names])
    spec = ModelSpec(kind=kind, hidden=(8,))
    model = TrainedModel(spec, TrainSpec(ensemble=1), tuple(names), Standardizer.fit(x), Standardizer.fit(mass),
                         (init_params(spec, len(names), jax.random.PRNGKey(0)),), TrainingPrior.estimate(mass),
                         "0" * 64, {"train_rows": len(mass), "val_rows": 0})
    return save_model(directory, model, extra=stage_extra(feature_set, x, np.diff(offsets)))


def stage_extra(feature_set: str, x: np.ndarray, counts: np.ndarray) -> dict:
    """The training stage's record of a toy model (:func:`models.stage.train_stage`'s ``extra``): the toy cylinder
    and snapshot, the feature set, its selection, the training clusters' member counts ``counts`` and the
    typicality of its summary features ``x`` (N, F)."""
    cylinder = {"r_aperture": R_APERTURE, "v_cut": 2500.0, "min_members": 5, "log10_mstar_min": 9.5,
                "host_log10_m200c_min": 13.5, "r_limit": None}
    return {"test_hosts_seed": 7919, "observations": {"config": {"cylinder": cylinder},
                                                      "snapshot": SNAPSHOT.to_dict()},
            "feature_set": feature_set, "inputs": INPUTS[feature_set],
            "selection": {"log10_mstar_min": 9.5, "completeness": 1.0, "min_members": 5},
            "training_members": [int(counts.min()), int(counts.max())], "typicality": typicality_stats(x)}


def sky_cluster_files(d: Path, *, z: float = 0.117, ra: float = 150.0, dec: float = 2.0) -> tuple[Path, Path]:
    """(galaxy table, centres) CSV files in ``d`` of one toy cluster (:func:`toy_clusters`, seed 3) seen on the sky
    at redshift ``z`` and (``ra``, ``dec``) [deg]: what ``infer --members --clusters`` reads."""
    from features.sky import C_KMS, comoving_distance
    from pipeline.cosmology import MDPL2

    _, r, v, m, _ = toy_clusters(1, seed=3)
    rng = np.random.default_rng(0)
    theta, phi = r / comoving_distance(z, MDPL2), rng.uniform(0, 2 * np.pi, len(r))
    dec_g = dec + np.degrees(theta * np.sin(phi))
    ra_g = ra + np.degrees(theta * np.cos(phi)) / np.cos(np.radians(dec))
    galaxies = d / "g.csv"
    np.savetxt(galaxies, np.column_stack([ra_g, dec_g, z + v * (1 + z) / C_KMS, m]), delimiter=",",
               header="ra,dec,z,log10_mstar", comments="")
    centres = d / "c.csv"
    centres.write_text(f"id,ra,dec,z\n1,{ra},{dec},{z}\n")
    return galaxies, centres


def build_run_models(root: Path) -> Path:
    """A run's model directory: ``flow/`` (full) and ``dynamics/flow/``."""
    build_model(root / "flow", "full")
    build_model(root / "dynamics" / "flow", "dynamics")
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("model") / "flow")


@pytest.fixture
def model_dir(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "flow"))


def _meta(d: Path) -> dict:
    return json.loads((d / MODEL_JSON).read_text())


def test_a_saved_model_carries_its_digest_and_loads(model_dir):
    meta = _meta(model_dir)
    assert meta[CONTENT_KEY] == content_digest(meta)
    assert meta["feature_scaler"]["features"] == meta["features"]
    model = load_model(model_dir)
    assert model.feature_names == FEATURE_SETS["full"]
    assert read_description(model_dir)["feature_set"] == "full"


def test_the_digest_ignores_wall_clock_timings_only():
    meta = {"a": 1, "members": [{"history": {"seconds": 1.5, "val_loss": [0.1]}}]}
    slower = {"a": 1, "members": [{"history": {"seconds": 9.0, "val_loss": [0.1]}}]}
    assert content_digest(meta) == content_digest(slower)  # as pipeline.provenance.model_digest
    assert content_digest(meta) != content_digest({**meta, "a": 2})
    assert content_digest(meta) == content_digest({**meta, CONTENT_KEY: "anything"})


def _parent(meta: dict, path: str) -> tuple:
    """The container holding a dotted path with [i] indices (``members[0].file``) and the last key."""
    keys = path.replace("]", "").replace("[", ".").split(".")
    node = meta
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node, (int(keys[-1]) if isinstance(node, list) else keys[-1])


def _set(path: str, value):
    """An edit of model.json: set the value at ``path``."""
    def edit(meta: dict) -> None:
        node, key = _parent(meta, path)
        node[key] = value
    return edit


def _drop(path: str):
    """An edit of model.json: remove the key at ``path``."""
    def edit(meta: dict) -> None:
        node, key = _parent(meta, path)
        del node[key]
    return edit


def _flat_prior(meta: dict) -> None:
    """A different training prior, still normalised: flat over the same grid."""
    grid = meta["training_prior"]["grid"]
    meta["training_prior"]["density"] = [1.0 / (grid[-1] - grid[0])] * len(grid)


def _reorder_features(meta: dict) -> None:
    meta["features"][0], meta["features"][2] = meta["features"][2], meta["features"][0]


def _scale_prior(meta: dict) -> None:
    meta["training_prior"]["density"] = [1.3 * d for d in meta["training_prior"]["density"]]


def _negative_prior(meta: dict) -> None:
    meta["training_prior"]["density"][3] = -0.5


def _shuffled_grid(meta: dict) -> None:
    grid = meta["training_prior"]["grid"]
    grid[5], grid[6] = grid[6], grid[5]


def _scaler_length(meta: dict) -> None:
    meta["feature_scaler"]["mean"] = meta["feature_scaler"]["mean"][:-1]


def _duplicate_feature(meta: dict) -> None:
    meta["features"][4] = meta["features"][1]
    meta["feature_scaler"]["features"] = meta["features"]


def _unknown_feature(meta: dict) -> None:
    meta["features"][2] = "sigma_v_magic"
    meta["feature_scaler"]["features"] = meta["features"]


def _precision_shape(meta: dict) -> None:
    meta["typicality"]["precision"] = meta["typicality"]["precision"][:3]


# Each case: an edit, then restamped with a fresh digest so that only the schema check can refuse it (the digest
# refusing un-restamped edits is tested separately). Expected: the key named in the one error line.
SCHEMA_CASES = {
    "zero scaler std": (_set("feature_scaler.std[3]", 0.0), r"feature_scaler\.std\[3\] must be finite and > 0, got 0$"),
    "NaN scaler std": (_set("feature_scaler.std[3]", math.nan),
                       r"feature_scaler\.std\[3\] must be finite and > 0, got nan"),
    "negative scaler std": (_set("feature_scaler.std[0]", -1.0), r"feature_scaler\.std\[0\] must be finite and > 0"),
    "infinite scaler mean": (_set("feature_scaler.mean[1]", math.inf), r"feature_scaler\.mean\[1\] must be finite"),
    "string in scaler": (_set("feature_scaler.mean[1]", "12"), r"feature_scaler\.mean\[1\]: expected a number"),
    "scaler length": (_scaler_length, r"feature_scaler\.mean: expected 18 entries \(one per feature\), got 17"),
    "reordered features": (_reorder_features, r"feature_scaler\.features: the scaler's columns .* \(reordered\?\)"),
    "unknown feature": (_unknown_feature, r"features\[2\] is an unknown feature 'sigma_v_magic'"),
    "duplicate feature": (_duplicate_feature, r"features\[4\] repeats features\[1\]"),
    "features not a list": (_set("features", "n_members"), r"features: expected a non-empty list"),
    "unknown feature set": (_set("feature_set", "everything"), r"feature_set: expected one of"),
    # missing keys are refused, never defaulted (a model written without them would be read as something else)
    "no feature set": (_drop("feature_set"), r"feature_set is missing; retrain the model"),
    "no epistemic method": (_drop("training.epistemic"), r"training\.epistemic is missing; retrain the model"),
    "no ensemble size": (_drop("training.ensemble"), r"training\.ensemble is missing; retrain the model"),
    "no hidden widths": (_drop("model.hidden"), r"model\.hidden is missing; retrain the model"),
    "prior not normalised": (_scale_prior, r"training_prior\.density must integrate to 1 over its grid .* got 1\.3"),
    "negative prior": (_negative_prior, r"training_prior\.density\[3\] must be finite and >= 0, got -0\.5"),
    "NaN prior": (_set("training_prior.density[7]", math.nan), r"training_prior\.density\[7\] must be finite"),
    "prior grid not increasing": (_shuffled_grid, r"training_prior\.grid\[6\]: the grid must increase"),
    "prior bandwidth": (_set("training_prior.bandwidth", 0.0), r"training_prior\.bandwidth must be finite and > 0"),
    "target std": (_set("target.std[0]", 0.0), r"target\.std\[0\] must be finite and > 0, got 0"),
    "target name": (_set("target.name", "log10_m500c"), r"target\.name: expected 'log10_m200c_true'"),
    "member without file": (_drop("members[0].file"), r"members\[0\]\.file is missing"),
    "member without sha256": (_drop("members[0].sha256"), r"members\[0\]\.sha256 is missing"),
    "member sha256 not hex": (_set("members[0].sha256", "abc"), r"members\[0\]\.sha256: expected 64 lower-case hex"),
    "member path traversal": (_set("members[0].file", "../../../etc/passwd"),
                              r"members\[0\]\.file: expected a file name inside the model directory"),
    "member absolute path": (_set("members[0].file", "/etc/passwd"),
                             r"members\[0\]\.file: expected a file name inside the model directory"),
    "member subdirectory": (_set("members[0].file", "sub/member-0.msgpack"),
                            r"members\[0\]\.file: expected a file name inside the model directory"),
    "member dot-dot": (_set("members[0].file", ".."), r"members\[0\]\.file: expected a file name inside"),
    "members empty": (_set("members", []), r"members: expected a non-empty list of parameter files"),
    "member not an object": (_set("members[0]", "member-0.msgpack"), r"members\[0\]: expected an object"),
    "model spec": (_set("model.hidden", [0]), r"model: hidden must be positive layer widths"),
    "model kind": (_set("model.kind", "mdn"), r"model\.kind: expected the model's kind 'flow', got 'mdn'"),
    "training spec": (_set("training.batch_size_typo", 3), r"training: .*unexpected keyword argument"),
    "kind": (_set("kind", "gp"), r"kind: expected one of \['mdn', 'flow', 'mse', 'set'\]"),
    "format version": (_set("format_version", 2), r"format_version: 2 is not supported"),
    "typicality shape": (_precision_shape, r"typicality\.precision: expected 18 rows of 18 numbers"),
    "training members": (_set("training_members", [50, 10]), r"training_members: expected fewest <= most"),
    "cylinder aperture": (_set("observations.config.cylinder.r_aperture", -1.0),
                          r"observations\.config\.cylinder\.r_aperture must be finite and > 0, got -1"),
    "snapshot": (_set("observations.snapshot.box_size", "big"), r"observations\.snapshot"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_a_malformed_description_is_refused_naming_the_key(model_dir, case):
    edit, message = SCHEMA_CASES[case]
    meta = _meta(model_dir)
    edit(meta)
    write_description(model_dir, meta)  # a consistent digest: only the schema can refuse it
    for reader in (load_model, read_description):
        with pytest.raises(InputError, match=message) as info:
            reader(model_dir)
        assert str(info.value).startswith(f"{model_dir / MODEL_JSON}: ") and "\n" not in str(info.value)


# Edits the schema cannot see (plausible values): only the content digest refuses them.
DIGEST_CASES = {
    "edited scaler mean": _set("feature_scaler.mean[2]", 700.0),
    "edited prior, still normalised": _flat_prior,
    "edited cylinder": _set("observations.config.cylinder.r_aperture", 2.0),
    "edited training range": _set("training_members", [3, 5000]),
    "reordered features and scaler labels": lambda meta: (
        _reorder_features(meta), meta["feature_scaler"].update(features=meta["features"])),
}


@pytest.mark.parametrize("case", list(DIGEST_CASES))
def test_an_edited_description_is_refused_by_its_digest(model_dir, case):
    meta = _meta(model_dir)
    DIGEST_CASES[case](meta)
    (model_dir / MODEL_JSON).write_text(json.dumps(meta, indent=1))  # the digest left as it was
    for reader in (load_model, read_description):
        with pytest.raises(InputError, match=r"model\.json: content_sha256: the description does not match its "
                                             r"digest: model\.json was edited"):
            reader(model_dir)


@pytest.mark.parametrize("value", ["not-a-digest", 12])
def test_a_malformed_digest_is_refused(model_dir, value):
    meta = _meta(model_dir)
    meta[CONTENT_KEY] = value
    (model_dir / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(InputError, match="content_sha256: expected 64 lower-case hex digits"):
        read_description(model_dir)


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "expected a JSON object, found a list"),
    ('"model"', "expected a JSON object, found a string"),
    ("{not json", "is not valid JSON"),
])
def test_a_description_that_is_not_an_object_is_refused(model_dir, text, message):
    (model_dir / MODEL_JSON).write_text(text)
    with pytest.raises(InputError, match=message):
        read_description(model_dir)
    with pytest.raises(InputError, match=message):
        load_model(model_dir)


def test_a_parameter_file_linking_outside_the_directory_is_refused(model_dir, tmp_path):
    outside = tmp_path / "elsewhere.msgpack"
    shutil.move(model_dir / "member-0.msgpack", outside)
    (model_dir / "member-0.msgpack").symlink_to(outside)  # same bytes, same SHA-256: only the link is wrong
    with pytest.raises(InputError, match=r"members\[0\]\.file: 'member-0\.msgpack' leads outside the model "
                                         r"directory"):
        load_model(model_dir)
    # a link that stays inside the directory is fine
    (model_dir / "member-0.msgpack").unlink()
    shutil.move(outside, model_dir / "real-0.msgpack")
    (model_dir / "member-0.msgpack").symlink_to("real-0.msgpack")
    assert load_model(model_dir).feature_names == FEATURE_SETS["full"]


def test_a_traversing_member_name_is_never_opened(model_dir, monkeypatch):
    meta = _meta(model_dir)
    meta["members"][0]["file"] = "../../../etc/passwd"
    write_description(model_dir, meta)
    opened: list[str] = []
    real_read = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(str(self)) or real_read(self))
    with pytest.raises(InputError, match="expected a file name inside the model directory"):
        load_model(model_dir)
    assert not any("passwd" in p for p in opened)


@pytest.mark.parametrize("edited", [False, True], ids=["as-trained", "edited"])
def test_a_description_without_its_digest_is_refused(model_dir, edited):
    """Deleting the key must not switch the tamper check off: refused in one line naming the file, retrain."""
    meta = _meta(model_dir)
    del meta[CONTENT_KEY]
    if edited:
        meta["feature_scaler"]["std"][0] *= 2
    (model_dir / MODEL_JSON).write_text(json.dumps(meta))
    message = rf"^{re.escape(str(model_dir / MODEL_JSON))}: content_sha256 is missing: .*; retrain the model"
    for read in (load_model, read_description):
        with pytest.raises(InputError, match=message):
            read(model_dir)


def test_a_model_of_unknown_feature_set_is_refused_not_guessed(tmp_path, capsys):
    """A description with neither feature_set nor observations passes the schema (a bare save_model), but query and
    the catalog stage need the feature set: refused in one line, never guessed from the feature names."""
    from catalogs.stage import catalog_stage

    root = build_run_models(tmp_path / "model")
    meta = _meta(root / "flow")
    del meta["feature_set"], meta["observations"]
    write_description(root / "flow", meta)
    members = tmp_path / "m.csv"
    _, r, v, m, _ = toy_clusters(1, seed=3)
    np.savetxt(members, np.column_stack([r, v, m]), delimiter=",", header="r_proj,v_los,log10_mstar", comments="")
    code = main(["query", "--model", str(root), "--members", str(members)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"error: {root / 'flow' / MODEL_JSON}: feature_set is missing: not a model of `clustermass train` " \
                  "(retrain it)\n"
    offsets, r, v, m, mass = toy_clusters(4, seed=5)
    table = pd.DataFrame(compute_features(offsets, r, v, m, r_aperture=R_APERTURE))
    table["cluster_id"], table["los"], table["log10_m200c_true"] = np.arange(4), 0, mass
    with pytest.raises(InputError, match=r"flow/model\.json: feature_set is missing"):
        catalog_stage(table, root, tmp_path / "out", prior="flat", snapshot=SNAPSHOT)


@pytest.mark.parametrize("key", ["method", "mass_range", "slope"])
def test_an_msigma_fit_missing_a_key_is_refused(tmp_path, key):
    from models.msigma import fit_msigma
    from models.stage import load_msigma

    rng = np.random.default_rng(1)
    logm = rng.uniform(14.0, 15.0, 50)
    fit = fit_msigma(500.0 * 10 ** ((logm - 14.0) / 3.0), logm).to_dict()
    path = tmp_path / "msigma.json"
    path.write_text(json.dumps({**fit, "pure": fit}))
    assert load_msigma(path) == load_msigma(path, pure=True) == fit_msigma(500.0 * 10 ** ((logm - 14.0) / 3.0), logm)
    for pure, document in ((False, {**{k: v for k, v in fit.items() if k != key}, "pure": fit}),
                           (True, {**fit, "pure": {k: v for k, v in fit.items() if k != key}})):
        path.write_text(json.dumps(document))
        with pytest.raises(InputError, match=rf"msigma\.json: {'pure.' if pure else ''}{key} is missing: expected "
                                             r"the M-sigma fit of `clustermass train` \(retrain\)$"):
            load_msigma(path, pure=pure)


def test_query_refuses_a_tampered_model_in_one_line(tmp_path, capsys):
    root = build_run_models(tmp_path / "model")
    members = tmp_path / "m.csv"
    _, r, v, m, _ = toy_clusters(1, seed=3)
    np.savetxt(members, np.column_stack([r, v, m]), delimiter=",", header="r_proj,v_los,log10_mstar", comments="")
    meta = _meta(root / "flow")
    meta["feature_scaler"]["std"][3] = 0.0
    write_description(root / "flow", meta)
    code = main(["query", "--model", str(root), "--members", str(members)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == f"error: {root / 'flow' / MODEL_JSON}: feature_scaler.std[3] must be finite and > 0, got 0\n"
    # a model without its digest is refused the same way
    meta["feature_scaler"]["std"][3] = 1.0
    write_description(root / "flow", meta)
    meta = _meta(root / "dynamics" / "flow")
    del meta[CONTENT_KEY]
    (root / "dynamics" / "flow" / MODEL_JSON).write_text(json.dumps(meta))
    code = main(["query", "--model", str(root), "--members", str(members), "--inputs", "dynamics", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {root / 'dynamics' / 'flow' / MODEL_JSON}: content_sha256 is missing") \
        and "retrain" in err


def test_a_full_disk_while_saving_leaves_the_previous_model_and_no_partial(model_dir, monkeypatch):
    import errno

    import models.io
    from pipeline.errors import OutputError

    before = sorted(p.name for p in model_dir.iterdir())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models.io, "write_description", full)
    with pytest.raises(OutputError, match="no space left on device"):
        build_model(model_dir)
    assert sorted(p.name for p in model_dir.iterdir()) == before  # the previous model untouched
    assert not [p for p in model_dir.parent.iterdir() if p.name.endswith(".partial")]
    monkeypatch.undo()
    load_model(model_dir)

"""Model files: parameters as flax msgpack (no pickle), everything else as JSON.

``DIR/model.json`` — format version, kind, architecture and training configuration, feature names and order,
feature and target scalers, the interim prior p_train on its grid, package versions, a digest of the training
data, the train/validation split and per-member histories, and the SHA-256 of every parameter file.
``DIR/member-K.msgpack`` — the parameters of ensemble member K; for ``epistemic = "bayes_by_backprop"`` the one
member is the variational pytree ``{"loc": params, "rho": params}`` (:mod:`models.bayes`), and ``model.json``'s
``"epistemic"`` records the method, the prior scale and the number of weight draws at prediction.
A set model (``kind = "set"``, :class:`models.set_model.TrainedSetModel`) stores instead of the feature scaler:
``set_encoder`` (its :class:`~models.set_encoder.SetSpec`: member inputs, phi widths, pooling, attention heads and
queries, the member cap), ``feature_set`` (``full`` or ``dynamics``: which members it reads), ``context`` (the
names of its context columns and their scaler), ``target.learned`` (``"mass"`` or ``"msigma_residual"``, whose
scaler ``target`` holds) and for the residual ``msigma``, the M-sigma law its densities are shifted by; ``model``
is its trunk and density head (``kind`` flow or mdn), ``features`` its feature set's summary features, which only
the diagnostics (typicality) read. :func:`load_model` returns either kind of model.
Loading checks all of it and refuses a mismatched or corrupted file with one clear error naming the file and the
key (:func:`check_description`): types and shapes; finite scalers with std > 0, one entry per feature; known
feature names without repeats, in the scaler's order (``feature_scaler.features``); a training prior that is finite,
non-negative and normalised on its increasing grid; parameter files named inside the model directory (no path
separators, no ``..``, no links leading out) whose SHA-256 match; and ``content_sha256``, the SHA-256 of
``model.json``'s own canonical JSON (:func:`content_digest`), so that an edited description is refused too; a
description without it is refused (deleting the key would otherwise switch the check off). Writing is atomic: the
directory appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from features.definitions import FEATURE_NAMES
from features.sets import FEATURE_SETS
from models.bayes import init_variational
from models.model import TARGET, TARGET_UNIT, TrainedModel
from models.msigma import MSigmaFit
from models.networks import init_params
from models.prior import TrainingPrior
from models.set_batches import MEMBER_INPUTS
from models.set_encoder import SetSpec, init_set_params
from models.set_model import SET_FEATURE_SETS, SET_KIND, TARGETS, TrainedSetModel, context_names
from models.spec import MODEL_KINDS, History, ModelSpec, Standardizer, TrainSpec
from pipeline.errors import ClusterMassError, InputError
from pipeline.files import atomic_output
from pipeline.provenance import _drop_timings as drop_timings
from pipeline.snapshot import Snapshot

FORMAT = "clustermass-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
#: key of model.json's digest of its own content (:func:`content_digest`)
CONTENT_KEY = "content_sha256"
#: how far the training prior's integral over its grid may be from 1
PRIOR_NORM_TOLERANCE = 1e-3
_SHA256 = re.compile(r"[0-9a-f]{64}")


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("clustermass", "jax", "jaxlib", "flax", "optax", "tfp-nightly", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def save_model(directory: str | os.PathLike[str], model: TrainedModel | TrainedSetModel, *,
               histories: Sequence[History] = (), extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a feature model or a set model) to ``directory`` (replaced if it exists)."""
    target = Path(directory)
    with atomic_output(target, directory=True) as tmp:  # removed on any failure; a full disk names the directory
        _write_model(tmp, model, histories=histories, extra=extra)
    return target


def _write_model(tmp: Path, model: TrainedModel | TrainedSetModel, *, histories: Sequence[History],
                 extra: dict[str, Any] | None) -> None:
    """The member files and model.json of ``model`` in the (temporary) directory ``tmp``."""
    members = []
    for k, params in enumerate(model.members):
        blob = serialization.to_bytes(jax.device_get(params))
        name = f"member-{k}.msgpack"
        (tmp / name).write_bytes(blob)
        members.append({"file": name, "sha256": hashlib.sha256(blob).hexdigest(), "seed": model.train.seed + 1000 * k,
                        "history": histories[k].to_dict() if k < len(histories) else None})
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind if isinstance(model, TrainedSetModel) else model.spec.kind,
        "model": model.spec.to_dict(),
        "training": model.train.to_dict(),
        "features": list(model.feature_names),
        **(_set_description(model) if isinstance(model, TrainedSetModel) else
           {"feature_scaler": {"features": list(model.feature_names), **model.x_scaler.to_dict()},
            "target": {"name": TARGET, "unit": TARGET_UNIT, **model.y_scaler.to_dict()}}),
        "training_prior": model.training_prior.to_dict(),
        "training_data_sha256": model.data_digest,
        "split": model.split,
        "members": members,
        "epistemic": epistemic_description(model.train),
        "versions": package_versions(),
        **(extra or {}),
    }
    write_description(tmp, description)


def _set_description(model: TrainedSetModel) -> dict[str, Any]:
    """What a set model adds to ``model.json`` (module docstring): its encoder, feature set, target and context."""
    context: dict[str, Any] = {"names": list(model.context_names)}
    if model.ctx_scaler is not None:
        context |= model.ctx_scaler.to_dict()
    out = {"set_encoder": model.set_spec.to_dict(), "feature_set": model.feature_set, "context": context,
           "target": {"name": TARGET, "unit": TARGET_UNIT, "learned": model.target, **model.y_scaler.to_dict()}}
    if model.msigma is not None:
        out["msigma"] = {"feature": "members' ddof-1 line-of-sight velocity dispersion",
                         "unit": {"sigma_v": "km/s", "M200c": "Msun/h"}, **model.msigma.to_dict()}
    return out


def epistemic_description(train: TrainSpec) -> dict[str, Any]:
    """How the model represents weight uncertainty, for ``model.json`` (the values are also in ``"training"``)."""
    out: dict[str, Any] = {"method": train.epistemic}
    if train.epistemic == "bayes_by_backprop":
        out |= {"prior_scale": train.prior_scale, "weight_draws": train.weight_draws,
                "posterior_init_std": train.posterior_init_std,
                "member": "variational {loc, rho}: weight ~ N(loc, softplus(rho)^2)"}
    elif train.epistemic == "mc_dropout":
        out |= {"mc_samples": train.mc_samples}
    return out


def parameter_template(spec: ModelSpec, train: TrainSpec, n_features: int) -> Any:
    """The pytree a member file is read into: network parameters, or for ``bayes_by_backprop`` the variational
    ``{"loc", "rho"}`` of :func:`models.bayes.init_variational`."""
    key = jax.random.PRNGKey(0)
    if train.epistemic == "bayes_by_backprop":
        return init_variational(spec, n_features, key, init_std=train.posterior_init_std)
    return init_params(spec, n_features, key)


def content_digest(description: Mapping[str, Any]) -> str:
    """SHA-256 of a model description's canonical JSON (sorted keys, no whitespace), without its own
    :data:`CONTENT_KEY` and without wall-clock timings (``seconds``: not part of a model's identity, as in
    :func:`pipeline.provenance.model_digest`). Integrity, not authenticity: it refuses edited or damaged files,
    not someone who recomputes it."""
    body = {k: v for k, v in description.items() if k != CONTENT_KEY}
    canonical = json.dumps(drop_timings(json.loads(json.dumps(body))), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_description(directory: str | os.PathLike[str], description: Mapping[str, Any]) -> Path:
    """Write ``directory/model.json`` with a fresh :data:`CONTENT_KEY` (for :func:`save_model`, and for deliberate
    edits of a model's description, e.g. in tests: a hand edit without it is refused on loading)."""
    body = {k: v for k, v in description.items() if k != CONTENT_KEY}
    path = Path(directory) / MODEL_JSON
    path.write_text(json.dumps({**body, CONTENT_KEY: content_digest(body)}, indent=1) + "\n")
    return path


def _read_json(directory: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    d = Path(directory)
    meta_path = d / MODEL_JSON
    if not meta_path.is_file():
        raise InputError(d, f"not a clustermass model directory (no {MODEL_JSON})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(meta_path, f"is not valid JSON ({exc}); corrupted?") from None
    if not isinstance(meta, dict):
        raise InputError(meta_path, f"expected a JSON object, found {_type(meta)}")
    return meta_path, meta


def _verify_digest(meta_path: Path, meta: Mapping[str, Any]) -> None:
    if CONTENT_KEY not in meta:
        raise InputError(meta_path, f"{CONTENT_KEY} is missing: the description cannot be checked against edits; "
                                    "retrain the model (`clustermass train`)")
    stored = meta[CONTENT_KEY]
    if not isinstance(stored, str) or not _SHA256.fullmatch(stored):
        raise InputError(meta_path, f"{CONTENT_KEY}: expected 64 lower-case hex digits, got {stored!r}")
    if stored != content_digest(meta):
        raise InputError(meta_path, f"{CONTENT_KEY}: the description does not match its digest: model.json was "
                                    "edited or damaged after training; retrain (or restore the file)")


def read_description(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a model directory, checked as a whole (:func:`check_description`) and against
    its digest (:data:`CONTENT_KEY`); the parameter files are checked by :func:`load_model`."""
    meta_path, meta = _read_json(directory)
    check_description(meta, meta_path)
    _verify_digest(meta_path, meta)
    return meta


def load_model(directory: str | os.PathLike[str], *, features: Sequence[str] | None = None
               ) -> TrainedModel | TrainedSetModel:
    """Read a model written by :func:`save_model`: a :class:`~models.set_model.TrainedSetModel` for ``kind``
    ``"set"``, else a :class:`~models.model.TrainedModel`. ``features``: the caller's feature names, which must
    match (a set model's are its feature set's summary features, which only its diagnostics read).

    Checks, in order, each failure one line naming the file and the key: the description's schema
    (:func:`check_description`), the caller's features, every parameter file (inside the directory, SHA-256,
    structure and shapes), then the description's own digest (last, so that the most specific problem is named)."""
    d = Path(directory)
    meta_path, meta = _read_json(d)
    check_description(meta, meta_path)
    spec = ModelSpec.from_dict(meta["model"])
    train = TrainSpec(**meta["training"])
    names = tuple(meta["features"])
    prior = TrainingPrior.from_dict(meta["training_prior"])
    if features is not None and tuple(features) != names:
        missing = [f for f in names if f not in features]
        extra = [f for f in features if f not in names]
        detail = f"missing {missing}, unexpected {extra}" if missing or extra else "same names, different order"
        raise InputError(d, f"features do not match the model's ({detail}); expected {list(names)}")
    y_scaler = Standardizer.from_dict(meta["target"])
    if meta["kind"] == SET_KIND:
        set_spec = SetSpec.from_dict(meta["set_encoder"])
        context = meta["context"]
        names_ctx = tuple(context["names"])
        template = init_set_params(spec, set_spec, len(names_ctx), jax.random.PRNGKey(0))
        members = _read_members(d, meta_path, meta, template)
        _verify_digest(meta_path, meta)
        learned = meta["target"]["learned"]
        return TrainedSetModel(
            spec=spec, set_spec=set_spec, train=train, feature_set=str(meta["feature_set"]), target=learned,
            msigma=MSigmaFit.from_dict(meta["msigma"]) if learned == "msigma_residual" else None,
            context_names=names_ctx, ctx_scaler=Standardizer.from_dict(context) if names_ctx else None,
            y_scaler=y_scaler, members=members, training_prior=prior,
            data_digest=str(meta.get("training_data_sha256", "")), split=dict(meta.get("split", {})))
    x_scaler = Standardizer.from_dict(meta["feature_scaler"])
    members = _read_members(d, meta_path, meta, parameter_template(spec, train, len(names)))
    _verify_digest(meta_path, meta)
    return TrainedModel(spec, train, names, x_scaler, y_scaler, members, prior,
                        str(meta.get("training_data_sha256", "")), dict(meta.get("split", {})))


def _read_members(d: Path, meta_path: Path, meta: Mapping[str, Any], template: Any) -> tuple[Any, ...]:
    """Every parameter file of ``meta["members"]``: inside the directory, its SHA-256, read into ``template``'s
    structure with the same shapes."""
    members = []
    for k, info in enumerate(meta["members"]):
        path = member_path(d, info["file"], meta_path, f"members[{k}].file")
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != info["sha256"]:
            raise InputError(path, "checksum mismatch: the parameter file is corrupted or was modified")
        try:
            params = serialization.from_bytes(template, blob)
        except Exception as exc:  # flax raises several types for wrong structure / shapes
            raise InputError(path, f"parameters do not fit the described network ({exc})") from None
        shapes_ok = jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: np.shape(a) == np.shape(b),
                                                                  template, params))
        if not shapes_ok:
            raise InputError(path, "parameter shapes do not match the described network")
        members.append(params)
    return tuple(members)


_PLAIN_NAME = "expected a file name inside the model directory (no path separators, no '..', not absolute)"


def _plain_name(name: Any) -> bool:
    """A bare file name: no directory part, not '.' or '..', not absolute, no NUL."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and not os.path.isabs(name))


def member_path(directory: Path, name: Any, meta_path: Path, key: str) -> Path:
    """The parameter file ``name`` of a model directory: a plain file name (no path separator, no ``..``, not
    absolute) of an existing regular file whose real path lies in the directory (a link may not lead out)."""
    if not _plain_name(name):
        raise InputError(meta_path, f"{key}: {_PLAIN_NAME}, got {name!r}")
    path = directory / name
    root = directory.resolve()
    real = path.resolve()
    if real.parent != root:
        raise InputError(meta_path, f"{key}: {name!r} leads outside the model directory (to {real}); refused")
    if not real.is_file():
        raise InputError(path, "missing parameter file")
    return path


# -- the schema of model.json ------------------------------------------------------------------------------------
def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


class _Check:
    """Raises one-line errors ``<model.json>: <key>: <what was expected>, got <what was found>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> InputError:
        sep = " " if message.startswith(("must ", "is ", "repeats ")) else ": "
        return InputError(self.path, f"{key}{sep}{message}")

    def obj(self, parent: Mapping[str, Any], key: str, where: str | None = None) -> dict[str, Any]:
        where = where or key
        if key not in parent:
            raise self.fail(where, "is missing")
        value = parent[key]
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {_type(value)}")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {_type(value)} {value!r}")
        return float(value)

    def integer(self, value: Any, key: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def numbers(self, value: Any, key: str, length: int | None = None, *, positive: bool = False,
                non_negative: bool = False, minimum_length: int = 1, per: str = "feature") -> np.ndarray:
        """A list of finite numbers (of ``length``, one ``per`` something; > 0 or >= 0 where asked)."""
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of numbers, got {_type(value)}")
        if length is not None and len(value) != length:
            raise self.fail(key, f"expected {length} entries (one per {per}), got {len(value)}")
        if len(value) < minimum_length:
            raise self.fail(key, f"expected at least {minimum_length} entries, got {len(value)}")
        for i, v in enumerate(value):
            x = self.number(v, f"{key}[{i}]")
            if positive and not (math.isfinite(x) and x > 0):
                raise self.fail(f"{key}[{i}]", f"must be finite and > 0, got {x:g}")
            if non_negative and not (math.isfinite(x) and x >= 0):
                raise self.fail(f"{key}[{i}]", f"must be finite and >= 0, got {x:g}")
            if not math.isfinite(x):
                raise self.fail(f"{key}[{i}]", f"must be finite, got {x:g}")
        return np.asarray(value, dtype=np.float64)


def model_feature_set(description: Mapping[str, Any], directory: str | os.PathLike[str]) -> str:
    """The feature set a model of the training stage was trained on (``model.json``'s ``feature_set``, checked by
    :func:`check_description`); a description without one is not the training stage's: refused in one line."""
    if "feature_set" not in description:
        raise InputError(Path(directory) / MODEL_JSON, "feature_set is missing: not a model of `clustermass train` "
                                                       "(retrain it)")
    return str(description["feature_set"])


def _pipeline_model(meta: Mapping[str, Any]) -> bool:
    """Written by the training stage (it records the feature set and the observations), or a set model (whose
    feature set says which members it reads): its features must be the package's own. A bare :func:`save_model`
    of other features is checked against the caller's ``features``."""
    return "feature_set" in meta or "observations" in meta or meta.get("kind") == SET_KIND


def check_description(meta: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Validate a parsed ``model.json`` as a whole; raise one :class:`InputError` naming ``path`` and the key.

    Format and version; ``kind``, ``model`` and ``training`` (every field of the specs present — a missing one is
    refused, never defaulted — and the specs' own checks); ``features`` (non-empty distinct strings; for a model of
    the training stage, which records ``observations`` or ``feature_set``, a ``feature_set`` is required, the
    features are known ones of :data:`features.definitions.FEATURE_NAMES` and for ``dynamics``/``richness`` exactly
    their set in order); ``feature_scaler`` (``mean`` and ``std``, one
    finite entry per feature, std > 0, and its ``features`` labels equal to ``features``); ``target`` (the target's
    name, one finite mean and std > 0); ``training_prior`` (a finite increasing grid [log10 Msun/h], a finite,
    non-negative density [per dex] integrating to 1 within :data:`PRIOR_NORM_TOLERANCE`, bandwidth > 0);
    ``members`` (file names inside the directory, SHA-256 hex digests); and where present ``epistemic`` (an
    object), ``training_members``, ``typicality``, ``observations`` (cylinder and snapshot) and
    ``selection``.
    """
    c = _Check(Path(path))
    if meta.get("format") != FORMAT:
        raise c.fail("format", f"expected '{FORMAT}', got {meta.get('format')!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise c.fail("format_version", f"{meta.get('format_version')!r} is not supported (expected "
                                       f"{FORMAT_VERSION}); retrain or upgrade clustermass")
    kind = meta.get("kind")
    if kind not in MODEL_KINDS:
        raise c.fail("kind", f"expected one of {list(MODEL_KINDS)}, got {kind!r}")
    model = c.obj(meta, "model")
    training = c.obj(meta, "training")
    for where, section, spec_class in (("model", model, ModelSpec), ("training", training, TrainSpec)):
        missing = [f.name for f in fields(spec_class) if f.init and f.name not in section]
        if missing:  # never the spec's default: the model was trained with a value save_model wrote
            raise c.fail(f"{where}.{missing[0]}", "is missing; retrain the model (`clustermass train`)")
    try:
        spec = ModelSpec.from_dict(model)
    except (ClusterMassError, TypeError, ValueError) as exc:
        raise c.fail("model", str(exc).removeprefix("model: ")) from None
    if kind == SET_KIND and not spec.is_density:
        raise c.fail("model.kind", f"expected the density head of a set model ('flow' or 'mdn'), got {spec.kind!r}")
    if kind != SET_KIND and spec.kind != kind:
        raise c.fail("model.kind", f"expected the model's kind {kind!r}, got {spec.kind!r}")
    try:
        TrainSpec(**training)
    except (ClusterMassError, TypeError, ValueError) as exc:
        raise c.fail("training", str(exc).removeprefix("training: ")) from None
    names = _check_features(c, meta)
    n = len(names)
    target = c.obj(meta, "target")
    if kind == SET_KIND:
        _check_set(c, meta, training)
    else:
        scaler = c.obj(meta, "feature_scaler")
        c.numbers(scaler.get("mean"), "feature_scaler.mean", n)
        c.numbers(scaler.get("std"), "feature_scaler.std", n, positive=True)
        if "features" in scaler and scaler["features"] != list(names):
            raise c.fail("feature_scaler.features", f"the scaler's columns {scaler['features']} are not the "
                                                    f"model's features {list(names)} (reordered?)")
    if target.get("name") != TARGET:
        raise c.fail("target.name", f"expected '{TARGET}', got {target.get('name')!r}")
    c.numbers(target.get("mean"), "target.mean", 1)
    c.numbers(target.get("std"), "target.std", 1, positive=True)
    _check_prior(c, c.obj(meta, "training_prior"))
    _check_members(c, meta.get("members"))
    if "epistemic" in meta:  # descriptive: the values are in "training", whose parameters are checked on loading
        c.obj(meta, "epistemic")
    if "training_data_sha256" in meta and not isinstance(meta["training_data_sha256"], str):
        raise c.fail("training_data_sha256", f"expected a string, got {_type(meta['training_data_sha256'])}")
    if "split" in meta:
        c.obj(meta, "split")
    _check_extras(c, meta, n)


def _check_features(c: _Check, meta: Mapping[str, Any]) -> list[str]:
    names = meta.get("features")
    if not isinstance(names, list) or not names:
        raise c.fail("features", f"expected a non-empty list of feature names, got {_type(names)}")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise c.fail(f"features[{i}]", f"expected a feature name, got {name!r}")
        if name in names[:i]:
            raise c.fail(f"features[{i}]", f"repeats features[{names.index(name)}] ('{name}')")
    if _pipeline_model(meta):
        for i, name in enumerate(names):
            if name not in FEATURE_NAMES:
                raise c.fail(f"features[{i}]", f"is an unknown feature '{name}'; known: {list(FEATURE_NAMES)}")
        if "feature_set" not in meta:
            raise c.fail("feature_set", "is missing; retrain the model (`clustermass train`)")
        feature_set = meta["feature_set"]
        if feature_set not in FEATURE_SETS:
            raise c.fail("feature_set", f"expected one of {list(FEATURE_SETS)}, got {feature_set!r}")
        if meta.get("kind") == SET_KIND and feature_set not in SET_FEATURE_SETS:
            raise c.fail("feature_set", f"a set model reads the members of one of {list(SET_FEATURE_SETS)}, got "
                                        f"{feature_set!r}")
        if (feature_set != "full" or meta.get("kind") == SET_KIND) and names != list(FEATURE_SETS[feature_set]):
            expected = list(FEATURE_SETS[feature_set])
            raise c.fail("features", f"expected the '{feature_set}' set in its order {expected}, got {names}")
    return names


def _check_set(c: _Check, meta: Mapping[str, Any], training: Mapping[str, Any]) -> None:
    """What a set model adds: ``set_encoder`` (every :class:`~models.set_encoder.SetSpec` field, its own checks,
    the member inputs of the feature set), an ensemble (the only epistemic method of set models), ``target.learned``
    (one of :data:`models.set_model.TARGETS`) with ``msigma`` exactly when it is the M-sigma residual, and
    ``context`` (its column names those of the feature set and target, a scaler of one finite entry per column,
    std > 0)."""
    encoder = c.obj(meta, "set_encoder")
    missing = [f.name for f in fields(SetSpec) if f.init and f.name not in encoder]
    if missing:
        raise c.fail(f"set_encoder.{missing[0]}", "is missing; retrain the model (`clustermass train`)")
    try:
        set_spec = SetSpec.from_dict(encoder)
    except (ClusterMassError, TypeError, ValueError) as exc:
        raise c.fail("set_encoder", str(exc).removeprefix("set model: ")) from None
    feature_set = meta["feature_set"]  # checked by _check_features
    if set_spec.inputs != MEMBER_INPUTS[feature_set]:
        raise c.fail("set_encoder.inputs", f"expected the member inputs of the '{feature_set}' set "
                                           f"{list(MEMBER_INPUTS[feature_set])}, got {list(set_spec.inputs)}")
    if training.get("epistemic") != "ensemble":
        raise c.fail("training.epistemic", f"expected 'ensemble' (the only method of set models), got "
                                           f"{training.get('epistemic')!r}")
    target = c.obj(meta, "target")
    if "learned" not in target:
        raise c.fail("target.learned", "is missing; retrain the model (`clustermass train`)")
    learned = target["learned"]
    if learned not in TARGETS:
        raise c.fail("target.learned", f"expected one of {list(TARGETS)}, got {learned!r}")
    if learned == "msigma_residual":
        law = c.obj(meta, "msigma")
        for key in ("intercept", "slope", "pivot", "scatter"):
            value = c.number(law.get(key), f"msigma.{key}")
            if not math.isfinite(value) or (key == "pivot" and value <= 0):
                raise c.fail(f"msigma.{key}", f"must be finite{' and > 0' if key == 'pivot' else ''}, got "
                                              f"{value:g}")
        try:
            MSigmaFit.from_dict(law)
        except KeyError as exc:
            raise c.fail(f"msigma.{exc.args[0]}", "is missing; retrain the model (`clustermass train`)") from None
        except (TypeError, ValueError, IndexError) as exc:
            raise c.fail("msigma", f"expected the M-sigma fit of `clustermass train` ({exc})") from None
    elif "msigma" in meta:
        raise c.fail("msigma", f"is present, but target.learned is {learned!r} (an M-sigma law belongs to the "
                               "'msigma_residual' target only)")
    context = c.obj(meta, "context")
    names = context.get("names")
    expected = list(context_names(feature_set, learned))
    if names != expected:
        raise c.fail("context.names", f"expected {expected} (the '{feature_set}' set, target {learned!r}), got "
                                      f"{names!r}")
    if names:
        c.numbers(context.get("mean"), "context.mean", len(names), per="context column")
        c.numbers(context.get("std"), "context.std", len(names), positive=True, per="context column")
    elif context.get("mean") or context.get("std"):
        raise c.fail("context", "expected no scaler (mean, std) for a model without context columns")


def _check_prior(c: _Check, prior: Mapping[str, Any]) -> None:
    grid = c.numbers(prior.get("grid"), "training_prior.grid", minimum_length=2)
    if not np.all(np.diff(grid) > 0):
        i = int(np.flatnonzero(np.diff(grid) <= 0)[0]) + 1
        raise c.fail(f"training_prior.grid[{i}]", f"the grid must increase, got {grid[i]:g} after {grid[i - 1]:g}")
    density = c.numbers(prior.get("density"), "training_prior.density", len(grid), non_negative=True)
    total = float(np.trapezoid(density, grid))
    if abs(total - 1.0) > PRIOR_NORM_TOLERANCE:
        raise c.fail("training_prior.density", f"must integrate to 1 over its grid (a normalised density per dex), "
                                               f"got {total:.6g}")
    bandwidth = c.number(prior.get("bandwidth"), "training_prior.bandwidth")
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise c.fail("training_prior.bandwidth", f"must be finite and > 0, got {bandwidth:g}")
    c.integer(prior.get("n_train"), "training_prior.n_train", 2)


def _check_members(c: _Check, members: Any) -> None:
    if not isinstance(members, list) or not members:
        raise c.fail("members", f"expected a non-empty list of parameter files, got {_type(members)}"
                                + (" (empty)" if isinstance(members, list) else ""))
    for k, info in enumerate(members):
        if not isinstance(info, dict):
            raise c.fail(f"members[{k}]", f"expected an object with 'file' and 'sha256', got {_type(info)}")
        for key in ("file", "sha256"):
            if key not in info:
                raise c.fail(f"members[{k}].{key}", "is missing")
        name = info["file"]
        if not _plain_name(name):
            raise c.fail(f"members[{k}].file", f"{_PLAIN_NAME}, got {name!r}")
        if not isinstance(info["sha256"], str) or not _SHA256.fullmatch(info["sha256"]):
            raise c.fail(f"members[{k}].sha256", f"expected 64 lower-case hex digits, got {info['sha256']!r}")


def _check_extras(c: _Check, meta: Mapping[str, Any], n: int) -> None:
    """The training stage's additions, where present (``query``/``infer`` need them)."""
    if "training_members" in meta:
        lo_hi = meta["training_members"]
        if not isinstance(lo_hi, list) or len(lo_hi) != 2:
            raise c.fail("training_members", f"expected [fewest, most] members, got {lo_hi!r}")
        lo = c.integer(lo_hi[0], "training_members[0]", 0)
        if c.integer(lo_hi[1], "training_members[1]", 0) < lo:
            raise c.fail("training_members", f"expected fewest <= most, got {lo_hi}")
    if "typicality" in meta:
        stats = c.obj(meta, "typicality")
        c.numbers(stats.get("mean"), "typicality.mean", n)
        precision = stats.get("precision")
        if not isinstance(precision, list) or len(precision) != n:
            raise c.fail("typicality.precision", f"expected {n} rows of {n} numbers")
        for i, row in enumerate(precision):
            c.numbers(row, f"typicality.precision[{i}]", n)
        levels = c.numbers(stats.get("d2_levels"), "typicality.d2_levels", minimum_length=2)
        values = c.numbers(stats.get("d2_values"), "typicality.d2_values", len(levels))
        if np.any(np.diff(levels) < 0) or np.any(np.diff(values) < 0) or levels[0] < 0 or levels[-1] > 1:
            raise c.fail("typicality", "expected increasing d2_levels in [0, 1] and increasing d2_values")
    if "observations" in meta:
        observations = c.obj(meta, "observations")
        if observations:  # an empty record: the model does not know its cylinder (query says so)
            cylinder = c.obj(c.obj(observations, "config", "observations.config"), "cylinder",
                             "observations.config.cylinder")
            for key in ("r_aperture", "v_cut"):
                value = c.number(cylinder.get(key), f"observations.config.cylinder.{key}")
                if not (math.isfinite(value) and value > 0):
                    raise c.fail(f"observations.config.cylinder.{key}", f"must be finite and > 0, got {value:g}")
            c.integer(cylinder.get("min_members"), "observations.config.cylinder.min_members", 1)
            if not math.isfinite(c.number(cylinder.get("log10_mstar_min"), "observations.config.cylinder."
                                                                           "log10_mstar_min")):
                raise c.fail("observations.config.cylinder.log10_mstar_min", "must be finite")
            r_limit = cylinder.get("r_limit")
            if r_limit is not None and not math.isfinite(c.number(r_limit, "observations.config.cylinder.r_limit")):
                raise c.fail("observations.config.cylinder.r_limit", "must be finite or null")
            try:
                Snapshot.from_dict(c.obj(observations, "snapshot", "observations.snapshot"),
                                   where="observations.snapshot")
            except InputError:
                raise
            except (ClusterMassError, KeyError, TypeError, ValueError) as exc:
                raise c.fail("observations.snapshot", str(exc).removeprefix("observations.snapshot: ")) from None
    if "selection" in meta:
        selection = c.obj(meta, "selection")
        if "min_members" in selection:
            c.integer(selection["min_members"], "selection.min_members", 1)

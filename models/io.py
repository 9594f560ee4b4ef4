"""Model files: parameters as flax msgpack (no pickle), everything else as JSON.

``DIR/model.json`` — format version, kind, architecture and training configuration, feature names and order,
feature and target scalers, the interim prior p_train on its grid, package versions, a digest of the training
data, the train/validation split and per-member histories, and the SHA-256 of every parameter file.
``DIR/member-K.msgpack`` — the parameters of ensemble member K; for ``epistemic = "bayes_by_backprop"`` the one
member is the variational pytree ``{"loc": params, "rho": params}`` (:mod:`models.bayes`), and ``model.json``'s
``"epistemic"`` records the method, the prior scale and the number of weight draws at prediction.
Loading checks all of it and refuses a mismatched or corrupted file with one clear error. Writing is atomic: the
directory appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from models.bayes import init_variational
from models.model import TARGET, TARGET_UNIT, TrainedModel
from models.networks import init_params
from models.prior import TrainingPrior
from models.spec import History, ModelSpec, Standardizer, TrainSpec
from pipeline.errors import InputError

FORMAT = "clustermass-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("clustermass", "jax", "jaxlib", "flax", "optax", "tfp-nightly", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def save_model(directory: str | os.PathLike[str], model: TrainedModel, *,
               histories: Sequence[History] = (), extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` (replaced if it exists)."""
    target = Path(directory)
    tmp = target.with_name(f".{target.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
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
        "kind": model.spec.kind,
        "model": model.spec.to_dict(),
        "training": model.train.to_dict(),
        "features": list(model.feature_names),
        "feature_scaler": model.x_scaler.to_dict(),
        "target": {"name": TARGET, "unit": TARGET_UNIT, **model.y_scaler.to_dict()},
        "training_prior": model.training_prior.to_dict(),
        "training_data_sha256": model.data_digest,
        "split": model.split,
        "members": members,
        "epistemic": epistemic_description(model.train),
        "versions": package_versions(),
        **(extra or {}),
    }
    (tmp / MODEL_JSON).write_text(json.dumps(description, indent=1) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


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


def read_description(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``model.json`` of a model directory (format checked by :func:`load_model`, not here)."""
    d = Path(directory)
    meta_path = d / MODEL_JSON
    if not meta_path.is_file():
        raise InputError(d, f"not a clustermass model directory (no {MODEL_JSON})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(meta_path, f"is not valid JSON ({exc}); corrupted?") from None
    if not isinstance(meta, dict):
        raise InputError(meta_path, f"expected a JSON object, found {type(meta).__name__}")
    return meta


def load_model(directory: str | os.PathLike[str], *, features: Sequence[str] | None = None) -> TrainedModel:
    """Read a model written by :func:`save_model`. ``features``: the caller's feature names, which must match."""
    d = Path(directory)
    meta_path = d / MODEL_JSON
    meta = read_description(d)
    if meta.get("format") != FORMAT:
        raise InputError(meta_path, f"expected format '{FORMAT}', found {meta.get('format')!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(meta_path, f"format version {meta.get('format_version')} is not supported "
                                    f"(expected {FORMAT_VERSION}); retrain or upgrade clustermass")
    try:
        spec = ModelSpec.from_dict(meta["model"])
        train = TrainSpec(**meta["training"])
        names = tuple(meta["features"])
        x_scaler = Standardizer.from_dict(meta["feature_scaler"])
        y_scaler = Standardizer.from_dict(meta["target"])
        prior = TrainingPrior.from_dict(meta["training_prior"])
        member_info = meta["members"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(meta_path, f"incomplete or inconsistent model description ({exc})") from None
    if len(x_scaler.mean) != len(names) or len(x_scaler.std) != len(names):
        raise InputError(meta_path, f"feature scaler has {len(x_scaler.mean)} entries for {len(names)} features")
    if meta["target"].get("name") != TARGET:
        raise InputError(meta_path, f"expected target '{TARGET}', found {meta['target'].get('name')!r}")
    if features is not None and tuple(features) != names:
        missing = [f for f in names if f not in features]
        extra = [f for f in features if f not in names]
        detail = f"missing {missing}, unexpected {extra}" if missing or extra else "same names, different order"
        raise InputError(d, f"features do not match the model's ({detail}); expected {list(names)}")
    template = parameter_template(spec, train, len(names))
    members = []
    for info in member_info:
        path = d / info["file"]
        if not path.is_file():
            raise InputError(path, "missing parameter file")
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
    if not members:
        raise InputError(meta_path, "the model has no ensemble members")
    return TrainedModel(spec, train, names, x_scaler, y_scaler, tuple(members), prior,
                        str(meta.get("training_data_sha256", "")), dict(meta.get("split", {})))

"""Validation on held-out hosts: posteriors of every model, then metrics, acceptance and the written report.

:func:`evaluate` computes (posteriors, :mod:`inference.metrics`, :mod:`inference.acceptance`); :func:`write_report`
writes ``metrics.json`` and the PNG plots (:mod:`inference.plots`); :func:`validate` does both. Called by
``clustermass validate`` and by the flow's validate task alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.members import Members
from features.sets import thinned_features
from inference import calibration, plots
from inference.acceptance import acceptance
from inference.metrics import (
    BIN_WIDTH,
    MASS_RANGE,
    Calibration,
    DensityPosteriors,
    accuracy,
    calibrate,
    json_safe,
    methods_accuracy,
    validation_metrics,
)
from inference.posterior import prepare
from inference.priors import DEFAULT_PRIOR
from models.io import MODEL_JSON, load_model, read_description
from models.model import TARGET, TrainedModel, predict_point
from models.msigma import FEATURE as MSIGMA_FEATURE
from models.msigma import PURE_FEATURE, MSigmaFit
from models.stage import load_models, load_msigma
from pipeline.errors import ConfigError
from pipeline.files import write_json
from pipeline.snapshot import Snapshot


@dataclass(frozen=True)
class Validation:
    """What :func:`evaluate` found: the metrics document and the arrays behind the plots."""

    metrics: dict[str, Any]
    methods: dict[str, dict[str, Any]]  # every method's accuracy as computed (NaN where undefined), for the plots
    true: np.ndarray
    estimates: dict[str, np.ndarray]
    calibration: Calibration
    main: DensityPosteriors


def density_posteriors(model: TrainedModel, x: np.ndarray, prior: str, snapshot: Snapshot | None
                       ) -> DensityPosteriors:
    """Corrected (to ``prior``) and uncorrected posteriors of feature rows ``x`` (N, F) under ``model``."""
    setup = prepare(model, prior, snapshot=snapshot)
    pdf, values, raw_pdf = setup.evaluate_with_raw(x)
    return DensityPosteriors(setup.grid, pdf, values, raw_pdf, setup.target.log_density, setup.p_train,
                             setup.target.name)


def invalid_rows(pdf: np.ndarray) -> int:
    """How many rows of posterior pdfs (N, G) are not densities (any NaN or inf: the INVALID_OUTPUT rows of
    :mod:`inference.posterior`)."""
    return int(np.count_nonzero(~np.isfinite(np.asarray(pdf)).all(axis=1)))


def main_kind_of(models: dict[str, TrainedModel], main: str | None) -> str:
    """The model that gives the headline numbers: ``main``, or the flow, or the first density model."""
    density = [k for k, m in models.items() if m.spec.is_density]
    if not density:
        raise ConfigError("validate: expected at least one density model (mdn or flow)")
    kind = main if main is not None else ("flow" if "flow" in density else density[0])
    if kind not in density:
        raise ConfigError(f"validate: main model '{kind}' is not among the density models {density}")
    return kind


def evaluate(test: pd.DataFrame, models: dict[str, TrainedModel], msigma: MSigmaFit, *, prior: str = DEFAULT_PRIOR,
             main: str | None = None, snapshot: Snapshot | None = None,
             msigma_pure: MSigmaFit | None = None) -> Validation:
    """Metrics with acceptance verdicts for held-out observations ``test`` (a feature table with the truth).

    ``msigma``: the M-sigma baseline on all cylinder members; ``msigma_pure``: on the true members (when the table
    has their dispersion, ``sigma_v_true_std``).
    """
    main_kind = main_kind_of(models, main)
    true = test[TARGET].to_numpy(np.float64)
    mse = None
    if "mse" in models:
        mse = predict_point(models["mse"], test[list(models["mse"].feature_names)].to_numpy())
    density = {kind: density_posteriors(model, test[list(model.feature_names)].to_numpy(), prior, snapshot)
               for kind, model in models.items() if model.spec.is_density}
    pure = None
    if msigma_pure is not None and PURE_FEATURE in test:
        pure = msigma_pure.predict(test[PURE_FEATURE].to_numpy())
    methods, estimates = methods_accuracy(true, msigma=msigma.predict(test[MSIGMA_FEATURE].to_numpy()), mse=mse,
                                          density=density, msigma_pure=pure)
    cal = calibrate(true, density[main_kind])
    metrics = validation_metrics(true, int(test["cluster_id"].nunique()), methods=methods, cal=cal,
                                 main_kind=main_kind, target_name=density[main_kind].target_name,
                                 msigma_fit=msigma.to_dict(), n_invalid=invalid_rows(density[main_kind].pdf))
    metrics["acceptance"] = json_safe(acceptance(metrics, main_kind))
    return Validation(metrics, methods, true, estimates, cal, density[main_kind])


#: the completeness at which the dynamics model is validated (issue 12: members randomly thinned to 40%)
THINNED_COMPLETENESS = 0.4


def evaluate_thinned(test: pd.DataFrame, members: Members, model: TrainedModel, *, min_members: int,
                     r_aperture: float, prior: str = DEFAULT_PRIOR, snapshot: Snapshot | None = None,
                     completeness: float = THINNED_COMPLETENESS, seed: int = 0) -> dict[str, Any]:
    """A model (the dynamics one) on held-out observations whose members are randomly thinned to ``completeness``:
    accuracy of the corrected mode and 68/95% coverage (importance-weighted to the target prior).

    ``members``: the member arrays of the rows of ``test`` (same order); only hosts from 0.1 dex below the judged
    mass range up are evaluated, and rows keeping fewer than ``min_members`` members are left out and counted.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x40,)))
    judged = test[TARGET].to_numpy(np.float64) >= MASS_RANGE[0] - BIN_WIDTH  # the range the criteria judge
    members, test = members.take(judged), test[judged]
    feats = thinned_features(members, np.full(len(test), completeness), rng, r_aperture=r_aperture)
    x = np.column_stack([feats[name] for name in model.feature_names])
    keep = np.isfinite(x).all(axis=1) & (feats["n_members"] >= min_members)
    true = test[TARGET].to_numpy(np.float64)[keep]
    post = density_posteriors(model, x[keep], prior, snapshot)
    cal = calibrate(true, post)
    return json_safe({"completeness": completeness, "n": int(keep.sum()), "n_dropped_too_few": int((~keep).sum()),
                      "corrected_mode": accuracy(post.values["mode"], true),
                      "coverage_68": cal.headline_corrected[0], "coverage_95": cal.headline_corrected[1],
                      "coverage_effective_sample_size": calibration.effective_sample_size(cal.weights)})


def write_report(validation: Validation, out_dir: str | os.PathLike[str], *, n_examples: int = 4) -> Path:
    """``out_dir/metrics.json`` and the PNG plots of ``validation``; returns the metrics path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    v, cal = validation, validation.calibration
    methods = v.methods
    plots.predicted_vs_true(v.true, v.estimates, out / "predicted_vs_true.png")
    plots.bias_scatter_by_bin({k: m["by_bin"] for k, m in methods.items() if m.get("by_bin")},
                              out / "bias_scatter_by_bin.png")
    plots.coverage_curve(cal.levels, {"corrected (weighted to target prior)": cal.corrected,
                                      "uncorrected": cal.uncorrected}, out / "coverage.png")
    plots.pit_histograms({"corrected (weighted)": cal.pit_corrected, "uncorrected": cal.pit_uncorrected},
                         out / "pit.png")
    pick = np.argsort(v.true)[np.linspace(0, len(v.true) - 1, n_examples).astype(int)]
    plots.example_posteriors(v.main.grid, v.main.pdf[pick], v.main.raw_pdf[pick], v.true[pick],
                             out / "example_posteriors.png")
    return write_json(out / "metrics.json", v.metrics)


def validate(test: pd.DataFrame, models: dict[str, TrainedModel], msigma: MSigmaFit, *, prior: str = DEFAULT_PRIOR,
             main: str | None = None, snapshot: Snapshot | None = None, msigma_pure: MSigmaFit | None = None,
             out_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """:func:`evaluate`, then :func:`write_report` into ``out_dir`` when given; returns the metrics."""
    validation = evaluate(test, models, msigma, prior=prior, main=main, snapshot=snapshot, msigma_pure=msigma_pure)
    if out_dir is not None:
        write_report(validation, out_dir)
    return validation.metrics


def validate_stage(table: pd.DataFrame, model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                   members: Members | None = None, prior: str = DEFAULT_PRIOR, main: str | None = None,
                   snapshot: Snapshot | None = None, notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validation stage of a run's model directory on its held-out rows ``table`` (with their ``members``, in
    the same order, for the dynamics model's thinned test): ``out_dir/metrics.json`` and plots; returns metrics.
    ``notes``: facts about the scored rows recorded in the metrics as given (``clustermass validate --centring``
    records how they were centred).

    Called by ``clustermass validate`` and by the flow's validate task alike.
    """
    model_dir = Path(model_dir)
    fits = model_dir / "msigma.json"
    validation = evaluate(table, load_models(model_dir), load_msigma(fits), prior=prior, main=main,
                          snapshot=snapshot, msigma_pure=load_msigma(fits, pure=True))
    kind = validation.metrics["main_model"]
    dynamics_dir = model_dir / "dynamics" / kind
    if members is not None and (dynamics_dir / MODEL_JSON).is_file():
        description = read_description(dynamics_dir)
        cylinder = description["observations"]["config"]["cylinder"]
        validation.metrics["dynamics_thinned"] = evaluate_thinned(
            table, members, load_model(dynamics_dir), min_members=int(description["selection"]["min_members"]),
            r_aperture=float(cylinder["r_aperture"]), prior=prior, snapshot=snapshot)
        validation.metrics["acceptance"] = json_safe(acceptance(validation.metrics, kind))
    validation.metrics.update(json_safe(notes or {}))
    write_report(validation, out_dir)
    return validation.metrics

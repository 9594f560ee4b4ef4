"""Validation on held-out hosts: posteriors of every model, then metrics, acceptance and the written report.

:func:`evaluate` computes (posteriors, :mod:`inference.metrics`, :mod:`inference.acceptance`); :func:`write_report`
writes ``metrics.json`` and the PNG plots (:mod:`inference.plots`); :func:`validate` does both. Called by
``clustermass validate`` and by the flow's validate task alike.

A set model (``model/set``, :class:`models.set_model.TrainedSetModel`) is scored from the held-out rows' members,
beside the feature models (``metrics.json: methods: set_corrected_mode``...). The dynamics models are also scored
on the held-out members thinned to 40% (:func:`evaluate_thinned`: ``dynamics_thinned`` for the main model's,
``dynamics_thinned_set`` for the set model's when it is not the main one) and on the same held-out clusters at
several completenesses (:func:`evaluate_completeness`, ``dynamics_completeness``: a dynamics model must not read
mass from how many redshifts were measured).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.definitions import compute_features
from features.members import Members
from features.sets import thin
from inference import calibration, plots
from inference.acceptance import acceptance
from inference.metrics import (
    BIN_WIDTH,
    COVERAGE_MASS_RANGES,
    MASS_RANGE,
    Calibration,
    DensityPosteriors,
    accuracy,
    calibrate,
    json_safe,
    methods_accuracy,
    validation_metrics,
)
from inference.posterior import DensityModel, ModelInputs, prepare
from inference.priors import DEFAULT_PRIOR
from models.io import MODEL_JSON, load_model, read_description
from models.model import TARGET, predict_point
from models.msigma import FEATURE as MSIGMA_FEATURE
from models.msigma import PURE_FEATURE, MSigmaFit
from models.set_model import SET_KIND, TrainedSetModel, set_data
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


def density_posteriors(model: DensityModel, x: ModelInputs, prior: str, snapshot: Snapshot | None
                       ) -> DensityPosteriors:
    """Corrected (to ``prior``) and uncorrected posteriors under ``model`` of its inputs ``x``: feature rows (N, F),
    or a set model's member sets (:func:`model_inputs`)."""
    setup = prepare(model, prior, snapshot=snapshot)
    pdf, values, raw_pdf = setup.evaluate_with_raw(x)
    return DensityPosteriors(setup.grid, pdf, values, raw_pdf, setup.target.log_density, setup.p_train,
                             setup.target.name)


def model_inputs(model: DensityModel, rows: pd.DataFrame, members: Members | None) -> ModelInputs:
    """What ``model`` reads of the observations ``rows``: its feature columns, or for a set model the sets of
    ``members`` (the rows' member arrays, same order)."""
    if isinstance(model, TrainedSetModel):
        if members is None or members.n_obs != len(rows):
            raise ValueError(f"the set model reads the members of the {len(rows)} rows, got "
                             f"{'none' if members is None else members.n_obs}")
        return set_data(model, members)
    return rows[list(model.feature_names)].to_numpy()


def invalid_rows(pdf: np.ndarray) -> int:
    """How many rows of posterior pdfs (N, G) are not densities (any NaN or inf: the INVALID_OUTPUT rows of
    :mod:`inference.posterior`)."""
    return int(np.count_nonzero(~np.isfinite(np.asarray(pdf)).all(axis=1)))


def main_kind_of(models: dict[str, DensityModel], main: str | None) -> str:
    """The model that gives the headline numbers: ``main``, or the flow, or the first density model."""
    density = [k for k, m in models.items() if m.spec.is_density]
    if not density:
        raise ConfigError("validate: expected at least one density model (mdn or flow)")
    kind = main if main is not None else ("flow" if "flow" in density else density[0])
    if kind not in density:
        raise ConfigError(f"validate: main model '{kind}' is not among the density models {density}")
    return kind


def evaluate(test: pd.DataFrame, models: dict[str, DensityModel], msigma: MSigmaFit, *, prior: str = DEFAULT_PRIOR,
             main: str | None = None, snapshot: Snapshot | None = None,
             msigma_pure: MSigmaFit | None = None, members: Members | None = None) -> Validation:
    """Metrics with acceptance verdicts for held-out observations ``test`` (a feature table with the truth).

    ``msigma``: the M-sigma baseline on all cylinder members; ``msigma_pure``: on the true members (when the table
    has their dispersion, ``sigma_v_true_std``). ``members``: the rows' member arrays (same order), which a set
    model reads; without them a set model is not scored (``metrics.json: not_scored`` says so).
    """
    not_scored = {kind: "no members of the scored rows (members.h5)" for kind, model in models.items()
                  if isinstance(model, TrainedSetModel) and members is None}
    models = {kind: model for kind, model in models.items() if kind not in not_scored}
    main_kind = main_kind_of(models, main)
    true = test[TARGET].to_numpy(np.float64)
    mse = None
    if "mse" in models:
        mse = predict_point(models["mse"], test[list(models["mse"].feature_names)].to_numpy())
    density = {kind: density_posteriors(model, model_inputs(model, test, members), prior, snapshot)
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
    if not_scored:
        metrics["not_scored"] = not_scored
    metrics["acceptance"] = json_safe(acceptance(metrics, main_kind))
    return Validation(metrics, methods, true, estimates, cal, density[main_kind])


#: the completeness at which the dynamics model is validated (issue 12: members randomly thinned to 40%)
THINNED_COMPLETENESS = 0.4
#: completenesses of the dynamics models' completeness test (issue 19.2): the same held-out clusters scored with
#: their members thinned to each
COMPLETENESS_LEVELS = (0.2, 0.4, 0.7, 1.0)


def _judged(test: pd.DataFrame, members: Members) -> tuple[pd.DataFrame, Members]:
    """The rows (and their members) the thinned tests score: hosts from 0.1 dex below the judged mass range up."""
    judged = test[TARGET].to_numpy(np.float64) >= MASS_RANGE[0] - BIN_WIDTH  # the range the criteria judge
    return test[judged], members.take(judged)


def _kept(members: Members, keep: np.ndarray) -> Members:
    """``members`` keeping only the members where ``keep`` (one flag per member) is True."""
    owner = np.repeat(np.arange(members.n_obs), members.counts)
    offsets = np.concatenate(([0], np.cumsum(np.bincount(owner[keep], minlength=members.n_obs)))).astype(np.int64)
    return Members(offsets, **{name: values[keep] for name, values in members.arrays().items()})


def _features(members: Members, r_aperture: float) -> dict[str, np.ndarray]:
    return compute_features(members.offsets, members.r_proj, members.v_los, members.log10_mstar,
                            r_aperture=r_aperture)


def evaluate_thinned(test: pd.DataFrame, members: Members, model: DensityModel, *, min_members: int,
                     r_aperture: float, prior: str = DEFAULT_PRIOR, snapshot: Snapshot | None = None,
                     completeness: float = THINNED_COMPLETENESS, seed: int = 0) -> dict[str, Any]:
    """A model (the dynamics one: a feature flow, or a set model reading the thinned members) on held-out
    observations whose members are randomly thinned to ``completeness``: accuracy of the corrected mode and 68/95%
    coverage (importance-weighted to the target prior), overall and in the ranges of ``COVERAGE_MASS_RANGES`` the
    scored rows cover whole (``coverage_by_mass_range``: from 10^14 up).

    ``members``: the member arrays of the rows of ``test`` (same order); only hosts from 0.1 dex below the judged
    mass range up are evaluated, and rows keeping fewer than ``min_members`` members (or with a non-finite summary
    feature of the model's feature set) are left out and counted. The same ``seed`` keeps the same members for
    every model, so the flow and the set model are scored on the same thinned lists.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x40,)))
    test, members = _judged(test, members)
    kept = thin(members, np.full(len(test), completeness), rng)
    feats = _features(kept, r_aperture)
    x = np.column_stack([feats[name] for name in model.feature_names])
    keep = np.isfinite(x).all(axis=1) & (feats["n_members"] >= min_members)
    true = test[TARGET].to_numpy(np.float64)[keep]
    inputs = set_data(model, kept.take(keep)) if isinstance(model, TrainedSetModel) else x[keep]
    post = density_posteriors(model, inputs, prior, snapshot)
    cal = calibrate(true, post, [r for r in COVERAGE_MASS_RANGES if r[0] >= MASS_RANGE[0] - BIN_WIDTH])
    return json_safe({"completeness": completeness, "n": int(keep.sum()), "n_dropped_too_few": int((~keep).sum()),
                      "corrected_mode": accuracy(post.values["mode"], true),
                      "coverage_68": cal.headline_corrected[0], "coverage_95": cal.headline_corrected[1],
                      "coverage_effective_sample_size": calibration.effective_sample_size(cal.weights),
                      "coverage_by_mass_range": cal.by_mass_range})


def completeness_lists(members: Members, levels: tuple[float, ...], seed: int = 0) -> dict[float, Members]:
    """``members`` thinned to each completeness of ``levels``, nested: one uniform draw per member (``seed``), a
    member kept at completeness c when its draw is below c (every member at 1)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x41,)))
    draw = rng.random(int(members.offsets[-1]))
    return {c: _kept(members, draw < c) for c in levels}


def evaluate_completeness(test: pd.DataFrame, members: Members, models: dict[str, DensityModel], *,
                          min_members: int, r_aperture: float, prior: str = DEFAULT_PRIOR,
                          snapshot: Snapshot | None = None, levels: tuple[float, ...] = COMPLETENESS_LEVELS,
                          seed: int = 0) -> dict[str, Any]:
    """The completeness test of the dynamics ``models`` (by kind): the same held-out clusters with their members
    thinned to each completeness of ``levels``, and the bias and scatter [dex] of each model's corrected mode over
    1e14-1e15 Msun/h at each. A model that read mass from the number of redshifts would drift with completeness.

    Lists are nested: one uniform draw per member (``seed``), a member kept at completeness c when its draw is
    below c, so a list at 40% holds its list at 20% and only completeness changes between levels. The clusters are
    those every level leaves with at least ``min_members`` members and finite features (the hosts from 0.1 dex
    below the judged range up, as :func:`evaluate_thinned`). ``bias_spread``: max - min bias over the levels.
    """
    test, members = _judged(test, members)
    lists = completeness_lists(members, levels, seed)
    names = next(iter(models.values())).feature_names
    feats = {c: _features(kept, r_aperture) for c, kept in lists.items()}
    rows = np.ones(len(test), bool)
    for f in feats.values():
        rows &= np.isfinite(np.column_stack([f[name] for name in names])).all(axis=1) & (f["n_members"] >= min_members)
    true = test[TARGET].to_numpy(np.float64)[rows]
    out: dict[str, Any] = {"levels": list(levels), "n": int(rows.sum()), "n_dropped_too_few": int((~rows).sum()),
                           "min_members": min_members, "models": {}, "bias_spread": {}}
    for kind, model in models.items():
        scores = {}
        for c in levels:
            inputs = (set_data(model, lists[c].take(rows)) if isinstance(model, TrainedSetModel)
                      else np.column_stack([feats[c][name] for name in model.feature_names])[rows])
            acc = accuracy(density_posteriors(model, inputs, prior, snapshot).values["mode"], true)
            scores[f"{c:g}"] = {"bias": acc["bias"], "scatter": acc["scatter"], "n": acc["n"]}
        out["models"][kind] = scores
        biases = [v["bias"] for v in scores.values() if v["bias"] is not None and np.isfinite(v["bias"])]
        out["bias_spread"][kind] = max(biases) - min(biases) if len(biases) == len(levels) else None
    return json_safe(out)


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


def validate(test: pd.DataFrame, models: dict[str, DensityModel], msigma: MSigmaFit, *, prior: str = DEFAULT_PRIOR,
             main: str | None = None, snapshot: Snapshot | None = None, msigma_pure: MSigmaFit | None = None,
             out_dir: str | os.PathLike[str] | None = None, members: Members | None = None) -> dict[str, Any]:
    """:func:`evaluate`, then :func:`write_report` into ``out_dir`` when given; returns the metrics."""
    validation = evaluate(test, models, msigma, prior=prior, main=main, snapshot=snapshot, msigma_pure=msigma_pure,
                          members=members)
    if out_dir is not None:
        write_report(validation, out_dir)
    return validation.metrics


def validate_stage(table: pd.DataFrame, model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                   members: Members | None = None, prior: str = DEFAULT_PRIOR, main: str | None = None,
                   snapshot: Snapshot | None = None, notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The validation stage of a run's model directory on its held-out rows ``table`` (with their ``members``, in
    the same order, which the set models read and the dynamics models' thinned and completeness tests thin):
    ``out_dir/metrics.json`` and plots; returns metrics.
    ``notes``: facts about the scored rows recorded in the metrics as given (``clustermass validate --centring``
    records how they were centred).

    Called by ``clustermass validate`` and by the flow's validate task alike.
    """
    model_dir = Path(model_dir)
    fits = model_dir / "msigma.json"
    validation = evaluate(table, load_models(model_dir), load_msigma(fits), prior=prior, main=main,
                          snapshot=snapshot, msigma_pure=load_msigma(fits, pure=True), members=members)
    kind = validation.metrics["main_model"]
    dynamics = {k: model_dir / "dynamics" / k for k in ("flow", "mdn", SET_KIND)
                if (model_dir / "dynamics" / k / MODEL_JSON).is_file()}
    if members is not None and dynamics:
        loaded = {k: load_model(d) for k, d in dynamics.items()}
        description = read_description(dynamics[kind] if kind in dynamics else next(iter(dynamics.values())))
        thinning = {"min_members": int(description["selection"]["min_members"]),
                    "r_aperture": float(description["observations"]["config"]["cylinder"]["r_aperture"]),
                    "prior": prior, "snapshot": snapshot}
        if kind in loaded:
            validation.metrics["dynamics_thinned"] = evaluate_thinned(table, members, loaded[kind], **thinning)
        if SET_KIND in loaded and kind != SET_KIND:
            validation.metrics["dynamics_thinned_set"] = evaluate_thinned(table, members, loaded[SET_KIND],
                                                                          **thinning)
        validation.metrics["dynamics_completeness"] = evaluate_completeness(
            table, members, {k: m for k, m in loaded.items() if k in ("flow", SET_KIND)} or loaded, **thinning)
        validation.metrics["acceptance"] = json_safe(acceptance(validation.metrics, kind))
    validation.metrics.update(json_safe(notes or {}))
    write_report(validation, out_dir)
    return validation.metrics

"""The single-cluster query (``clustermass query``): the posterior mass of one cluster from a members file.

The members are put through the same cylinder and feature definitions the model was trained with (stored in its
model.json), then the model's posterior is corrected to the chosen prior on the model's grid. A set model
(:mod:`models.set_model`) reads the selected members themselves (r_proj, v_los and, for the ``full`` set, log10 M*);
where a run has one it answers before the flow of its feature set, and the answer says so (``model_kind``, a note).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.definitions import compute_features
from features.sets import CODES, INPUTS, NEEDS_COMPLETE_SAMPLE, NEEDS_STELLAR_MASS
from features.sky import estimate_centre, project
from inference.diagnostics import FLAGS, OOD_LIMIT, edge_mass, flag_bits, flag_names
from inference.member_table import PROJECTED, SKY, MemberFile, check_centre, load_members, open_members, unit_notes
from inference.posterior import ModelInputs, prepare, summary_columns
from inference.priors import DEFAULT_PRIOR
from inference.selection import REDSHIFT_TOLERANCE, ModelSelection, model_selection, select_members
from inference.selection import describe as describe_selection
from models.io import MODEL_JSON, load_model, model_feature_set, read_description
from models.model import TrainedModel
from models.set_batches import MEMBER_INPUTS
from models.set_model import SET_KIND, TrainedSetModel, members_from_arrays, set_data
from models.typicality import ood_score
from pipeline.cosmology import Cosmology
from pipeline.errors import ConfigError, InputError
from pipeline.files import check_output_path, shown
from pipeline.snapshot import Snapshot

#: below this many members no posterior is given; below the training minimum, a warning
ABSOLUTE_MIN_MEMBERS = 3


@dataclass(frozen=True)
class QueryResult:
    summary: dict[str, Any]
    grid: np.ndarray
    pdf: np.ndarray
    warnings: tuple[str, ...]


#: the density models of one feature set, in the order they are asked: the set model (every member's own inputs),
#: then the first feature model present (summary features: the flow, else the MDN)
MODEL_ORDER = ((SET_KIND,), ("flow", "mdn"))


def candidate_models(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` itself when it is a model directory (a feature model or a set model); else the density models of a
    run's model directory (``path`` or ``path/model``), richest feature set first (full, richness, dynamics), and
    within a feature set the set model (``set/``, reading every member) before the flow, or else the MDN."""
    p = Path(path)
    if (p / MODEL_JSON).is_file():
        return [p]
    found = []
    for root in (p, p / "model"):
        for feature_set in ("full", "richness", "dynamics"):
            where = root if feature_set == "full" else root / feature_set
            for kinds in MODEL_ORDER:
                d = next((where / kind for kind in kinds if (where / kind / MODEL_JSON).is_file()), None)
                if d is not None and d not in found:
                    found.append(d)
        if found:
            return found
    raise InputError(p, "no trained model here (expected model.json, or set/, flow/ or mdn/ from `clustermass "
                        "train`)")


def query(model_path: str | os.PathLike[str], members_path: str | os.PathLike[str], *, prior: str = DEFAULT_PRIOR,
          centre: tuple[float, float, float] | None = None, inputs: str | None = None,
          far_redshift: str = "warn") -> QueryResult:
    """The posterior of one cluster from a members file, by the richest model whose inputs the file provides.

    A members file with ``log10_mstar`` can be answered by a ``full`` model (stellar masses; it assumes a sample
    complete above the model's stellar-mass floor, which is applied); without it, by a ``dynamics`` model (positions
    and redshifts only). The summary says which model answered, why the others did not, what the selection cut,
    and the diagnostics of :mod:`inference.diagnostics` (``ood_score``, ``edge_mass``, ``flags``). ``inputs``: use
    the model of this feature set only (e.g. ``"dynamics"`` to ignore the stellar masses a file has).
    ``far_redshift``: ``"warn"`` (flag REDSHIFT) or ``"refuse"`` when the cluster is further than
    :data:`REDSHIFT_TOLERANCE` from the model's snapshot redshift. ``centre``: (ra [deg], dec [deg], z), for sky
    coordinates only.

    The members file is checked before anything is computed (:mod:`inference.member_table`: one coordinate system,
    units converted where the file states them, numbers, no empty cells, ranges, no repeated galaxies, log10 stellar
    masses) and so is ``centre``; the model's files are checked as a whole (:func:`models.io.load_model`). Each
    failure is one :class:`~pipeline.errors.InputError` (or ``ConfigError`` for ``centre``) line.
    """
    centre = check_centre(centre)
    members = open_members(members_path)
    if centre is not None and members.system == "projected":
        raise ConfigError(f"--center applies to sky coordinates (ra, dec, z); {members.path} gives r_proj and v_los, "
                          "already relative to its cluster's centre")
    directory, description, feature_set, considered = choose_model(model_path, members.has("log10_mstar"),
                                                                    members_path=members.path, only=inputs)
    return _answer(directory, description, feature_set, members, prior=prior, centre=centre,
                   considered=considered, far_redshift=far_redshift)


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """``--plot PATH``, checked before anything is computed: a ``.png`` name, not a directory, in a folder that
    exists or can be created and written (no part of it a file, a symbolic-link loop or a dangling link; the name
    UTF-8: :func:`pipeline.files.check_output_path`). :func:`write_plot` creates the folder."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ConfigError(f"--plot: expected a .png file name, got '{shown(p)}'")
    return check_output_path(p, directory=False, key="--plot")


def write_plot(result: QueryResult, path: str | os.PathLike[str]) -> Path:
    """Draw ``result``'s posterior to ``path`` (PNG), creating its folder; a failure is one line naming ``path``
    (never the hidden partial file the plot is first written to)."""
    from inference.plots import query_posterior

    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        return query_posterior(result.grid, result.pdf, result.summary, p)
    except OSError as exc:
        raise InputError(p, f"cannot write the plot ({exc.strerror or exc})") from None


def choose_model(model_path: str | os.PathLike[str], has_mstar: bool, *, members_path: Path,
                 only: str | None = None) -> tuple[Path, dict[str, Any], str, list[dict[str, Any]]]:
    """The richest model of ``model_path`` (:func:`candidate_models`: a set model before the feature models of its
    feature set) whose inputs a member list with (or without) stellar masses provides: (its directory, its
    model.json, its feature set, every model considered — its ``model_kind``, and why it was not used). ``only``:
    consider the models of this feature set only."""
    considered: list[dict[str, Any]] = []
    chosen = None
    for directory in candidate_models(model_path):
        description = read_description(directory)
        feature_set = model_feature_set(description, directory)
        entry = {"model": str(directory), "feature_set": feature_set, "model_kind": model_kind(description)}
        if only is not None and feature_set != only:
            considered.append({**entry, "used": False, "why_not": f"--inputs {only} was asked for"})
            continue
        if (feature_set in NEEDS_STELLAR_MASS or feature_set in NEEDS_COMPLETE_SAMPLE) and not has_mstar:
            why = ("needs stellar masses" if feature_set in NEEDS_STELLAR_MASS else
                   "needs stellar masses to apply its stellar-mass floor (a complete sample)")
            considered.append({**entry, "used": False, "why_not": f"{why}: the members file has no log10_mstar column"})
            continue
        if chosen is None:
            chosen = (directory, description, feature_set)
            considered.append({**entry, "used": True})
        else:
            answered = model_kind(chosen[1])
            why = "a richer model answered" + (f": the {chosen[2]} set model {chosen[0]}, which reads every member"
                                               if answered == SET_KIND else "")
            considered.append({**entry, "used": False, "why_not": why})
    if chosen is None and only is not None and not any(c["feature_set"] == only for c in considered):
        raise InputError(model_path, f"no '{only}' model here; models: "
                                     f"{[c['feature_set'] for c in considered]}")
    if chosen is None:
        raise InputError(members_path, "expected a log10_mstar column [log10 Msun]: the only model here uses "
                                       "stellar-mass features (train a dynamics model, [train] feature_sets, to answer "
                                       "without it)", column="log10_mstar")
    return (*chosen, considered)


def model_kind(description: dict[str, Any]) -> str:
    """The family of a model from its model.json: ``"set"`` (a set model over the members,
    :mod:`models.set_model`), or the feature model's density head, ``"flow"`` or ``"mdn"``."""
    return str(description.get("kind", ""))


def set_model_note(model: TrainedSetModel) -> str:
    """What a set model reads, in words, for the notes of an answer (``infer`` prints it too)."""
    inputs = ", ".join("log10 M*" if c == "log10_mstar" else c for c in MEMBER_INPUTS[model.feature_set])
    count = ", with the member count" if "log10_n_members" in model.context_names else ""
    return (f"answered by the set model (members as a set: {inputs}{count}; a {model.spec.kind} head), not from "
            "summary features; ood_score and sigma_v still come from the summary features")


@dataclass(frozen=True)
class _Cluster:
    """One cluster's members relative to its centre: r_proj [Mpc/h, comoving], v_los [km/s], log10 M* [log10 Msun;
    NaN where the model needs none], apparent mag_r (None unless the model is magnitude-limited), and the cluster's
    redshift (None for projected input: the snapshot's is assumed)."""

    r_proj: np.ndarray
    v_los: np.ndarray
    log10_mstar: np.ndarray
    mag_r: np.ndarray | None
    z: float | None


def _cluster_members(members: MemberFile, selection: ModelSelection, centre: tuple[float, float, float] | None,
                     notes: list[str]) -> _Cluster:
    """The columns the model needs, read (units converted: a note each) and, for sky coordinates, projected about
    ``centre`` with the model's cosmology (None: estimated from the members, with a note)."""
    names = selection.columns(SKY if members.system == "sky" else PROJECTED)
    cosmology: Cosmology = selection.snapshot.cosmology
    values = load_members(members, names, h=cosmology.h)
    notes += unit_notes(members, names, h=cosmology.h)
    if members.system == "projected":
        r_proj, v_los = values["r_proj"], values["v_los"]
        z_c = None
    else:
        ra, dec, z = values["ra"], values["dec"], values["z"]
        if centre is None:
            centre = estimate_centre(ra, dec, z)
            notes.append(f"centre estimated from the members: ra {centre[0]:.5f}, dec {centre[1]:.5f}, "
                         f"z {centre[2]:.5f}")
        r_proj, v_los = project(ra, dec, z, centre, cosmology)
        z_c = centre[2]
    logm = values["log10_mstar"] if selection.uses_stellar_masses else np.full(len(r_proj), np.nan)
    return _Cluster(r_proj, v_los, logm, values.get("mag_r"), z_c)


def _check_redshift(z: float | None, selection: ModelSelection, far_redshift: str, path: Path,
                    notes: list[str]) -> bool:
    """Whether the cluster at ``z`` is far from the model's snapshot: a warning note, or (``far_redshift="refuse"``)
    one error line."""
    snapshot_z = selection.snapshot.redshift
    far = z is not None and bool(selection.far_from_snapshot(z))
    if far and far_redshift == "refuse":
        raise InputError(path, f"cluster redshift {z:.3f} is more than {REDSHIFT_TOLERANCE} from the model's "
                               f"snapshot z = {snapshot_z:.3f}; train at the cluster's redshift ([synth] redshift) "
                               "or allow it with --far-redshift warn", column="z")
    if far:
        notes.append(f"warning: cluster redshift {z:.3f} is far from the model's snapshot z = "
                     f"{snapshot_z:.3f}; the posterior assumes the training redshift")
    return far


def _inside_selection(cluster: _Cluster, selection: ModelSelection, path: Path, notes: list[str]
                      ) -> tuple[_Cluster, dict[str, int]]:
    """The members the model would have observed (a note when some are dropped) and how many each cut removed;
    fewer than :data:`ABSOLUTE_MIN_MEMBERS` left is one error line."""
    cyl = selection.cylinder
    inside, cut = select_members(cyl, selection.snapshot, selection.feature_set, cluster.r_proj, cluster.v_los,
                                 cluster.log10_mstar, cluster.mag_r, cluster.z)
    if (~inside).any():
        what = describe_selection(cyl, selection.feature_set)
        notes.append(f"selection: {int((~inside).sum())} of {len(inside)} members fall outside the model's selection "
                     f"({what}) and were dropped")
    kept = _Cluster(cluster.r_proj[inside], cluster.v_los[inside], cluster.log10_mstar[inside],
                    None if cluster.mag_r is None else cluster.mag_r[inside], cluster.z)
    n = len(kept.r_proj)
    if n < ABSOLUTE_MIN_MEMBERS:
        raise InputError(path, f"only {n} members inside the model's selection; expected at least "
                               f"{ABSOLUTE_MIN_MEMBERS} (the model was trained on >= {cyl['min_members']})")
    return kept, cut


def _richness(n: int, description: dict[str, Any], selection: ModelSelection, notes: list[str]) -> tuple[bool, bool]:
    """Whether ``n`` members are fewer than every training cluster had (FEW_MEMBERS) or more than any had
    (RICHNESS), each with a warning note."""
    lo_hi = description.get("training_members") or [selection.cylinder["min_members"], None]
    few = n < lo_hi[0]
    rich = lo_hi[1] is not None and n > lo_hi[1]
    if few:
        notes.append(f"warning: {n} members, fewer than the {lo_hi[0]} every training cluster had; "
                     "the posterior is an extrapolation")
    if rich:
        what = ("the richness is extrapolated" if selection.feature_set in NEEDS_COMPLETE_SAMPLE else
                "the dispersions are more precise than any the model was trained on: the width is extrapolated")
        notes.append(f"warning: {n} members, {n / lo_hi[1]:.3g}x the most any training cluster had ({lo_hi[1]}); "
                     f"{what} (flag RICHNESS)")
    return few, rich


def _feature_row(model: TrainedModel | TrainedSetModel, cluster: _Cluster, r_aperture: float, path: Path
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The model's features of the cluster as one row (1, F), and every feature; an undefined one is one error
    line. A feature model reads the row; for either family the diagnostics do (``ood_score`` against the training
    observations' features of the model's feature set, ``sigma_v``)."""
    n = len(cluster.r_proj)
    feats = compute_features(np.array([0, n]), cluster.r_proj, cluster.v_los, np.nan_to_num(cluster.log10_mstar),
                             r_aperture=r_aperture)
    x = np.array([[feats[name][0] for name in model.feature_names]])
    if not np.all(np.isfinite(x)):
        bad = [name for name in model.feature_names if not np.isfinite(feats[name][0])]
        raise InputError(path, f"features {bad} are undefined for these members (too few, or identical velocities)")
    return x, feats


def _model_inputs(model: TrainedModel | TrainedSetModel, cluster: _Cluster, x: np.ndarray) -> ModelInputs:
    """What ``model`` reads of the cluster: its feature row ``x`` (1, F) for a feature model; for a set model the
    members themselves, one set (:func:`models.set_model.set_data`: r_proj, v_los and, for the ``full`` set, log10
    M*)."""
    if not isinstance(model, TrainedSetModel):
        return x
    mstar = cluster.log10_mstar if "log10_mstar" in MEMBER_INPUTS[model.feature_set] else None
    return set_data(model, members_from_arrays(np.array([0, len(cluster.r_proj)]), cluster.r_proj, cluster.v_los,
                                               mstar))


def _posterior(model: TrainedModel | TrainedSetModel, model_dir: Path, prior: str, snapshot: Snapshot,
               x: ModelInputs) -> tuple[Any, Any]:
    """The posterior setup (grid, target prior) and the one block of the inputs ``x`` (a feature row, or one
    member set); a NaN or infinite network output is one error line (no answer rather than a NaN one)."""
    setup = prepare(model, prior, snapshot=snapshot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        block = next(setup.blocks(x))
    if block.flags[0] & FLAGS["INVALID_OUTPUT"]:  # one cluster: no answer rather than a NaN one
        what = "these members" if isinstance(model, TrainedSetModel) else "these members' features"
        raise InputError(model_dir, f"the network's log density is NaN or infinite for {what} (flag "
                                    "INVALID_OUTPUT): a bug or a corrupt model; retrain it")
    return setup, block


def _diagnose(x: np.ndarray, description: dict[str, Any], grid: np.ndarray, block: Any, *, few: bool, far: bool,
              rich: bool, notes: list[str]) -> tuple[float | None, float, int]:
    """The cluster's ``ood_score`` (None when the model has no typicality table), ``edge_mass`` and flag bits, with
    a note for each flag that is not already a warning."""
    stats = description.get("typicality")
    ood = float(ood_score(x, stats)[0]) if stats else None
    edge = float(edge_mass(grid, block.pdf)[0])
    flags = int(flag_bits(np.array([1.0 if ood is None else ood]), np.array([edge]), few_members=np.array([few]),
                          far_redshift=bool(far), rich=np.array([rich]), posterior=block.flags)[0])
    if flags & FLAGS["NO_SUPPORT"]:
        notes.append("flag NO_SUPPORT: the corrected posterior is zero everywhere on the grid (the target prior "
                     "excludes every mass the model allows); the flat posterior says nothing about this cluster")
    for name in flag_names(flags):
        if name in ("OUT_OF_DISTRIBUTION", "GRID_EDGE"):
            notes.append(f"flag {name}: " + (f"ood_score {ood:.2g} (< {OOD_LIMIT:g}: the features are unlike the "
                                             "training set's)" if name == "OUT_OF_DISTRIBUTION" else
                                             f"{edge:.2f} of the posterior lies within 0.05 dex of the grid's edge: "
                                             "the mass may be outside the training range"))
    return ood, edge, flags


def _answer(model_dir: Path, description: dict[str, Any], feature_set: str, members: MemberFile, *, prior: str,
            centre: tuple[float, float, float] | None, considered: list[dict[str, Any]],
            far_redshift: str = "warn") -> QueryResult:
    """The answer of the model in ``model_dir`` (a feature model or a set model) for ``members``: each step adds
    its notes, in order."""
    model: TrainedModel | TrainedSetModel = load_model(model_dir)
    kind = SET_KIND if isinstance(model, TrainedSetModel) else model.spec.kind
    selection = model_selection(model_dir, description, feature_set, members_path=members.path,
                                has_mag_r=members.has("mag_r"))
    path = members.path
    notes: list[str] = []
    cluster = _cluster_members(members, selection, centre, notes)
    far = _check_redshift(cluster.z, selection, far_redshift, path, notes)
    cluster, cut = _inside_selection(cluster, selection, path, notes)
    n = len(cluster.r_proj)
    few, rich = _richness(n, description, selection, notes)
    x, feats = _feature_row(model, cluster, selection.cylinder["r_aperture"], path)
    if isinstance(model, TrainedSetModel):
        notes.append(set_model_note(model))
    setup, block = _posterior(model, model_dir, prior, selection.snapshot, _model_inputs(model, cluster, x))
    ood, edge, flags = _diagnose(x, description, setup.grid, block, few=few, far=far, rich=rich, notes=notes)
    summary = {
        **{name: float(value[0]) for name, value in summary_columns(block.values).items()},
        "n_members": n, "sigma_v": float(feats["sigma_v_biweight"][0]), "prior": setup.target.name,
        "model": str(model_dir), "model_kind": kind, "model_inputs": feature_set,
        "model_inputs_code": CODES.get(feature_set, 0),
        "inputs": INPUTS.get(feature_set, ""), "models_considered": considered, "selection_cut": cut,
        "ood_score": ood, "edge_mass": edge, "flags": flags, "flag_names": flag_names(flags),
        "mass_unit": "log10 M200c [Msun/h]", "sigma_v_unit": "km/s", "notes": notes,
        "warnings": [note for note in notes if note.startswith(("warning", "flag"))],
    }
    return QueryResult(summary, setup.grid, block.pdf[0], tuple(notes))

"""A model's selection applied to a real member list: one function for ``clustermass query`` and ``infer``.

A model records the selection its observations were made under (its cylinder in ``model.json``): the projected
aperture [Mpc/h, comoving] and line-of-sight velocity window [km/s]; the stellar-mass floor [log10 Msun], which
applies to models that use stellar masses or richness; and optionally an apparent r-band limit at the snapshot's
redshift, applied as the same absolute magnitude limit at the cluster's own distance.

:func:`model_selection` reads that record from a model's description and makes the checks ``query`` and ``infer``
both need before any member is looked at (the record is there; a magnitude-limited model gets magnitudes);
:class:`ModelSelection` then names the member columns to read and tells a cluster far from the model's snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.sets import NEEDS_COMPLETE_SAMPLE, NEEDS_STELLAR_MASS
from features.sky import absolute_limit, distance_modulus
from pipeline.errors import InputError
from pipeline.snapshot import Snapshot

#: a cluster further than this in redshift from the model's snapshot is flagged REDSHIFT (or, with
#: ``far_redshift="refuse"``, not answered)
REDSHIFT_TOLERANCE = 0.05


def uses_stellar_masses(feature_set: str) -> bool:
    """True for models whose inputs (stellar masses) or selection (a complete sample above the floor) need them."""
    return feature_set in NEEDS_STELLAR_MASS or feature_set in NEEDS_COMPLETE_SAMPLE


def require_magnitudes(cylinder: Mapping[str, Any], snapshot: Snapshot, has_mag_r: bool,
                       path: str | os.PathLike[str]) -> None:
    """A magnitude-limited model needs the members' apparent ``mag_r``: one error line naming the file otherwise."""
    if cylinder.get("r_limit") is not None and not has_mag_r:
        raise InputError(path, f"expected a mag_r column (apparent r, AB): the model was trained on galaxies brighter "
                               f"than r = {cylinder['r_limit']} at z = {snapshot.redshift:.3f}", column="mag_r")


def select_members(cylinder: Mapping[str, Any], snapshot: Snapshot, feature_set: str, r_proj: np.ndarray,
                   v_los: np.ndarray, log10_mstar: np.ndarray, mag_r: np.ndarray | None,
                   z_cluster: float | None) -> tuple[np.ndarray, dict[str, int]]:
    """Which members the model would have observed, and how many each cut removed.

    ``r_proj`` [Mpc/h], ``v_los`` [km/s], ``log10_mstar`` [log10 Msun; NaN where unknown], ``mag_r`` apparent AB
    (None when the list has none; see :func:`require_magnitudes`), ``z_cluster`` the cluster's redshift (None: the
    snapshot's, for projected input).
    """
    inside = (r_proj < cylinder["r_aperture"]) & (np.abs(v_los) < cylinder["v_cut"])
    cut = {"outside_aperture_or_velocity_window": int((~inside).sum())}
    if uses_stellar_masses(feature_set):
        below = inside & ~(log10_mstar >= cylinder["log10_mstar_min"])
        cut["below_stellar_mass_floor"] = int(below.sum())
        inside &= ~below
    if cylinder.get("r_limit") is not None and mag_r is not None:
        z = snapshot.redshift if z_cluster is None else z_cluster
        absolute = np.asarray(mag_r, dtype=np.float64) - distance_modulus(z, snapshot.cosmology)
        faint = inside & ~(absolute <= absolute_limit(cylinder["r_limit"], snapshot.redshift, snapshot.cosmology))
        cut["fainter_than_the_model_limit"] = int(faint.sum())
        inside &= ~faint
    return inside, cut


def describe(cylinder: Mapping[str, Any], feature_set: str) -> str:
    """The selection in words, for notes."""
    what = f"r_proj < {cylinder['r_aperture']} Mpc/h, |v_los| < {cylinder['v_cut']} km/s"
    if uses_stellar_masses(feature_set):
        what += f", log10 M* >= {cylinder['log10_mstar_min']}"
    if cylinder.get("r_limit") is not None:
        what += f", M_r within the model's r < {cylinder['r_limit']}"
    return what


@dataclass(frozen=True)
class ModelSelection:
    """The selection a model's observations were made under, from its ``model.json``: its cylinder
    (``observations.config.cylinder``: ``r_aperture`` [Mpc/h, comoving], ``v_cut`` [km/s], ``min_members``,
    ``log10_mstar_min`` [log10 Msun], ``r_limit`` [apparent AB mag] or None), the snapshot it was trained at, and
    its feature set."""

    cylinder: Mapping[str, Any]
    snapshot: Snapshot
    feature_set: str

    @property
    def uses_stellar_masses(self) -> bool:
        return uses_stellar_masses(self.feature_set)

    def columns(self, coordinates: Sequence[str]) -> list[str]:
        """The member columns to read: ``coordinates``, then ``log10_mstar`` when the model uses stellar masses and
        ``mag_r`` when it is magnitude-limited."""
        return [*coordinates, *(["log10_mstar"] if self.uses_stellar_masses else []),
                *(["mag_r"] if self.cylinder.get("r_limit") is not None else [])]

    def far_from_snapshot(self, z: float | np.ndarray) -> np.ndarray:
        """Whether each cluster redshift ``z`` lies more than :data:`REDSHIFT_TOLERANCE` from the snapshot's."""
        return np.abs(np.asarray(z, dtype=np.float64) - self.snapshot.redshift) > REDSHIFT_TOLERANCE


def model_selection(model_dir: str | os.PathLike[str], description: Mapping[str, Any], feature_set: str, *,
                    members_path: str | os.PathLike[str], has_mag_r: bool) -> ModelSelection:
    """The selection of the model in ``model_dir`` (``description``: its parsed ``model.json``; ``feature_set``: the
    one it was trained on), checked for the member list at ``members_path``: one :class:`InputError` line naming
    the model when it does not record its cylinder and snapshot, or naming the members file when the model is
    magnitude-limited and the list has no ``mag_r`` (:func:`require_magnitudes`)."""
    observations = description.get("observations") or {}
    if not observations.get("config") or not observations.get("snapshot"):
        raise InputError(model_dir, "the model does not record its cylinder and snapshot (model.json observations); "
                                    "retrain it with `clustermass train`")
    selection = ModelSelection(observations["config"]["cylinder"], Snapshot.from_dict(observations["snapshot"]),
                               feature_set)
    require_magnitudes(selection.cylinder, selection.snapshot, has_mag_r, members_path)
    return selection

"""A model's selection applied to a real member list: one function for ``clustermass query`` and ``infer``.

A model records the selection its observations were made under (its cylinder in ``model.json``): the projected
aperture [Mpc/h, comoving] and line-of-sight velocity window [km/s]; the stellar-mass floor [log10 Msun], which
applies to models that use stellar masses or richness; and optionally an apparent r-band limit at the snapshot's
redshift, applied as the same absolute magnitude limit at the cluster's own distance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from features.sets import NEEDS_COMPLETE_SAMPLE, NEEDS_STELLAR_MASS
from features.sky import absolute_limit, distance_modulus
from pipeline.errors import InputError
from pipeline.snapshot import Snapshot


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

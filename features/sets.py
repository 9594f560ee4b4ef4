"""Feature sets matched to what an observer has, and spectroscopic incompleteness.

A model declares the inputs it needs by the feature set it was trained on:

* ``dynamics``: projected radii and line-of-sight velocities of the members only — what any redshift survey gives
  (``ra, dec, z``). No count of members enters: the number of redshifts someone happened to measure says nothing
  about the mass.
* ``richness``: + the number of members, which means something only under the model's selection (complete above
  its stellar-mass floor inside the cylinder).
* ``full``: + the members' stellar masses (every feature of :data:`features.definitions.FEATURES`).

Training of ``dynamics`` models keeps a random subset of each observation's members (:func:`thin`; its size is
drawn independently of mass, :func:`models.stage.thinned_table`) and recomputes the features from the thinned
members, so the model's widths include what incompleteness does to a dispersion.
"""

from __future__ import annotations

import numpy as np

from features.definitions import FEATURE_NAMES, compute_features
from features.members import Members

_RICHNESS = ("n_members", "log10_n_members")
_STELLAR = ("log10_mstar_total", "log10_mstar_max", "log10_mstar_median", "log10_mstar_std")

#: feature set -> its features, in table order; richest first
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "full": FEATURE_NAMES,
    "richness": tuple(n for n in FEATURE_NAMES if n not in _STELLAR),
    "dynamics": tuple(n for n in FEATURE_NAMES if n not in _STELLAR and n not in _RICHNESS),
}
#: what a member list must provide for each set (README, "Real clusters")
INPUTS: dict[str, str] = {
    "full": "positions, redshifts and stellar masses of a sample complete above the model's stellar-mass floor",
    "richness": "positions and redshifts of a sample complete above the model's stellar-mass floor",
    "dynamics": "positions and redshifts (any completeness)",
}
#: catalog code of each set (the ``model_inputs`` column)
CODES: dict[str, int] = {"dynamics": 1, "richness": 2, "full": 3}
NEEDS_STELLAR_MASS = frozenset({"full"})
NEEDS_COMPLETE_SAMPLE = frozenset({"full", "richness"})


def thin(members: Members, completeness: np.ndarray, rng: np.random.Generator) -> Members:
    """Members kept independently with probability ``completeness`` of their observation (one value per row)."""
    counts = np.diff(members.offsets)
    p = np.repeat(np.asarray(completeness, dtype=np.float64), counts)
    keep = rng.random(len(p)) < p
    kept_counts = np.bincount(np.repeat(np.arange(len(counts)), counts)[keep], minlength=len(counts))
    offsets = np.concatenate(([0], np.cumsum(kept_counts))).astype(members.offsets.dtype)
    return Members(offsets, members.r_proj[keep], members.v_los[keep], members.log10_mstar[keep],
                   members.galaxy_id[keep], members.is_true_member[keep])


def thinned_features(members: Members, completeness: np.ndarray, rng: np.random.Generator, *,
                     r_aperture: float) -> dict[str, np.ndarray]:
    """Every feature of the observations after :func:`thin` (``n_members`` counts the kept members)."""
    kept = thin(members, completeness, rng)
    return compute_features(kept.offsets, kept.r_proj, kept.v_los, kept.log10_mstar, r_aperture=r_aperture)

"""Is this posterior to be trusted? Typicality of the features, mass at the grid's edges, and flag bits.

Pure functions on arrays (the catalogs, ``clustermass query`` and validation call them):

* ``ood_score`` — typicality of a row's features against the model's training set: the fraction of training
  observations whose squared Mahalanobis distance from the training mean (raw features, the training covariance)
  is at least this row's, from a table of the training distances stored with the model. Computed by
  :func:`models.typicality.ood_score` (beside :func:`models.typicality.typicality_stats`, which the training stage
  writes: ``models/`` is below this package). 1 is the centre of the training cloud; below :data:`OOD_LIMIT` the row
  is less typical than 999 in 1000 training observations: out of distribution.
* ``edge_mass`` — the posterior probability within :data:`EDGE_WIDTH_DEX` (0.05 dex) of either end of the grid
  (the training range). Above :data:`EDGE_MASS_LIMIT` the posterior is cut by the grid: the mass may lie outside
  what the model was trained on, and every summary is suspect.

Flag bits (``flags`` column and query JSON; 0 = nothing to report):

=====  =======================  ===========================================================================
bit    name                     set when
=====  =======================  ===========================================================================
1      ``OUT_OF_DISTRIBUTION``  ``ood_score < OOD_LIMIT``
2      ``GRID_EDGE``            ``edge_mass > EDGE_MASS_LIMIT``
4      ``FEW_MEMBERS``          fewer members than every training observation had
8      ``REDSHIFT``             the cluster is further than the tolerance from the model's snapshot redshift
16     ``RICHNESS``             more members than any training observation had (richness extrapolated)
32     ``INVALID_OUTPUT``       the network's log density is NaN or +inf on the grid (a bug or a corrupt
                                model): the pdf and every summary are NaN
                                (:func:`inference.posterior.posterior_flags`)
64     ``NO_SUPPORT``           the corrected density is zero everywhere on the grid: the pdf is flat and its
                                summaries say nothing about the cluster
=====  =======================  ===========================================================================
"""

from __future__ import annotations

import numpy as np

OOD_LIMIT = 1e-3
EDGE_WIDTH_DEX = 0.05
EDGE_MASS_LIMIT = 0.01
FLAGS: dict[str, int] = {"OUT_OF_DISTRIBUTION": 1, "GRID_EDGE": 2, "FEW_MEMBERS": 4, "REDSHIFT": 8, "RICHNESS": 16,
                         "INVALID_OUTPUT": 32, "NO_SUPPORT": 64}


def edge_mass(grid: np.ndarray, pdf: np.ndarray, width: float = EDGE_WIDTH_DEX) -> np.ndarray:
    """Posterior probability within ``width`` dex of either end of ``grid`` (G,), per row of ``pdf`` (N, G)."""
    g = np.asarray(grid, dtype=np.float64)
    p = np.asarray(pdf, dtype=np.float64)
    w = np.gradient(g)  # trapezoid weights: the cell widths, halved at the two ends
    w[[0, -1]] *= 0.5
    near = (g <= g[0] + width) | (g >= g[-1] - width)
    total = (p * w).sum(axis=1)
    return np.where(total > 0, (p[:, near] * w[near]).sum(axis=1) / np.where(total > 0, total, 1.0), 0.0)


def flag_bits(ood: np.ndarray, edge: np.ndarray, *, few_members: np.ndarray | None = None,
              far_redshift: np.ndarray | bool = False, rich: np.ndarray | None = None,
              posterior: np.ndarray | None = None) -> np.ndarray:
    """The ``flags`` integer of each row from its diagnostics (see the module's table); ``posterior``: the bits
    the posterior evaluation set (``INVALID_OUTPUT``, ``NO_SUPPORT``; ``PosteriorBlock.flags``)."""
    ood = np.asarray(ood)
    out = np.where(ood < OOD_LIMIT, FLAGS["OUT_OF_DISTRIBUTION"], 0)
    out |= np.where(np.asarray(edge) > EDGE_MASS_LIMIT, FLAGS["GRID_EDGE"], 0)
    if few_members is not None:
        out |= np.where(few_members, FLAGS["FEW_MEMBERS"], 0)
    out |= np.where(np.broadcast_to(far_redshift, ood.shape), FLAGS["REDSHIFT"], 0)
    if rich is not None:
        out |= np.where(rich, FLAGS["RICHNESS"], 0)
    if posterior is not None:
        out |= np.asarray(posterior) & (FLAGS["INVALID_OUTPUT"] | FLAGS["NO_SUPPORT"])
    return out.astype(np.int32)


def flag_names(bits: int) -> list[str]:
    """The names of the bits set in ``bits``."""
    return [name for name, bit in FLAGS.items() if bits & bit]

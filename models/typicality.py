"""The typicality diagnostic: how typical a row's features are of a model's training set.

Its two halves share one table, so they live together: the training stage (:mod:`models.stage`) stores
:func:`typicality_stats` of the training features in ``model.json`` (``typicality``), and ``clustermass query`` and
the catalogs score new rows against it with :func:`ood_score`. The thresholds and flag bits built on the score are
in :mod:`inference.diagnostics`; this module sits below it (in ``models/``) because the training stage needs it too.

Pure functions on arrays; features in their raw units, as the model receives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def mahalanobis2(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of rows ``x`` (N, F) from ``mean`` (F,) under ``precision`` (F, F)."""
    d = np.asarray(x, dtype=np.float64) - np.asarray(mean, dtype=np.float64)
    return np.einsum("ni,ij,nj->n", d, np.asarray(precision, dtype=np.float64), d)


def typicality_stats(x: np.ndarray) -> dict[str, Any]:
    """What :func:`ood_score` needs of the training features ``x`` (N, F, raw units): their mean, the inverse
    covariance, and the squared Mahalanobis distances of the training rows at 0.5% steps (plus the 99.9th and
    99.99th percentiles)."""
    mean = x.mean(axis=0)
    precision = np.linalg.pinv(np.cov(x, rowvar=False))
    d2 = mahalanobis2(x, mean, precision)
    levels = np.unique(np.concatenate((np.linspace(0.0, 1.0, 201), [0.999, 0.9999])))
    return {"mean": mean.tolist(), "precision": precision.tolist(), "d2_levels": levels.tolist(),
            "d2_values": np.quantile(d2, levels).tolist()}


def ood_score(x: np.ndarray, stats: Mapping[str, Any]) -> np.ndarray:
    """Typicality in [0, 1] of feature rows ``x`` (N, F) against the training statistics ``stats`` (``mean``,
    ``precision``, ``d2_levels`` = cumulative fractions, ``d2_values`` = training distances at those fractions,
    as :func:`typicality_stats` writes them): the fraction of training rows at least as far from the training mean.
    Rows with non-finite features get 0."""
    d2 = mahalanobis2(x, stats["mean"], stats["precision"])
    levels = np.asarray(stats["d2_levels"], dtype=np.float64)
    values = np.asarray(stats["d2_values"], dtype=np.float64)
    tail = 1.0 - np.interp(d2, values, levels, left=0.0, right=1.0)
    return np.where(np.isfinite(d2), tail, 0.0)

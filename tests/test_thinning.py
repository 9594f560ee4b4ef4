"""The dynamics set's training rows: ``[train] members_kept`` is the number of members kept per observation.

Each observation draws a target count log-uniformly from ``members_kept`` = [lo, hi], independently of its host's
mass, and keeps each of its n members with probability target / n (all of them when n <= target), so the kept
count is binomial around the target and does not grow with the cluster (README, "Real clusters").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.members import Members
from models.config import TrainSection
from models.stage import thinned_table
from pipeline.errors import ConfigError


def _members(counts: np.ndarray, seed: int = 0) -> Members:
    rng = np.random.default_rng(seed)
    n = int(counts.sum())
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return Members(offsets, rng.uniform(0.0, 1.6, n).astype(np.float32), rng.normal(0.0, 700.0, n).astype(np.float32),
                   rng.uniform(9.5, 11.5, n).astype(np.float32), np.arange(n, dtype=np.int64), np.ones(n, bool))


def _table(counts: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"cluster_id": np.arange(len(counts)), "n_members": counts})


def test_kept_count_follows_members_kept_whatever_the_richness():
    # poor (400 members) and rich (4000 members) clusters alike keep 20-80 members; the kept count does not scale
    # with the cluster as a completeness fraction would
    counts = np.array([400] * 300 + [4000] * 300)
    section = TrainSection(members_kept=(20.0, 80.0))
    kept = thinned_table(_table(counts), _members(counts), section, r_aperture=1.6)["n_members"].to_numpy()
    poor, rich = kept[:300], kept[300:]
    # binomial around a target in [20, 80]: 5 sigma of the binomial at the edges
    assert kept.min() >= 20 - 5 * np.sqrt(20) and kept.max() <= 80 + 5 * np.sqrt(80)
    # log-uniform targets: the median kept count is near the geometric mean, sqrt(20 * 80) = 40, for both
    assert abs(np.median(poor) - 40.0) < 6.0 and abs(np.median(rich) - 40.0) < 6.0
    # independent of richness: a 10x richer cluster keeps the same number of members, not 10x more
    assert abs(np.median(rich) / np.median(poor) - 1.0) < 0.2


def test_clusters_with_fewer_members_than_the_target_keep_them_all():
    counts = np.array([8] * 50 + [12] * 50)
    section = TrainSection(members_kept=(100.0, 150.0))
    kept = thinned_table(_table(counts), _members(counts), section, r_aperture=1.6)["n_members"].to_numpy()
    np.testing.assert_array_equal(kept, counts)


def test_members_kept_is_checked_and_the_old_name_is_gone():
    with pytest.raises(ConfigError, match=r"members_kept.*expected \[lo, hi\] members"):
        TrainSection(members_kept=(2.0, 10.0))
    with pytest.raises(ConfigError, match="min_members_thinned"):
        TrainSection(members_kept=(5.0, 10.0), min_members_thinned=11)
    with pytest.raises(TypeError):
        TrainSection(redshifts=(5.0, 150.0))

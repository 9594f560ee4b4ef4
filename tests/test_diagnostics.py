"""Typicality, grid-edge mass and flag bits, on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from inference.diagnostics import EDGE_MASS_LIMIT, FLAGS, OOD_LIMIT, edge_mass, flag_bits, flag_names
from models.typicality import ood_score, typicality_stats


def test_ood_score_is_the_training_tail_probability_of_the_mahalanobis_distance():
    rng = np.random.default_rng(0)
    cov = np.array([[4.0, 1.5], [1.5, 1.0]])
    x = rng.multivariate_normal([1.0, -2.0], cov, 200_000)
    stats = typicality_stats(x)
    # for a Gaussian d^2 ~ chi2(2): P(d^2 >= t) = exp(-t / 2)
    probe = np.array([[1.0, -2.0], [1.0 + 2.0, -2.0 + 0.75], [1.0 + 8.0, -2.0]])
    d2 = np.einsum("ni,ij,nj->n", probe - [1.0, -2.0], np.linalg.inv(cov), probe - [1.0, -2.0])
    np.testing.assert_allclose(ood_score(probe, stats), np.exp(-d2 / 2), atol=0.01)
    far = ood_score(np.array([[50.0, 50.0], [np.nan, 0.0]]), stats)
    assert far[0] == 0.0 and far[1] == 0.0 and far[0] < OOD_LIMIT


def test_edge_mass_counts_probability_near_either_end():
    grid = np.linspace(13.0, 15.5, 501)
    centre = np.exp(-0.5 * ((grid - 14.2) / 0.1) ** 2)
    piled = np.exp(-0.5 * ((grid - 15.6) / 0.1) ** 2)  # a posterior cut by the grid's top edge
    e = edge_mass(grid, np.vstack([centre, piled]))
    # on the grid, N(15.6, 0.1) is cut at 15.5: P(> 15.45 | < 15.5) = (Phi(-1) - Phi(-1.5)) / Phi(-1) = 0.579 (0.599
    # on this grid: the 15.45 point counts whole); a 0.025 or 0.1 dex width gives 0.33 or 0.87
    assert e[0] < 1e-6 and e[1] == pytest.approx(0.579, abs=0.03)
    flat = np.ones((1, len(grid)))
    assert edge_mass(grid, flat)[0] == pytest.approx(0.1 / 2.5, rel=0.06)  # grid points on the 0.05-dex marks


def test_flag_bits_and_names():
    bits = flag_bits(np.array([0.5, 1e-4, 0.5]), np.array([0.0, 0.0, 2 * EDGE_MASS_LIMIT]),
                     few_members=np.array([False, False, True]), far_redshift=True, rich=np.array([True, False, False]))
    assert bits.tolist() == [FLAGS["REDSHIFT"] | FLAGS["RICHNESS"], FLAGS["OUT_OF_DISTRIBUTION"] | FLAGS["REDSHIFT"],
                             FLAGS["GRID_EDGE"] | FLAGS["FEW_MEMBERS"] | FLAGS["REDSHIFT"]]
    assert flag_names(int(bits[1])) == ["OUT_OF_DISTRIBUTION", "REDSHIFT"]
    assert flag_bits(np.array([0.5]), np.array([0.0])).tolist() == [0]

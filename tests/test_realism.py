"""The realism report of a synthetic box: each statistic against an independent computation, and the default
physics against the published values it is held to."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ingest.synth.box import SynthConfig, generate_box, generate_cells
from ingest.synth.realism import (
    SMF_EDGES,
    RealismAccumulator,
    host_members,
    li_white_2009,
    sigma_15,
)
from pipeline.cosmology import MDPL2
from pipeline.scaling import fit_ho19, ho19_scatter


def test_li_white_2009_matches_the_transcribed_log_schechter():
    # duncandc/lss_observations LiWhite_2009_phi: ln10 phi* 10^((x - x0)(1 + alpha)) exp(-10^(x - x0)), h = 1 units
    x = np.array([9.0, 10.0, 11.0])  # log10 M* [h^-2 Msun]
    pieces = [(0.01465, 9.6124, -1.1309), (0.01327, 10.3702, -0.9004), (0.0044, 10.7104, -1.9918)]
    expected = [math.log(10) * p * 10 ** ((xi - x0) * (1 + a)) * math.exp(-(10 ** (xi - x0)))
                for xi, (p, x0, a) in zip(x, pieces, strict=True)]
    np.testing.assert_allclose(li_white_2009(x, 1.0), expected, rtol=1e-12)
    # with h: M*[h^-2 Msun] = M*[Msun] h^2, phi[Mpc^-3] = phi[h^3 Mpc^-3] h^3
    h = 0.7
    np.testing.assert_allclose(li_white_2009(x - 2 * math.log10(h), h), np.array(expected) * h**3, rtol=1e-12)


def _toy_catalog():
    """Two hosts: A (10^14.2) with 40 satellites inside R200c and 5 outside, B (10^13.6) with 3 satellites."""
    rng = np.random.default_rng(0)
    halos = {"halo_id": np.array([1, 2]), "upid": np.array([-1, -1]), "m200c": np.array([10**14.2, 10**13.6]),
             "rvir": np.array([3.0, 3.0]), "vx": np.array([100.0, 0.0]), "vy": np.zeros(2), "vz": np.zeros(2)}
    n_in, n_out = 40, 5
    v = rng.normal(0.0, 500.0, (n_in + n_out, 3))
    galaxies = {
        "galaxy_id": np.arange(10, 10 + n_in + n_out + 5), "obs_sm": np.full(n_in + n_out + 5, 1e10),
        "upid": np.concatenate((np.full(n_in + n_out, 1), [-1, -1], np.full(3, 2))),
        "uparent_dist": np.concatenate((np.full(n_in, 0.5), np.full(n_out, 2.5), [0, 0], np.full(3, 0.2))),
        "vx": np.concatenate((v[:, 0] + 100.0, [100.0, 0.0], np.zeros(3))),
        "vy": np.concatenate((v[:, 1], [0, 0], np.zeros(3))), "vz": np.concatenate((v[:, 2], [0, 0], np.zeros(3))),
    }
    galaxies["galaxy_id"][n_in + n_out:n_in + n_out + 2] = [1, 2]  # the centrals carry their halo's id
    return halos, galaxies, v[:n_in]


def test_host_members_counts_and_dispersions():
    halos, galaxies, v_in = _toy_catalog()
    out = host_members(halos, galaxies, 0.117, MDPL2)
    order = np.argsort(halos["halo_id"])
    assert out["n_r200c"].tolist() == [40, 3] and out["n_rvir"].tolist() == [45, 3]
    members = np.vstack((v_in, np.zeros((1, 3))))  # the central is a member at the host's velocity
    expected = np.std(members, axis=0, ddof=1)
    np.testing.assert_allclose(out["los_sigma"].reshape(3, 2)[:, 0], expected, rtol=1e-9)
    assert out["los_n"].reshape(3, 2)[0].tolist() == [41, 4]
    assert np.allclose(out["log10_m200c"], np.log10(halos["m200c"][order]))


def test_msigma_ho19_and_sigma_15_recover_known_relations():
    rng = np.random.default_rng(1)
    logm = rng.uniform(14.0, 15.3, 20000)
    scatter = 0.04  # dex in sigma at fixed mass -> 0.04 / (1/3) = 0.12 dex in mass
    sigma = 10 ** (math.log10(1083.0) + (logm - 15.0) / 3.0 + scatter * rng.standard_normal(len(logm)))
    n = np.full(len(logm), 50)
    assert ho19_scatter(logm, sigma) == pytest.approx(scatter * 3.0, rel=0.05)
    fit = fit_ho19(logm, sigma)
    assert fit.slope == pytest.approx(1 / 3, rel=0.02) and fit.n_fit == ((logm >= 14.5) & (logm < 15.3)).sum()
    assert sigma_15(logm, sigma, n, efunc=1.0) == pytest.approx(1083.0, rel=0.01)
    assert ho19_scatter(logm, sigma, np.zeros(len(logm), bool)) is None  # nothing usable


def test_report_is_the_same_cell_by_cell_as_for_the_whole_box():
    config = SynthConfig(box_size=80.0, seed=4, cells_per_side=2)
    by_cell = RealismAccumulator(config.box_size, config.redshift, config.cosmology)
    for cell in generate_cells(config):
        by_cell.add(cell.halos, cell.galaxies)
    whole = RealismAccumulator(config.box_size, config.redshift, config.cosmology)
    whole.add(*generate_box(config))
    _assert_same(by_cell.report(), whole.report())  # fits sum hosts in another order: equal to rounding
    obs_sm = generate_box(config).galaxies["obs_sm"]
    assert by_cell.smf_counts.sum() == ((obs_sm >= 10 ** SMF_EDGES[0]) & (obs_sm < 10 ** SMF_EDGES[-1])).sum()


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9)
    else:
        assert a == b


def test_default_physics_looks_like_the_published_universe():
    """A 150 Mpc/h box of the default physics meets the statistics it can measure with a few hundred groups."""
    config = SynthConfig(box_size=150.0, seed=11)
    acc = RealismAccumulator(config.box_size, config.redshift, config.cosmology)
    for cell in generate_cells(config):
        acc.add(cell.halos, cell.galaxies)
    report = acc.report()
    lo, hi = report["satellite_fraction"]["accept"]
    assert lo <= report["satellite_fraction"]["measured"] <= hi
    ratio = np.array(report["smf"]["ratio"])[:6]  # bins below 10^11 Msun hold thousands of galaxies here
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio
    groups = report["satellites_per_host"]["bins"][0]
    assert groups["hosts"] > 100
    assert 12 <= groups["median_r200c"] <= 24


def test_hosts_cluster_like_linear_theory_times_bias_squared():
    """xi_hh of hosts above 10^12.5 Msun/h on 8-20 Mpc/h is b_eff^2 xi_lin (Tinker+10 bias) within 25%; unclustered
    halos (``clustering=False``) show no correlation."""
    from scipy.spatial import cKDTree

    from ingest.synth.clustering import ClusteringTables
    from pipeline.cosmology import colossus_cosmology

    r = np.array([8.0, 11.0, 15.0, 20.0])
    mids = np.sqrt(r[1:] * r[:-1])

    def xi(config):
        halos = generate_box(config).halos
        sel = (halos["upid"] == -1) & (halos["m200c"] > 10**12.5)
        p = np.column_stack([halos[k][sel] for k in "xyz"]).astype(np.float64) % config.box_size
        tree = cKDTree(p, boxsize=config.box_size)
        pairs = np.diff(tree.count_neighbors(tree, r).astype(np.float64))
        expected = len(p) * (len(p) - 1) / config.box_size**3 * 4 / 3 * np.pi * np.diff(r**3)
        return pairs / expected - 1.0, halos["m200c"][sel]

    config = SynthConfig(box_size=250.0, seed=5, log10_mmin=12.0, min_log10_mstar=None, cells_per_side=1)
    measured, m = xi(config)
    tables = ClusteringTables.build(config.cosmology, config.redshift)
    b_eff = tables.halo_bias(m).mean()
    with colossus_cosmology(config.cosmology) as cc:
        linear = b_eff**2 * cc.correlationFunction(mids, config.redshift)
    np.testing.assert_allclose(measured, linear, rtol=0.25)
    flat, _ = xi(SynthConfig(box_size=250.0, seed=5, log10_mmin=12.0, min_log10_mstar=None, cells_per_side=1,
                             clustering=False))
    assert np.all(np.abs(flat) < 0.05)

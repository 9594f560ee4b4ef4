"""Posterior correction, summaries and calibration against analytic answers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from inference import calibration, priors
from inference.posterior import P_TRAIN_FLOOR, log_prior_ratio, normalise, posterior_block
from inference.summaries import mean_std, mode, pit, quantiles
from pipeline.cosmology import MDPL2
from pipeline.errors import ConfigError, InputError
from pipeline.snapshot import Snapshot

GRID = np.linspace(13.5, 15.2, 512)
SNAP = Snapshot(1000.0, 0.8951, MDPL2)


def p_train_steep(grid):
    p = 10 ** (-1.5 * (grid - 13.5))
    return p / np.trapezoid(p, grid)


def analytic_q(x, sigma, p_train):
    """What an ideal NLL-trained network outputs: q(M|x) ∝ p_train(M) N(x; M, sigma)."""
    like = stats.norm.pdf(x[:, None], GRID[None, :], sigma)
    q = p_train[None, :] * like
    return q / np.trapezoid(q, GRID, axis=1)[:, None], like


def kl(p, q):
    p = np.maximum(p, 1e-300)
    q = np.maximum(q, 1e-300)
    return np.trapezoid(p * np.log(p / q), GRID, axis=1)


@pytest.mark.parametrize("name", ["flat", "tinker08", "training", "table"])
def test_corrected_posterior_matches_the_analytic_one(tmp_path, name):
    x = np.array([13.7, 14.0, 14.3, 14.6, 14.9])
    pt = p_train_steep(GRID)
    q, like = analytic_q(x, 0.12, pt)
    if name == "table":
        path = tmp_path / "prior.csv"
        m = np.linspace(13.0, 15.5, 200)
        np.savetxt(path, np.column_stack([m, np.exp(-0.5 * ((m - 14.2) / 0.5) ** 2)]), delimiter=",",
                   header="log10_m,density", comments="")
        target = priors.resolve(str(path), GRID, p_train=pt, snapshot=SNAP)
        prior_vals = np.exp(-0.5 * ((GRID - 14.2) / 0.5) ** 2)
    else:
        target = priors.resolve(name, GRID, p_train=pt, snapshot=SNAP)
        prior_vals = np.exp(target.log_density - target.log_density.max())
    expected = like * prior_vals[None, :]
    expected /= np.trapezoid(expected, GRID, axis=1)[:, None]
    out = posterior_block(jnp.asarray(np.log(q)), jnp.asarray(log_prior_ratio(pt, target)), jnp.asarray(GRID))
    got = np.asarray(out["pdf"], dtype=np.float64)
    assert np.all(kl(expected, got) < 0.01), kl(expected, got)
    np.testing.assert_allclose(np.trapezoid(got, GRID, axis=1), 1.0, atol=1e-4)


def tinker08_by_hand(log10_m200c: np.ndarray) -> np.ndarray:
    """ln dn/dlog10 M200c [h^3 Mpc^-3 dex^-1] of Tinker et al. (2008) for MDPL2 at SNAP's redshift, from the paper.

    f(sigma) = A [(sigma / b)^-a + 1] exp(-c / sigma^2) (their eq. 3) with Table 2's parameters at
    Delta_m = 200 / Omega_m(z) (M200c is 200 times the critical density), interpolated linearly in Delta as colossus
    does, and the redshift evolution of eqs. 5-8; dn/dln M = f(sigma) rho_m / M dln(1 / sigma)/dln M (eq. 2). Only
    sigma(R) (the linear power spectrum's variance in a top hat of Lagrangian radius R) comes from colossus.
    """
    from colossus.cosmology.cosmology import Cosmology as ColossusCosmology

    h, om, ob, sigma8, ns = 0.6777, 0.307115, 0.048206, 0.8228, 0.96  # MDPL2 (Klypin et al. 2016)
    cosmo = ColossusCosmology(name="mdpl2-by-hand", flat=True, H0=100 * h, Om0=om, Ob0=ob, sigma8=sigma8, ns=ns,
                              relspecies=False, persistence="")
    z = 1.0 / 0.8951 - 1.0
    delta_m = 200.0 * (om * (1 + z) ** 3 + 1 - om) / (om * (1 + z) ** 3)
    table = np.array([[200, 300, 400, 600, 800, 1200, 1600, 2400, 3200],
                      [0.186, 0.200, 0.212, 0.218, 0.248, 0.255, 0.260, 0.260, 0.260],  # A0
                      [1.47, 1.52, 1.56, 1.61, 1.87, 2.13, 2.30, 2.53, 2.66],  # a0
                      [2.57, 2.25, 2.05, 1.87, 1.59, 1.51, 1.46, 1.44, 1.41],  # b0
                      [1.19, 1.27, 1.34, 1.45, 1.58, 1.80, 1.97, 2.24, 2.44]])  # c
    a0_, a_, b_, c_ = (np.interp(delta_m, table[0], row) for row in table[1:])
    alpha = 10 ** (-((0.75 / np.log10(delta_m / 75.0)) ** 1.2))
    big_a, a, b = a0_ * (1 + z) ** -0.14, a_ * (1 + z) ** -0.06, b_ * (1 + z) ** -alpha
    rho_m = 2.77536627e11 * om  # comoving mean matter density, Msun/h / (Mpc/h)^3
    ln_m = np.log(10.0) * np.asarray(log10_m200c)[:, None] + np.array([-1e-3, 0.0, 1e-3])
    sigma = cosmo.sigma((3.0 * np.exp(ln_m) / (4.0 * np.pi * rho_m)) ** (1.0 / 3.0), z)
    dln_inv_sigma = -(np.log(sigma[:, 2]) - np.log(sigma[:, 0])) / 2e-3
    f = big_a * ((sigma[:, 1] / b) ** -a + 1.0) * np.exp(-c_ / sigma[:, 1] ** 2)
    return np.log(f * rho_m / np.exp(ln_m[:, 1]) * dln_inv_sigma * np.log(10.0))


def test_tinker08_prior_is_the_falling_mass_function():
    t = priors.tinker08(GRID, SNAP)
    assert np.all(np.diff(t.log_density) < 0)
    # the mass function itself, per dex, at the snapshot's redshift (6.45e-5 h^3 Mpc^-3 dex^-1 at 10^14 Msun/h); to
    # 1e-3 in ln: colossus rounds Delta_m (523.6) to an integer
    log10_m = np.array([13.6, 14.0, 14.5, 14.7, 15.0])
    by_hand = tinker08_by_hand(log10_m)
    np.testing.assert_allclose(priors.tinker08(log10_m, SNAP).log_density, by_hand, atol=2e-3)
    # 1.29 dex fewer clusters per dex at 10^14.7 than at 10^14 (a slip to z = 0 gives 1.22, to M200m 1.16)
    drop = (np.interp(14.0, GRID, t.log_density) - np.interp(14.7, GRID, t.log_density)) / np.log(10)
    assert drop == pytest.approx((by_hand[1] - by_hand[3]) / np.log(10), abs=2e-3)


def test_summaries_against_scipy():
    rng = np.random.default_rng(0)
    dists = [stats.norm(14.2, 0.13), stats.skewnorm(4.0, 14.0, 0.25), stats.norm(14.8, 0.05)]
    pdf = np.stack([d.pdf(GRID) for d in dists])
    pdf /= np.trapezoid(pdf, GRID, axis=1)[:, None]
    g = jnp.asarray(GRID)
    q = np.asarray(quantiles(g, jnp.asarray(pdf), (0.025, 0.16, 0.5, 0.84, 0.975)))
    for row, d in zip(q, dists, strict=True):
        np.testing.assert_allclose(row, d.ppf([0.025, 0.16, 0.5, 0.84, 0.975]), atol=2e-3)
    mean, std = mean_std(g, jnp.asarray(pdf))
    np.testing.assert_allclose(mean, [d.mean() for d in dists], atol=1e-3)
    np.testing.assert_allclose(std, [d.std() for d in dists], rtol=5e-3)
    modes = np.asarray(mode(g, jnp.asarray(pdf)))
    fine = np.linspace(13.5, 15.2, 200001)
    true_modes = [fine[np.argmax(d.pdf(fine))] for d in dists]
    np.testing.assert_allclose(modes, true_modes, atol=1e-3)
    truth = rng.uniform(14.0, 14.5, 3)
    np.testing.assert_allclose(pit(g, jnp.asarray(pdf), jnp.asarray(truth)), [d.cdf(t) for d, t in
                                                                           zip(dists, truth, strict=True)], atol=2e-3)


def _gaussian_posteriors(n, scale, seed=1):
    """theta ~ N(14.3, 0.3), x = theta + N(0, 0.1): the exact posterior is Gaussian; ``scale`` shrinks its width."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(14.3, 0.3, n)
    x = theta + rng.normal(0, 0.1, n)
    var = 1 / (1 / 0.3**2 + 1 / 0.1**2)
    mu = var * (14.3 / 0.3**2 + x / 0.1**2)
    pdf = stats.norm.pdf(GRID[None, :], mu[:, None], np.sqrt(var) * scale)
    return theta, pdf / np.trapezoid(pdf, GRID, axis=1)[:, None]


def test_coverage_of_a_calibrated_posterior_is_nominal_and_of_an_overconfident_one_is_not():
    theta, pdf = _gaussian_posteriors(20000, 1.0)
    p = np.asarray(pit(jnp.asarray(GRID), jnp.asarray(pdf), jnp.asarray(theta)))
    levels = np.array([0.5, 0.68, 0.9, 0.95])
    np.testing.assert_allclose(calibration.coverage(p, levels), levels, atol=0.012)
    counts, _ = calibration.pit_histogram(p, bins=10)
    np.testing.assert_allclose(counts, 1.0, atol=0.08)
    theta, pdf = _gaussian_posteriors(20000, 0.6)
    p = np.asarray(pit(jnp.asarray(GRID), jnp.asarray(pdf), jnp.asarray(theta)))
    assert calibration.coverage(p, [0.68])[0] < 0.55


def test_importance_weights_restore_coverage_under_the_target_prior():
    """Truths follow p_train (steep); posteriors are exact under a flat prior: weighting by p_flat / p_train makes
    their coverage nominal, while the unweighted coverage is off."""
    rng = np.random.default_rng(5)
    pt = p_train_steep(GRID)
    cdf = np.cumsum(pt) / np.sum(pt)
    theta = np.interp(rng.uniform(size=40000), cdf, GRID)
    x = theta + rng.normal(0, 0.15, theta.size)
    like = stats.norm.pdf(x[:, None], GRID[None, :], 0.15)
    pdf = like / np.trapezoid(like, GRID, axis=1)[:, None]
    p = np.asarray(pit(jnp.asarray(GRID), jnp.asarray(pdf), jnp.asarray(theta)))
    keep = (theta > 13.8) & (theta < 14.9)  # away from the grid edges, where the flat-prior posterior is truncated
    w = calibration.importance_weights(theta, GRID, np.zeros_like(GRID), pt)
    weighted = calibration.coverage(p[keep], [0.68, 0.95], w[keep])
    np.testing.assert_allclose(weighted, [0.68, 0.95], atol=0.02)
    unweighted_bias = calibration.bias_scatter(x[keep], theta[keep])["bias"]
    weighted_bias = calibration.bias_scatter(x[keep], theta[keep], w[keep])["bias"]
    assert abs(weighted_bias) < 0.01 and abs(unweighted_bias) < 0.01  # x is unbiased either way


def _pits(*groups: tuple[int, float]) -> np.ndarray:
    """PIT values: ``n`` rows at ``value`` for each group (0.5 lies in every central interval, 0.1 in the 95% one
    only, 0.0 in none)."""
    return np.concatenate([np.full(n, value) for n, value in groups])


def test_coverage_by_mass_range_on_a_pit_set_of_known_coverage():
    from inference.metrics import COVERAGE_MASS_RANGES, coverage_by_mass_range

    # 13.0-13.5: 60 rows in both intervals, 30 in the 95% one only, 10 in none; 13.5-14: 40 rows in both (13.5
    # itself belongs here); 14-14.5: none; 14.5-15: 10 rows in none; >=15: one row far above 15, covered;
    # 12.9 is in no range
    true = np.concatenate([np.full(100, 13.2), np.full(40, 13.5), np.full(10, 14.7), [16.0], [12.9]])
    pit_corr = _pits((60, 0.5), (30, 0.1), (10, 0.0), (40, 0.5), (10, 0.0), (1, 0.5), (1, 0.5))
    pit_raw = np.full(len(true), 0.5)  # the uncorrected posterior covers everything
    rows = coverage_by_mass_range(true, pit_corr, np.ones(len(true)), pit_raw)
    assert [(r["lo"], r["hi"]) for r in rows] == [(13.0, 13.5), (13.5, 14.0), (14.0, 14.5), (14.5, 15.0),
                                                  (15.0, None)]
    assert len(rows) == len(COVERAGE_MASS_RANGES)
    first, second, empty, top, above = rows
    assert (above["n"], above["coverage_68"]) == (1, 1.0)
    assert (first["n"], first["ess"], first["coverage_68"], first["coverage_95"]) == (100, pytest.approx(100),
                                                                                      pytest.approx(0.6), 0.9)
    assert first["se_68"] == pytest.approx(np.sqrt(0.6 * 0.4 / 100)) and first["se_95"] == pytest.approx(0.03)
    assert (first["uncorrected_68"], first["uncorrected_95"]) == (1.0, 1.0)
    assert (second["n"], second["coverage_68"], second["se_68"]) == (40, 1.0, 0.0)
    assert empty == {"lo": 14.0, "hi": 14.5, "n": 0, "ess": None, "coverage_68": None, "coverage_95": None,
                     "se_68": None, "se_95": None, "uncorrected_68": None, "uncorrected_95": None}
    assert (top["n"], top["coverage_68"], top["coverage_95"]) == (10, pytest.approx(0.0), pytest.approx(0.0))


def test_coverage_by_mass_range_is_weighted_and_its_ess_is_kish():
    from inference.metrics import coverage_by_mass_range

    true = np.full(100, 14.2)
    pit_corr = _pits((60, 0.5), (30, 0.1), (10, 0.0))
    w = np.concatenate([np.ones(90), np.full(10, 3.0)])  # the rows outside both intervals count three times
    row = coverage_by_mass_range(true, pit_corr, w, pit_corr)[2]
    assert row["coverage_68"] == pytest.approx(60 / 120) and row["coverage_95"] == pytest.approx(90 / 120)
    assert row["ess"] == pytest.approx(120**2 / (90 + 90)) == calibration.effective_sample_size(w)
    assert row["se_68"] == pytest.approx(np.sqrt(0.5 * 0.5 / 80))
    assert (row["uncorrected_68"], row["uncorrected_95"]) == (0.6, 0.9)  # unweighted
    with pytest.raises(ValueError, match="one length"):
        coverage_by_mass_range(true, pit_corr, w[:-1], pit_corr)
    # every row covered under weights whose sums round the coverage a hair above 1 (a tiny run's validation failed)
    w = np.random.default_rng(0).lognormal(0.0, 2.0, 1000)
    assert (calibration.coverage(np.full(1000, 0.5), (0.68, 0.95), w) > 1).any()
    row = coverage_by_mass_range(np.full(1000, 14.2), np.full(1000, 0.5), w, np.full(1000, 0.5))[2]
    assert row["se_68"] == row["se_95"] == 0.0 and row["coverage_95"] == pytest.approx(1.0)


def test_no_nan_or_inf_where_p_train_vanishes():
    pt = np.where((GRID > 13.6) & (GRID < 15.0), 1.0, 0.0)
    ratio = log_prior_ratio(pt, priors.flat(GRID))
    assert np.all(np.isfinite(ratio)) and ratio.max() - ratio.min() == pytest.approx(-np.log(P_TRAIN_FLOOR))
    log_q = np.full((3, len(GRID)), -np.inf)
    log_q[1] = -0.5 * ((GRID - 14.0) / 0.1) ** 2
    log_q[2, 100] = 0.0
    out = posterior_block(jnp.asarray(log_q), jnp.asarray(ratio), jnp.asarray(GRID))
    for key, value in out.items():
        assert np.all(np.isfinite(np.asarray(value))), key
    np.testing.assert_allclose(np.trapezoid(np.asarray(normalise(jnp.asarray(log_q), jnp.asarray(GRID))), GRID,
                                            axis=1), 1.0, rtol=1e-4)


def test_binned_bias_and_scatter():
    rng = np.random.default_rng(2)
    true = rng.uniform(14, 15, 50000)
    est = true + 0.03 + rng.normal(0, 0.1, true.size)
    rows = calibration.binned(est, true, np.round(np.arange(14, 15.01, 0.1), 2))
    assert len(rows) == 10
    for r in rows:
        assert r["bias"] == pytest.approx(0.03, abs=4 * r["bias_se"]) and r["scatter"] == pytest.approx(0.1, rel=0.05)
    with pytest.raises(ValueError, match="equal shape"):
        calibration.bias_scatter(est[:3], true[:4])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("log10_m,density\n13,1\n14,-0.5\n16,1\n", r"column 'density', row 2: expected a non-negative density"),
        ("log10_m,density\n14,1\n16,1\n", r"covers log10 M = \[14, 16\], expected the whole grid"),
        ("a,b,c\n1,2,3\n4,5,6\n", "expected two columns"),
        ("log10_m,density\n13,0\n16,0\n", "zero everywhere"),
    ],
)
def test_bad_prior_tables(tmp_path, content, message):
    path = tmp_path / "p.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        priors.from_table(path, GRID)


def test_unknown_prior_name():
    with pytest.raises(ConfigError, match="unknown prior 'jeffreys'"):
        priors.resolve("jeffreys", GRID, p_train=np.ones_like(GRID), snapshot=SNAP)
    with pytest.raises(ConfigError, match="needs the snapshot"):
        priors.resolve("tinker08", GRID, p_train=np.ones_like(GRID), snapshot=None)


def test_the_headline_coverage_is_over_the_reference_range_and_every_row_is_reported_beside_it():
    """calibrate's headline numbers (metrics.json coverage_68/95) are over true masses 10^14-10^15 (the reference
    study's range, as bias and scatter); rows outside it change only the all-masses coverage."""
    from inference.metrics import DensityPosteriors, calibrate

    theta, pdf = _gaussian_posteriors(4000, 1.0)
    inside = (theta >= 14.0) & (theta < 15.0)
    shifted = theta.copy()
    shifted += np.where(theta < 14.0, -0.5, np.where(theta >= 15.0, 0.5, 0.0))  # the rows outside 10^14-10^15 now
    # miss their posteriors, and stay outside
    post = DensityPosteriors(GRID, pdf, {}, pdf, np.zeros_like(GRID), np.ones_like(GRID), "flat")
    cal = calibrate(shifted, post)
    reference = calibrate(theta[inside], DensityPosteriors(GRID, pdf[inside], {}, pdf[inside], np.zeros_like(GRID),
                                                           np.ones_like(GRID), "flat"))
    assert cal.headline_corrected == pytest.approx(reference.headline_corrected)
    assert cal.headline_corrected[0] == pytest.approx(0.68, abs=0.03)
    assert cal.all_masses[0] < cal.headline_corrected[0] - 0.08 and len(cal.weights) == inside.sum()

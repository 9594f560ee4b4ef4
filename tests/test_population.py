"""Population inference from per-cluster likelihoods (issue 20.3): inference/population.py against cases with known
answers, and its refusals of bad input."""

from __future__ import annotations

import numpy as np
import pytest

from inference import population as pop

#: a posterior grid wider than the population, log10 M200c [Msun/h]
GRID = np.linspace(13.0, 15.8, 281)


def steep(x: np.ndarray) -> np.ndarray:
    """A mass function (per dex, arbitrary units) that steepens at the massive end like a halo mass function."""
    return 10 ** (-1.5 * (x - 13.5)) * np.exp(-(10 ** (2.0 * (x - 14.8))))


def draw(n: int, rng: np.random.Generator, lo: float = 13.5, hi: float = 15.4) -> np.ndarray:
    """``n`` log10 masses drawn from :func:`steep` over [lo, hi] (inverse of its tabulated CDF)."""
    xs = np.linspace(lo, hi, 20001)
    cdf = np.cumsum(steep(xs))
    return np.interp(rng.random(n), cdf / cdf[-1], xs)


def gaussian_likelihoods(observed: np.ndarray, sigma: float) -> np.ndarray:
    """Calibrated likelihoods of the true mass on GRID: Gaussian of width ``sigma`` dex around each observed value."""
    like = np.exp(-0.5 * ((GRID[None, :] - observed[:, None]) / sigma) ** 2)
    return like / np.trapezoid(like, GRID, axis=1)[:, None]


def eddington_observed() -> np.ndarray:
    """The observed values of :func:`eddington` (the same draws)."""
    rng = np.random.default_rng(2)
    true = draw(20000, rng)
    return true + rng.normal(0.0, 0.15, true.size)


@pytest.fixture(scope="module")
def eddington():
    """20,000 clusters from a steep mass function observed with 0.15-dex Gaussian errors (modes = observed values),
    their smoothed-EM deconvolution with 50 bootstrap replicates (smoothed relative to the mass function's shape, as
    the command smooths relative to Tinker08 times the selection; relative to a flat shape one bin of ten is 2.4 sd
    off, the smoothing bending the cut-off's curvature), the naive histogram and the truth."""
    rng = np.random.default_rng(2)
    true = draw(20000, rng)
    observed = true + rng.normal(0.0, 0.15, true.size)
    edges = pop.bin_edges(GRID)
    weights = pop.bootstrap_weights(true.size, 50, seed=1002)  # not the data's seed: its stream would correlate
    binned = pop.binned_counts(pop.bin_likelihoods(gaussian_likelihoods(observed, 0.15), GRID, edges), edges,
                               bootstrap=weights, reference=pop.shape_integrals(edges, steep),
                               tol=1e-6)  # unused when smoothed; unsmoothed, EM would run to spiky counts
    naive = pop.histogram(observed, edges, bootstrap=weights)
    truth = pop.histogram(true, edges)
    return edges, pop.range_mask(edges, (14.0, 15.0)), binned, naive, truth


def test_em_recovers_the_true_counts_where_the_mode_histogram_shows_eddington_bias(eddington):
    edges, inside, binned, naive, truth = eddington
    checks = pop.count_checks(binned.counts, truth.counts, binned.sd, inside)
    # the smoothed EM recovers the smooth mass function, not each bin's Poisson fluctuation about it, and its
    # bootstrap spread is that of a regularised estimator: here one bin of ten is 2.7 sd off (pull rms 1.17)
    assert checks["pull_rms_at_most_1.5"]["pass"], checks
    assert np.max(np.abs(checks["pulls"])) < 3.0, checks
    assert binned.fit.converged[0] and binned.fit.iterations[0] < pop.EM_MAX_ITERATIONS
    # unsmoothed EM run to its maximum is what the smoothing prevents: counts alternating from bin to bin
    observed = eddington_observed()
    plain = pop.binned_counts(pop.bin_likelihoods(gaussian_likelihoods(observed, 0.15), GRID, edges), edges,
                              smoothing=0.0, tol=1e-6)
    plain_checks = pop.count_checks(plain.counts, truth.counts, binned.sd, inside)
    assert not plain_checks["pull_rms_at_most_1.5"]["pass"], plain_checks
    # the naive histogram over-counts the steep end (Eddington bias): every bin above 10^14.3 high, and misses
    naive_checks = pop.count_checks(naive.counts, truth.counts, naive.sd, inside)
    assert not naive_checks["pull_rms_at_most_1.5"]["pass"], naive_checks
    steep_end = inside & (edges[:-1] >= 14.3 - 1e-9)
    assert np.all(naive.counts[steep_end] > truth.counts[steep_end])
    excess = naive.counts[steep_end].sum() - truth.counts[steep_end].sum()
    assert excess > 3 * naive.replicates[:, steep_end].sum(axis=1).std(ddof=1)
    recovered = binned.counts[steep_end].sum() - truth.counts[steep_end].sum()
    assert abs(recovered) < 2 * binned.replicates[:, steep_end].sum(axis=1).std(ddof=1)
    # counts are conserved: the expected total is the number of clusters (the extended likelihood's maximum)
    assert binned.counts.sum() == pytest.approx(20000, rel=1e-4)


def test_delta_likelihoods_give_back_the_histogram():
    rng = np.random.default_rng(5)
    masses = rng.uniform(13.5, 15.2, 3000)
    edges = pop.bin_edges(GRID)
    for shape in (None, steep):  # plain EM: the maximum of the binned likelihood of known masses is their histogram
        fit = pop.binned_counts(pop.point_bin_likelihoods(masses, edges, shape), edges, smoothing=0.0)
        np.testing.assert_allclose(fit.counts, np.histogram(masses, edges)[0], rtol=1e-4, atol=1e-3)
    # smoothed (the default), the counts of uniform masses stay within their Poisson noise of the histogram
    fit = pop.binned_counts(pop.point_bin_likelihoods(masses, edges), edges)
    hist = np.histogram(masses, edges)[0]
    inside = hist > 0
    assert np.all(np.abs(fit.counts[inside] - hist[inside]) < 3 * np.sqrt(hist[inside]))
    assert fit.counts.sum() == pytest.approx(len(masses), rel=1e-4)


def test_the_amplitude_on_true_masses_is_the_analytic_one_and_the_hierarchical_one_agrees():
    """f = A V n S: on the true masses A = N_in / (V ∫ n S dM) exactly; on 0.13-dex likelihoods of the same clusters
    the hierarchical fit (free bins outside 10^14-10^15) agrees within its bootstrap error, the modes do not.
    (Over seeds 0-11 of this set-up A_hier - A_true had mean -0.006 and sd 0.023, against se(A_hier) ~ 0.036.)"""
    rng = np.random.default_rng(1)
    volume, a_true = 4.0e4, 1.3
    selection = pop.step_selection([13.5, 13.7], [0.5])  # half the hosts of 13.5-13.7 kept, all above
    shape = lambda x: steep(x) * selection(x)  # noqa: E731
    edges = pop.bin_edges(GRID)
    expected = volume * pop.shape_integrals(edges, shape)
    n = rng.poisson(a_true * expected.sum())
    xs = np.linspace(13.0, 15.8, 40001)
    cdf = np.cumsum(shape(xs))
    true = np.maximum(np.interp(rng.random(n), cdf / cdf[-1], xs), 13.5)  # interpolation may step below S's edge
    inside = pop.range_mask(edges, (14.0, 15.0))
    weights = pop.bootstrap_weights(n, 60, seed=111)
    exact = pop.fit_amplitude(pop.point_bin_likelihoods(true, edges, shape), expected, inside, bootstrap=weights)
    fine = np.linspace(14.0, 15.0, 100001)
    analytic = np.sum((true >= 14.0) & (true < 15.0)) / (volume * np.trapezoid(shape(fine), fine))
    assert exact.amplitude == pytest.approx(analytic, rel=1e-4)
    assert exact.se == pytest.approx(analytic / np.sqrt(np.sum((true >= 14.0) & (true < 15.0))), rel=0.3)
    observed = true + rng.normal(0.0, 0.13, n)
    like = gaussian_likelihoods(observed, 0.13)
    hier = pop.fit_amplitude(pop.bin_likelihoods(like, GRID, edges, shape), expected, inside, bootstrap=weights)
    check = pop.amplitude_check(hier.amplitude, hier.se, exact.amplitude)
    assert check["pass"], (hier.amplitude, hier.se, exact.amplitude)
    assert hier.fit.converged.all()
    naive = pop.histogram(observed, edges).counts[inside].sum() / expected[inside].sum()
    assert naive > exact.amplitude + 3 * exact.se  # the modes' amplitude carries the Eddington bias


def test_accelerated_em_reaches_the_maximum_plain_em_crawls_to():
    rng = np.random.default_rng(3)
    true = draw(3000, rng)
    like = gaussian_likelihoods(true + rng.normal(0.0, 0.13, true.size), 0.13)
    edges = pop.bin_edges(GRID)
    comps = pop.bin_likelihoods(like, GRID, edges)[:, 3:-5]  # the bins the clusters can be in
    slow = pop.em(comps, tol=1e-4, max_iter=100000)
    fast = pop.em(comps, tol=1e-4, accelerate=True)
    assert fast.converged[0] and fast.iterations[0] * 3 < slow.iterations[0]
    assert fast.log_likelihood[0] >= slow.log_likelihood[0] - 0.05
    # the extended likelihood at the result is what extended_log_likelihood says
    assert pop.extended_log_likelihood(comps, fast.mu)[0] == pytest.approx(fast.log_likelihood[0], abs=1e-6)


def test_likelihoods_divide_the_pdfs_by_their_prior_and_floor_a_vanishing_prior():
    prior = np.exp(-0.5 * ((GRID - 14.0) / 0.4) ** 2)
    truth = np.exp(-0.5 * ((GRID[None, :] - np.array([[13.8], [14.6]])) / 0.1) ** 2)
    pdf = truth * prior
    pdf /= np.trapezoid(pdf, GRID, axis=1)[:, None]
    like = pop.likelihoods(pdf, prior, GRID)
    expected = truth / np.trapezoid(truth, GRID, axis=1)[:, None]
    np.testing.assert_allclose(like, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.trapezoid(like, GRID, axis=1), 1.0)
    vanishing = np.where(GRID > 15.0, 0.0, prior)  # zero where the posterior is zero too: no division by zero
    out = pop.likelihoods(pdf * (GRID <= 15.0), vanishing, GRID)
    assert np.all(np.isfinite(out)) and np.all(out[:, GRID > 15.0] == 0)


def test_bins_are_tenths_of_a_dex_and_bin_likelihoods_integrate_exactly():
    edges = pop.bin_edges(np.linspace(13.50003624, 15.47780037, 256))
    assert edges[0] == 13.5 and edges[-1] == pytest.approx(15.47780037) and 14.0 in edges and 15.0 in edges
    np.testing.assert_allclose(np.diff(edges)[:-1], 0.1)
    edges = pop.bin_edges(GRID)
    line = (0.2 + 0.3 * (GRID - 13.0))[None, :]  # linear in mass: the bin average is the value at the bin's middle
    flat = pop.bin_likelihoods(line, GRID, edges)[0]
    np.testing.assert_allclose(flat, 0.2 + 0.3 * (0.5 * (edges[1:] + edges[:-1]) - 13.0), rtol=1e-9)
    # with a step shape (0 below 13.5, 1 above), the first bins cannot hold a cluster and the rest are as flat
    shaped = pop.bin_likelihoods(line, GRID, edges, pop.step_selection([13.5, 13.6], [1.0]))[0]
    assert np.all(shaped[edges[1:] <= 13.5] == 0)
    np.testing.assert_allclose(shaped[edges[:-1] >= 13.5], flat[edges[:-1] >= 13.5], rtol=1e-9)
    np.testing.assert_allclose(pop.shape_integrals(edges), np.diff(edges))


def test_one_line_of_sight_per_host_takes_the_lowest_index():
    ids = np.array([7, 3, 7, 3, 9, 7, 5])
    los = np.array([2, 1, 0, 2, 1, 1, 0])
    rows = pop.one_per_host(ids, los)
    assert list(rows) == [1, 2, 4, 6]  # host 3 lost its los 0 (dropped): its los 1; host 9 has only los 1
    with pytest.raises(ValueError, match="host 7 has line of sight 0 twice"):
        pop.one_per_host(np.array([7, 7]), np.array([0, 0]))
    with pytest.raises(ValueError, match="equal 1-D shape"):
        pop.one_per_host(ids, los[:-1])


def test_bootstrap_weights_resample_every_cluster_count_and_are_seeded():
    w = pop.bootstrap_weights(500, 20, seed=4)
    assert w.shape == (20, 500) and np.all(w.sum(axis=1) == 500)
    np.testing.assert_array_equal(w, pop.bootstrap_weights(500, 20, seed=4))
    assert not np.array_equal(w, pop.bootstrap_weights(500, 20, seed=5))


def test_the_checks_are_computed_from_the_numbers():
    inside = np.array([False, True, True, True])
    ok = pop.count_checks([5, 100, 50, 10], [9, 95, 52, 11], [1, 5, 5, 2], inside)
    assert ok["pulls"] == [1.0, -0.4, -0.5]
    assert ok["every_bin_within_2sd"]["pass"] and ok["pull_rms_at_most_1.5"]["pass"]
    bad = pop.count_checks([5, 100, 50, 10], [9, 95, 52, 20], [1, 5, 5, 2], inside)
    assert not bad["every_bin_within_2sd"]["pass"] and bad["every_bin_within_2sd"]["bins_outside"] == 1
    assert bad["pull_rms_at_most_1.5"]["value"] == pytest.approx(np.sqrt((1 + 0.16 + 25) / 3))
    assert pop.amplitude_check(1.02, 0.03, 1.0)["pass"] and not pop.amplitude_check(1.05, 0.03, 1.0)["pass"]
    np.testing.assert_array_equal(pop.pulls([1, 0, 2], [1, 0, 0], [0, 0, 0]), [0.0, 0.0, np.inf])


def test_selection_is_a_step_table():
    cut = pop.step_selection([13.0], [])  # a plain mass cut: a run's catalog without subsampled hosts
    np.testing.assert_array_equal(cut(np.array([12.9, 13.0, 15.0])), [0.0, 1.0, 1.0])
    s = pop.step_selection([13.0, 13.5, 14.0], [0.2, 0.7])
    np.testing.assert_array_equal(s(np.array([12.9, 13.0, 13.49, 13.5, 13.99, 14.0, 15.0])),
                                  [0.0, 0.2, 0.2, 0.7, 0.7, 1.0, 1.0])
    with pytest.raises(ValueError, match="2 fractions for 3 edges"):
        pop.step_selection([13.0, 13.5, 14.0], [0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pop.step_selection([13.0, 13.5], [1.2])


@pytest.mark.parametrize("call, message", [
    (lambda: pop.likelihoods(np.ones((3, 10)), np.ones(281), GRID), r"shape \(N, 281\)"),
    (lambda: pop.likelihoods(np.ones((3, 281)), np.ones(280), GRID), "one value per grid point"),
    (lambda: pop.likelihoods(np.full((3, 281), np.nan), np.ones(281), GRID), "PDFs must be finite"),
    (lambda: pop.likelihoods(np.ones((3, 281)), np.full(281, np.inf), GRID), "prior must be finite"),
    (lambda: pop.likelihoods(-np.ones((3, 281)), np.ones(281), GRID), "non-negative"),
    (lambda: pop.likelihoods(np.ones((3, 281)), np.zeros(281), GRID), "zero everywhere"),
    (lambda: pop.likelihoods(np.zeros((3, 281)), np.ones(281), GRID), "zero likelihood everywhere"),
    (lambda: pop.bin_likelihoods(np.ones((2, 281)), GRID, [12.0, 14.0]), "outside the grid"),
    (lambda: pop.bin_likelihoods(np.ones((2, 280)), GRID, [13.0, 14.0]), r"shape \(N, 281\)"),
    (lambda: pop.point_bin_likelihoods([13.2, np.nan], [13.0, 14.0]), "masses must be finite"),
    (lambda: pop.point_bin_likelihoods([13.2, 14.5], [13.0, 14.0]), "1 masses lie outside"),
    (lambda: pop.em(np.ones((4, 2)), weights=np.ones((2, 3))), r"shape \(R, 4\)"),
    (lambda: pop.em(np.array([[1.0, 0.0], [0.0, 0.0]])), "cluster 1 has zero likelihood"),
    (lambda: pop.em(np.array([[1.0, np.inf]])), "must be finite"),
    (lambda: pop.binned_counts(np.ones((4, 3)), [13.0, 14.0, 15.0]), r"shape \(N, 2\)"),
    (lambda: pop.range_mask([13.0, 13.5, 14.0, 14.5], (13.5, 14.2)), "14.2 is not a bin edge"),
    (lambda: pop.fit_amplitude(np.ones((4, 2)), [1.0, 1.0], [False, False]), "positive inside the range"),
    (lambda: pop.histogram(np.array([[14.0]]), [13.0, 15.0]), "1-D array"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()

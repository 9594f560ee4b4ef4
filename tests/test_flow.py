"""Tests for the conditional rational-quadratic spline flow head (models/flow.py).

All locations, scales and densities are in standardised target units (standardised log10 M200c). Random test
parameters come from numpy and every JAX computation is jitted: eager op-by-op dispatch is what makes JAX tests slow
on a 2-core CPU.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from models.flow import (
    FlowParams,
    SplineFlowHead,
    flow_cdf,
    flow_log_prob,
    flow_log_prob_grid,
    flow_quantile,
    flow_sample,
    rqs_forward,
    rqs_inverse,
    spline_bins,
)

BOUND = 5.0
K = 8

fwd = jax.jit(partial(rqs_forward, bound=BOUND))
inv = jax.jit(partial(rqs_inverse, bound=BOUND))
logp = jax.jit(partial(flow_log_prob, bound=BOUND))
bins = jax.jit(partial(spline_bins, bound=BOUND))

# x values per row: inside the support, at and just inside the boundaries, and far outside
X_PROBE = np.concatenate([np.linspace(-6.0, 6.0, 61), [-BOUND, BOUND, -1e3, 1e3, -4.9999, 4.9999]]).astype(np.float32)
GRID = np.linspace(-30.0, 30.0, 20001)


def random_spline(seed: int, batch: int, n_bins: int = K, scale: float = 1.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(scale * rng.standard_normal((batch, k)), dtype) for k in (n_bins, n_bins, n_bins - 1))


def random_params(seed: int, batch: int, n_bins: int = K) -> FlowParams:
    rng = np.random.default_rng(seed + 1000)
    w, h, d = random_spline(seed, batch, n_bins)
    return FlowParams(
        shift=jnp.asarray(rng.uniform(-5.0, 5.0, batch), jnp.float32),
        log_scale=jnp.asarray(rng.uniform(-1.5, 1.5, batch), jnp.float32),
        widths=w,
        heights=h,
        derivatives=d,
    )


def grid_density(p: FlowParams) -> np.ndarray:
    """exp(log q) on GRID, (G, B), float64 for the quadrature."""
    return np.exp(np.asarray(logp(p, jnp.asarray(GRID, jnp.float32)[:, None]), np.float64))


def test_spline_bins_parametrisation():
    w, h, d = random_spline(0, 4)
    bw, bh, slopes = bins(w, h, d)
    sm = np.exp(np.asarray(w)) / np.exp(np.asarray(w)).sum(-1, keepdims=True)
    np.testing.assert_allclose(bw, 2 * BOUND * (1e-3 + (1 - K * 1e-3) * sm), rtol=1e-5)
    np.testing.assert_allclose(np.sum(bw, -1), 2 * BOUND, rtol=1e-5)
    np.testing.assert_allclose(np.sum(bh, -1), 2 * BOUND, rtol=1e-5)
    assert np.all(np.asarray(slopes) > 1e-3)
    # extreme raw values: bins never drop below min_bin * range, slopes never below min_derivative
    bw, _, slopes = bins(jnp.array([[-1e4] + [0.0] * (K - 1)]), h[:1], jnp.full((1, K - 1), -1e4))
    assert float(bw.min()) == pytest.approx(2 * BOUND * 1e-3, rel=1e-4)
    np.testing.assert_allclose(slopes, 1e-3, rtol=1e-5)
    # zero raw parameters: uniform bins and unit slopes (the identity spline)
    bw, bh, slopes = bins(jnp.zeros((1, K)), jnp.zeros((1, K)), jnp.zeros((1, K - 1)))
    np.testing.assert_allclose(bw, 2 * BOUND / K, rtol=1e-6)
    np.testing.assert_allclose(slopes, 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="min_bin"):
        spline_bins(jnp.zeros((1, 4)), jnp.zeros((1, 4)), jnp.zeros((1, 3)), bound=BOUND, min_bin=0.3)
    with pytest.raises(ValueError, match="shapes"):
        spline_bins(jnp.zeros((1, 4)), jnp.zeros((1, 4)), jnp.zeros((1, 4)), bound=BOUND)


def _tfp_check(dtype, tol_value, tol_logdet):
    from tensorflow_probability.substrates import jax as tfp

    batch = 5
    w, h, d = random_spline(1, batch, scale=1.5, dtype=dtype)
    bw, bh, slopes = bins(w, h, d)
    x = jnp.asarray(np.broadcast_to(X_PROBE[:, None], (X_PROBE.size, batch)), dtype)
    z, ld = fwd(x, w, h, d)
    assert z.dtype == ld.dtype == dtype
    # tfp evaluated eagerly (its RationalQuadraticSpline does not trace under jit), same normalised bins and slopes
    bij = tfp.bijectors.RationalQuadraticSpline(bin_widths=bw, bin_heights=bh, knot_slopes=slopes, range_min=-BOUND)
    np.testing.assert_allclose(z, bij.forward(x), atol=tol_value, rtol=tol_value)
    np.testing.assert_allclose(ld, bij.forward_log_det_jacobian(x, event_ndims=0), atol=tol_logdet, rtol=tol_logdet)
    # the inverse agrees with tfp's (a fresh z array: tfp caches forward/inverse pairs by object and would hand back
    # x itself); x = g^-1(z) is determined only to ~ulp(z) / g'(x), so compare in base units
    z_new = jnp.array(np.asarray(z))
    x_back, _ = inv(z_new, w, h, d)
    np.testing.assert_allclose((np.asarray(x_back) - bij.inverse(z_new)) * np.exp(ld), 0.0, atol=tol_value)


def quiet_tfp(test):
    """tfp's JAX substrate asks for int64 without x64 and touches a deprecated jax.core name: not our warnings."""
    test = pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64:UserWarning")(test)
    return pytest.mark.filterwarnings("ignore:jax.core.pytype_aval_mappings is deprecated:DeprecationWarning")(test)


@quiet_tfp
def test_rqs_forward_matches_tfp_eager_float32():
    # float32 round-off in the knot positions of narrow, steep bins shows up as ~1e-5 relative in the log-det
    _tfp_check(jnp.float32, 2e-5, 2e-5)


@quiet_tfp
def test_rqs_forward_matches_tfp_eager_float64():
    # in float64 the two implementations agree to round-off: the formulas are the same
    with jax.enable_x64(True):
        _tfp_check(jnp.float64, 1e-11, 1e-10)


def test_identity_outside_support_and_zero_params_identity():
    w, h, d = random_spline(2, 3)
    x = jnp.array([[-1e4, -7.0, -5.0001], [5.0001, 8.0, 1e5]])
    z, ld = fwd(x, w, h, d)
    np.testing.assert_array_equal(z, x)
    np.testing.assert_array_equal(ld, 0.0)
    x = jnp.linspace(-6, 6, 101)[:, None]
    z, ld = fwd(x, jnp.zeros((1, K)), jnp.zeros((1, K)), jnp.zeros((1, K - 1)))
    np.testing.assert_allclose(z, x, atol=2e-6)
    np.testing.assert_allclose(ld, 0.0, atol=2e-6)


def test_inverse_roundtrip_and_logdets_cancel():
    batch = 16
    w, h, d = random_spline(3, batch)
    x = jnp.asarray(np.broadcast_to(X_PROBE[:, None], (X_PROBE.size, batch)))
    z, ld = fwd(x, w, h, d)
    x_back, ldi = inv(z, w, h, d)
    # x = g^-1(z) is only as well determined as float32 z allows (error ~ ulp(z) / g'(x)): compare in base units
    np.testing.assert_allclose((x_back - x) * np.exp(ld), 0.0, atol=2e-5)
    np.testing.assert_allclose(x_back, x, atol=1e-3, rtol=1e-6)
    np.testing.assert_allclose(ld + ldi, 0.0, atol=1e-3)
    outside = np.abs(X_PROBE) > BOUND
    np.testing.assert_array_equal(np.asarray(x_back)[outside], np.asarray(x)[outside])
    np.testing.assert_array_equal(np.asarray(ldi)[outside], 0.0)
    # and from the base side (well conditioned: tight tolerance)
    xx, ldi = inv(x, w, h, d)
    z_back, ld = fwd(xx, w, h, d)
    np.testing.assert_allclose(z_back, x, atol=2e-5, rtol=1e-6)
    np.testing.assert_allclose(ld + ldi, 0.0, atol=1e-3)


def test_forward_monotone_and_logdet_is_derivative():
    batch = 8
    w, h, d = random_spline(4, batch, scale=2.5)
    x = jnp.asarray(np.broadcast_to(np.linspace(-7.0, 7.0, 4001, dtype=np.float32)[:, None], (4001, batch)))
    z, ld = fwd(x, w, h, d)
    # non-decreasing in float32 (very flat bins may round to equal values); the derivative exp(logdet) is positive
    assert np.all(np.diff(np.asarray(z), axis=0) >= 0)
    assert np.all(np.isfinite(ld))
    # the log-det is log dz/dx from autodiff, everywhere (also outside the support); in float64, since float32
    # round-off in the narrowest, steepest bins is ~1e-4 relative
    with jax.enable_x64(True):
        w, h, d = random_spline(4, batch, scale=2.5, dtype=np.float64)
        x64 = jnp.asarray(np.asarray(x), jnp.float64)
        dz = jax.jit(jax.vmap(jax.grad(lambda v, a, b, c: rqs_forward(v, a, b, c, bound=BOUND)[0])))(
            x64.reshape(-1), *(jnp.tile(a, (4001, 1)) for a in (w, h, d))
        )
        np.testing.assert_allclose(np.log(dz).reshape(4001, batch), fwd(x64, w, h, d)[1], atol=1e-9)
    np.testing.assert_allclose(np.log(dz).reshape(4001, batch), ld, atol=1e-2)


def test_density_integrates_to_one_and_cdf_quantile():
    p = random_params(5, 8)
    # rows with extreme-ish scales and shifts
    p = p._replace(shift=p.shift.at[:2].set(jnp.array([8.0, -8.0])), log_scale=p.log_scale.at[:2].set([-2.0, 1.2]))
    dens = grid_density(p)
    np.testing.assert_allclose(np.trapezoid(dens, GRID, axis=0), 1.0, atol=1e-3)
    # the closed-form CDF matches the integrated density, and the quantile function inverts it
    cum = np.concatenate([np.zeros((1, 8)), np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(GRID)[:, None], 0)])
    cdf = jax.jit(partial(flow_cdf, bound=BOUND))(p, jnp.asarray(GRID[::50], jnp.float32)[:, None])
    np.testing.assert_allclose(cdf, cum[::50], atol=2e-3)
    q = jnp.array([0.01, 0.3, 0.5, 0.9, 0.999])[:, None]
    roundtrip = jax.jit(lambda p, q: flow_cdf(p, flow_quantile(p, q, bound=BOUND), bound=BOUND))(p, q)
    np.testing.assert_allclose(roundtrip, jnp.broadcast_to(q, (5, 8)), atol=2e-5)


def test_jit_vmap_equal_eager():
    p = random_params(6, 32)
    y = jnp.linspace(-40.0, 40.0, 32)
    eager = flow_log_prob(p, y, bound=BOUND)
    assert eager.dtype == jnp.float32 and eager.shape == (32,)
    np.testing.assert_allclose(logp(p, y), eager, rtol=1e-5, atol=1e-5)
    one_row = jax.jit(
        jax.vmap(lambda pp, yy: flow_log_prob(jax.tree.map(lambda a: a[None], pp), yy[None], bound=BOUND))
    )
    np.testing.assert_allclose(one_row(p, y)[:, 0], eager, rtol=1e-5, atol=1e-5)


class Trunk(nn.Module):
    width: int = 32
    n_bins: int = K

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.width)(x))
        h = nn.gelu(nn.Dense(self.width)(h))
        return SplineFlowHead(n_bins=self.n_bins, bound=BOUND)(h)


def test_grad_finite_everywhere():
    model = Trunk()
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.uniform(size=(12, 3)), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(8), x)
    # perturb every parameter, the head's zero-initialised kernel included, so the spline is far from the identity
    params = jax.tree.map(lambda a: a + jnp.asarray(0.5 * rng.standard_normal(a.shape), a.dtype), params)
    y = jnp.array([0.0, 1.0, -3.0, 4.99, -5.0, 5.0, 6.0, -60.0, 1e3, -1e4, 2.5, 1e-3])

    def loss(prm):
        return -jnp.mean(flow_log_prob(model.apply(prm, x), y, bound=BOUND))

    def sample_mean(prm):  # reparameterised sampling is differentiable too
        return jnp.mean(flow_sample(model.apply(prm, x), jax.random.PRNGKey(0), 64, bound=BOUND))

    val, g = jax.jit(jax.value_and_grad(loss))(params)
    gs = jax.jit(jax.grad(sample_mean))(params)
    assert np.isfinite(float(val))
    for leaf in jax.tree.leaves((g, gs)):
        assert np.all(np.isfinite(leaf))
    assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(g["params"]["SplineFlowHead_0"]))


def test_samples_match_density():
    p = random_params(10, 1)
    s = np.asarray(jax.jit(partial(flow_sample, n=4000, bound=BOUND))(p, jax.random.PRNGKey(11)))
    assert s.shape == (4000, 1)
    dens = grid_density(p)[:, 0]
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(GRID))])
    res = stats.kstest(s[:, 0], lambda v: np.interp(v, GRID, cum / cum[-1]))
    assert res.pvalue > 0.01, res


def test_head_init_close_to_identity_and_log_scale_bounded():
    model = Trunk(n_bins=16)
    x = jnp.asarray(np.random.default_rng(12).uniform(size=(64, 3)), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(13), x)
    p = jax.jit(model.apply)(params, x)
    assert p.widths.shape == (64, 16) and p.heights.shape == (64, 16) and p.derivatives.shape == (64, 15)
    for a in (p.widths, p.heights, p.derivatives):
        np.testing.assert_array_equal(a, 0.0)
    assert float(jnp.max(jnp.abs(p.shift))) < 0.1 and float(jnp.max(jnp.abs(p.log_scale))) < 0.1
    y = np.linspace(-8.0, 8.0, 33, dtype=np.float32)[:, None]
    ref = stats.norm.logpdf(y, np.asarray(p.shift), np.exp(np.asarray(p.log_scale)))
    np.testing.assert_allclose(logp(p, jnp.asarray(y)), ref, atol=1e-4, rtol=1e-5)
    # log_scale stays within (-5, 5) whatever the trunk says
    head = SplineFlowHead(n_bins=4)
    hp = jax.tree.map(lambda a: a + 1e3, head.init(jax.random.PRNGKey(0), jnp.ones((1, 2))))
    out = jax.jit(head.apply)(hp, jnp.array([[1e3, -1e3], [-1e3, -1e3]]))
    assert np.all(np.isfinite(out.log_scale)) and float(jnp.max(jnp.abs(out.log_scale))) <= 5.0


def _toy(seed: int, n: int):
    """Bimodal y | x ~ 0.5 N(-m(x), s) + 0.5 N(m(x), s), m(x) = 0.5 + 1.5 x, s = 0.3, x ~ U(0, 1).

    Returns x (n, 1), y (n,) and the true log q(y | x) (n,), float64.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 1))
    m = 0.5 + 1.5 * x[:, 0]
    y = rng.choice([-1.0, 1.0], n) * m + 0.3 * rng.standard_normal(n)
    logq = np.logaddexp(stats.norm.logpdf(y, -m, 0.3), stats.norm.logpdf(y, m, 0.3)) - np.log(2.0)
    return x.astype(np.float32), y.astype(np.float32), logq


def test_tiny_fit_reaches_true_nll():
    model = Trunk(width=32, n_bins=8)
    x_tr, y_tr, _ = (jnp.asarray(a) for a in _toy(20, 4096))
    x_te, y_te, logq_te = _toy(21, 8192)
    n_epochs, n_batches = 80, 4  # 320 adam steps, batch 1024
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, n_epochs * n_batches, alpha=0.05))

    def loss(prm, x, y):
        return -jnp.mean(flow_log_prob(model.apply(prm, x), y, bound=BOUND))

    @jax.jit
    def fit(key):
        prm = model.init(key, x_tr[:1])

        def epoch(carry, key):
            def step(carry, idx):
                prm, st = carry
                g = jax.grad(loss)(prm, x_tr[idx], y_tr[idx])
                upd, st = opt.update(g, st, prm)
                return (optax.apply_updates(prm, upd), st), None

            perm = jax.random.permutation(key, x_tr.shape[0]).reshape(n_batches, -1)
            return jax.lax.scan(step, carry, perm)[0], None

        prm, _ = jax.lax.scan(epoch, (prm, opt.init(prm)), jax.random.split(key, n_epochs))[0]
        return loss(prm, x_te, y_te)

    nll_model = float(fit(jax.random.PRNGKey(22)))
    nll_true = float(-np.mean(logq_te))
    assert abs(nll_model - nll_true) < 0.05, (nll_model, nll_true)


def reference_log_prob(p: FlowParams, y: np.ndarray) -> np.ndarray:
    """log q(y | x) for every point of ``y`` (G,) and row of ``p``: (G, B), float64, independently of models.flow.

    The bins and slopes are normalised here in numpy from the module docstring's parametrisation, the spline is
    tfp's ``RationalQuadraticSpline`` (evaluated eagerly in float64), and log q = log N(g(u); 0, 1) + log g'(u)
    - log_scale with u = (y - shift) exp(-log_scale).
    """
    from tensorflow_probability.substrates import jax as tfp

    w, h, d, shift, log_scale = (np.asarray(a, np.float64) for a in (p.widths, p.heights, p.derivatives, p.shift,
                                                                     p.log_scale))
    n_bins, min_bin, min_slope = w.shape[-1], 1e-3, 1e-3

    def normalise(raw):
        e = np.exp(raw - raw.max(axis=-1, keepdims=True))
        return 2 * BOUND * (min_bin + (1 - n_bins * min_bin) * e / e.sum(axis=-1, keepdims=True))

    # softplus(d + c) with softplus(c) = 1 - min_slope: a raw 0 is a slope of exactly 1
    slopes = min_slope + np.logaddexp(0.0, d + np.log(np.expm1(1 - min_slope)))
    u = (np.asarray(y, np.float64)[:, None] - shift) * np.exp(-log_scale)  # (G, B)
    with jax.enable_x64(True):
        spline = tfp.bijectors.RationalQuadraticSpline(
            bin_widths=jnp.asarray(normalise(w)), bin_heights=jnp.asarray(normalise(h)),
            knot_slopes=jnp.asarray(slopes), range_min=-BOUND)
        z = np.asarray(spline.forward(jnp.asarray(u)))
        logdet = np.asarray(spline.forward_log_det_jacobian(jnp.asarray(u), event_ndims=0))
    return stats.norm.logpdf(z) + logdet - log_scale


@quiet_tfp
def test_log_prob_and_grid_log_prob_match_tfp_spline():
    """Both density entry points against an independent float64 reference (the training loss and the posteriors)."""
    batch = 5  # and 67 grid points: the shapes of the float64 tfp check above, whose compiled eager ops it reuses
    p = random_params(7, batch)
    p = p._replace(widths=2.0 * p.widths, heights=2.0 * p.heights, derivatives=2.0 * p.derivatives)  # far from identity
    grid = np.concatenate([np.linspace(-12.0, 12.0, X_PROBE.size - 3), [-BOUND, BOUND, 1e3]]).astype(np.float32)
    expected = reference_log_prob(p, grid)  # (G, B)

    @jax.jit  # one compilation per dtype for both entry points
    def both(q, g):
        return flow_log_prob_grid(q, g, bound=BOUND), flow_log_prob(q, g[:, None], bound=BOUND)

    # in float64 the same formula to round-off; in float32 (as trained and served) the log-det of narrow, steep
    # bins carries ~3e-5 relative round-off
    for dtype, rtol, atol in ((jnp.float64, 1e-10, 1e-9), (jnp.float32, 1e-4, 1e-3)):
        with jax.enable_x64(dtype == jnp.float64):
            on_grid, pointwise = (np.asarray(a) for a in both(FlowParams(*(jnp.asarray(np.asarray(a), dtype)
                                                                           for a in p)), jnp.asarray(grid, dtype)))
        assert on_grid.dtype == pointwise.dtype == dtype
        assert on_grid.shape == (batch, len(grid)) and pointwise.shape == (len(grid), batch)  # (B, G) and (G, B)
        np.testing.assert_allclose(on_grid.T, expected, rtol=rtol, atol=atol)
        np.testing.assert_allclose(pointwise, expected, rtol=rtol, atol=atol)

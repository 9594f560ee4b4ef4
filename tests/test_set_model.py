"""The set model (issue 19): a permutation-invariant encoder of the members, its padded size buckets, the member
cap, random thinning, its training loop, and a toy problem with a known conditional density."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from features.definitions import compute_features
from features.members import Members
from models.config import TrainSection
from models.densities import log_prob
from models.set_batches import (
    MEMBER_SCALES,
    SetData,
    bucket_index,
    bucket_widths,
    cap_sets,
    epoch_batches,
    member_inputs,
    ordered_batches,
    pad_batch,
    set_keyed_cap_keep,
    thin_sets,
    thinning_keep,
)
from models.set_encoder import POOLINGS, SetSpec, apply_set, init_set_params, set_log_prob_grid
from models.set_training import evaluate_set, fit_set
from models.spec import ModelSpec, TrainSpec
from models.stage import thinned_table
from pipeline.errors import ConfigError

FLOW = ModelSpec(kind="flow", hidden=(32, 32), n_bins=8)


def members_of(counts, seed: int = 0) -> Members:
    """Ragged members with plausible values: r_proj [Mpc/h], v_los [km/s], log10 M* [Msun]."""
    rng = np.random.default_rng(seed)
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return Members(offsets, rng.uniform(0, 1.6, n).astype("f4"), rng.normal(0, 600, n).astype("f4"),
                   rng.uniform(9.5, 11.5, n).astype("f4"), np.arange(n, dtype="i8"), np.ones(n, bool))


def set_spec(pooling: str, **kw) -> SetSpec:
    return SetSpec(pooling=pooling, phi=(16, 16), n_heads=4, n_queries=2, **kw)


def padded_inputs(rng: np.random.Generator, counts: list[int], width: int, c: int = 3):
    members = np.zeros((len(counts), width, c), np.float32)
    mask = np.zeros((len(counts), width), bool)
    for i, n in enumerate(counts):
        members[i, :n] = rng.normal(size=(n, c))
        mask[i, :n] = True
    return members, mask


#: apply_set compiled whole (one compilation per architecture and shape): op-by-op dispatch is what makes JAX tests slow
jit_apply_set = jax.jit(apply_set, static_argnums=(0, 1))


def outputs(spec, sspec, params, members, mask, context) -> np.ndarray:
    out = jit_apply_set(spec, sspec, params, jnp.asarray(members), jnp.asarray(mask), jnp.asarray(context))
    return np.concatenate([np.asarray(leaf).reshape(len(mask), -1) for leaf in jax.tree_util.tree_leaves(out)], 1)


def perturbed_params(sspec, n_context: int, *, seed: int):
    """Initial parameters of a flow set network with every weight moved by N(0, 0.3): no symmetry of the
    initialisation (e.g. zero biases) can hide a dependence the test looks for."""
    params = init_set_params(FLOW, sspec, n_context, jax.random.PRNGKey(seed))
    noise = np.random.default_rng(seed + 2)
    return jax.tree_util.tree_map(lambda a: a + 0.3 * noise.normal(size=a.shape), params)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_outputs_do_not_depend_on_the_order_of_the_members(pooling):
    rng = np.random.default_rng(1)
    sspec = set_spec(pooling)
    params = perturbed_params(sspec, 1, seed=0)
    members, mask = padded_inputs(rng, [5, 16, 1, 9], 16)
    context = rng.normal(size=(4, 1)).astype(np.float32)
    base = outputs(FLOW, sspec, params, members, mask, context)
    perm = rng.permutation(16)  # members and padding slots shuffled together
    shuffled = outputs(FLOW, sspec, params, members[:, perm], mask[:, perm], context)
    np.testing.assert_allclose(shuffled, base, rtol=1e-5, atol=1e-5)
    # and the outputs do depend on the members: a changed member changes them
    other = members.copy()
    other[1, 3] += 1.0
    assert np.abs(outputs(FLOW, sspec, params, other, mask, context)[1] - base[1]).max() > 1e-3


@pytest.mark.parametrize("pooling", POOLINGS)
def test_masked_padding_changes_nothing(pooling):
    rng = np.random.default_rng(3)
    sspec = set_spec(pooling)
    params = perturbed_params(sspec, 0, seed=1)
    members, mask = padded_inputs(rng, [3, 8, 1], 8)
    context = np.zeros((3, 0), np.float32)
    base = outputs(FLOW, sspec, params, members, mask, context)
    wide = np.concatenate([members, rng.normal(0, 100, size=(3, 24, 3)).astype(np.float32)], axis=1)  # garbage
    wide_mask = np.concatenate([mask, np.zeros((3, 24), bool)], axis=1)
    np.testing.assert_allclose(outputs(FLOW, sspec, params, wide, wide_mask, context), base, rtol=1e-5, atol=1e-5)
    garbage = np.where(mask[..., None], members, 50.0).astype(np.float32)  # the padding slots' values are never read
    np.testing.assert_allclose(outputs(FLOW, sspec, params, garbage, mask, context), base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_a_set_of_one_member_has_a_finite_density_and_gradients(pooling):
    sspec = set_spec(pooling)
    params = init_set_params(FLOW, sspec, 1, jax.random.PRNGKey(2))
    members = jnp.asarray([[[0.3, -0.8, 0.1]] + [[0.0, 0.0, 0.0]] * 7], jnp.float32)
    mask = jnp.asarray([[True] + [False] * 7])
    context = jnp.asarray([[0.0]], jnp.float32)

    def nll(p):
        return -log_prob(FLOW, apply_set(FLOW, sspec, p, members, mask, context), jnp.asarray([0.5]))[0]

    value, grads = jax.jit(jax.value_and_grad(nll))(params)
    assert np.isfinite(float(value))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    phi_grad = jax.tree_util.tree_leaves(grads["encoder"]["phi"])
    assert max(float(jnp.abs(g).max()) for g in phi_grad) > 0  # the member reaches the loss


def test_buckets_cover_every_observation_once_and_pad_only_to_the_bucket_width():
    rng = np.random.default_rng(5)
    counts = np.concatenate([rng.integers(1, 300, 400), [1, 8, 9, 16, 17, 128, 129, 256]])
    members = members_of(counts, 6)
    data = cap_sets(SetData.build(members, ("r_proj", "v_los", "log10_mstar"), y=rng.normal(size=len(counts))),
                    256, np.random.default_rng(0))
    widths = bucket_widths(256)
    assert widths == (8, 16, 32, 64, 128, 256)
    assert bucket_widths(200) == (8, 16, 32, 64, 128, 200)
    batches = epoch_batches(data, widths=widths, batch_size=32, rng=np.random.default_rng(7))
    seen = np.concatenate([b.rows[b.rows >= 0] for b in batches])
    np.testing.assert_array_equal(np.sort(seen), np.arange(data.n_obs))
    for b in batches:
        real = b.rows >= 0
        assert b.members.shape[:2] == (32, b.width) and b.width in widths
        n = data.counts[b.rows[real]]
        assert n.max() <= b.width
        smaller = [w for w in widths if w < b.width]
        assert not smaller or n.min() > max(smaller)  # nobody in a wider bucket than needed
        np.testing.assert_array_equal(b.mask[real].sum(axis=1), n)
        assert not b.mask[~real].any() and np.all(b.weight == real)
        for slot in np.flatnonzero(real)[:3]:
            i = b.rows[slot]
            np.testing.assert_array_equal(b.members[slot, : n[np.flatnonzero(real) == slot][0]],
                                          data.inputs[data.offsets[i]:data.offsets[i + 1]])
        np.testing.assert_array_equal(b.y[real], data.y[b.rows[real]])
    with pytest.raises(ValueError, match="cap the sets first"):
        bucket_index(np.array([300]), widths)


def test_member_inputs_are_scaled_as_documented():
    members = members_of([2, 1])
    x = member_inputs(members, ("v_los", "log10_mstar", "r_proj"))
    np.testing.assert_allclose(x[:, 0], members.v_los / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(x[:, 1], (members.log10_mstar - 10.5) / 0.5, rtol=1e-5)
    np.testing.assert_allclose(x[:, 2], members.r_proj, rtol=1e-6)
    assert set(MEMBER_SCALES) == {"r_proj", "v_los", "log10_mstar"}


def test_the_cap_subsample_is_seeded_and_keeps_exactly_cap_distinct_members():
    counts = np.array([10, 300, 40, 1000])
    data = SetData.build(members_of(counts), ("r_proj", "v_los"))
    a = cap_sets(data, 64, np.random.default_rng(11))
    b = cap_sets(data, 64, np.random.default_rng(11))
    c = cap_sets(data, 64, np.random.default_rng(12))
    np.testing.assert_array_equal(a.counts, [10, 64, 40, 64])
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.inputs, c.inputs)
    for i in range(4):
        orig = {tuple(r) for r in data.inputs[data.offsets[i]:data.offsets[i + 1]]}
        kept = [tuple(r) for r in a.inputs[a.offsets[i]:a.offsets[i + 1]]]
        assert len(set(kept)) == len(kept) and set(kept) <= orig
        if counts[i] <= 64:
            np.testing.assert_array_equal(a.inputs[a.offsets[i]:a.offsets[i + 1]],
                                          data.inputs[data.offsets[i]:data.offsets[i + 1]])
    # the subsample is uniform: over many draws every member of the big set is kept ~64/1000 of the time
    hits = np.zeros(1000)
    rng = np.random.default_rng(13)
    big = SetData.build(members_of([1000]), ("r_proj",))
    for _ in range(200):
        kept = cap_sets(big, 64, rng)
        hits[np.searchsorted(np.sort(big.inputs[:, 0]), kept.inputs[:, 0])] += 1
    assert abs(hits.mean() / 200 - 0.064) < 1e-9 and hits.std() / 200 < 0.03


def test_thinning_keeps_the_documented_fraction():
    rng = np.random.default_rng(21)
    counts = np.full(4000, 400)
    keep = thinning_keep(counts, (40.0, 40.0), rng)  # target 40 of 400: a tenth, binomial
    kept = np.add.reduceat(keep, np.concatenate(([0], np.cumsum(counts)[:-1])))
    assert abs(kept.mean() - 40.0) < 0.5 and abs(kept.std() - np.sqrt(400 * 0.1 * 0.9)) < 0.6
    small = thinning_keep(np.full(100, 30), (40.0, 40.0), rng)  # n <= target: everything kept
    assert small.all()
    # targets log-uniform in [lo, hi], whatever n (the kept count says nothing about the host's richness)
    wide = thin_sets(SetData.build(members_of(np.full(3000, 2000)), ("v_los",)), (5.0, 150.0), rng)
    logs = np.log(np.maximum(wide.counts, 1))
    assert abs(np.median(logs) - 0.5 * (np.log(5) + np.log(150))) < 0.1
    assert np.quantile(wide.counts, 0.99) < 170 and np.quantile(wide.counts, 0.01) < 8


def test_thinning_is_the_training_stages_rule():
    """The same seed keeps the same members as models.stage.thinned_table (the feature flow's dynamics set)."""
    counts = np.random.default_rng(31).integers(10, 300, 200)
    members = members_of(counts, 32)
    section = TrainSection(members_kept=(5.0, 150.0), seed=17)
    table = pd.DataFrame({"cluster_id": np.arange(len(counts))})
    reference = thinned_table(table, members, section, r_aperture=1.6)
    rng = np.random.default_rng(np.random.SeedSequence(section.seed, spawn_key=(0xC0,)))
    keep = thinning_keep(members.counts, section.members_kept, rng)
    kept_counts = np.add.reduceat(keep, members.offsets[:-1])
    offsets = np.concatenate(([0], np.cumsum(kept_counts)))
    mine = compute_features(offsets, members.r_proj[keep], members.v_los[keep], members.log10_mstar[keep],
                            r_aperture=1.6)
    for name in ("n_members", "sigma_v_std", "r_mean", "log10_mstar_total"):
        np.testing.assert_array_equal(mine[name], reference[name].to_numpy())


def test_validation_loss_is_the_mean_over_observations_whatever_the_batching():
    rng = np.random.default_rng(41)
    counts = rng.integers(1, 17, 37)
    sspec = set_spec("moments", cap=16)  # widths 8, 16: two buckets (each a compilation per batch size)
    data = SetData.build(members_of(counts, 42), sspec.inputs, context=rng.normal(size=(37, 2)),
                         y=rng.normal(size=37))
    params = init_set_params(FLOW, sspec, 2, jax.random.PRNGKey(3))
    params = jax.tree_util.tree_map(lambda a: a + 0.2 * np.random.default_rng(5).normal(size=a.shape), params)
    b = pad_batch(data, np.arange(data.n_obs), 16)  # every observation in one batch, no filler rows
    per_row = -np.asarray(jax.jit(lambda p: log_prob(FLOW, apply_set(FLOW, sspec, p, b.members, b.mask, b.context),
                                                     b.y))(params))
    for batch_size in (5, 64):
        assert evaluate_set(FLOW, sspec, params, data, batch_size=batch_size) == pytest.approx(
            per_row.mean(), rel=1e-5, abs=1e-5)
    rows = np.concatenate([b.rows[b.rows >= 0] for b in ordered_batches(data, widths=sspec.widths, batch_size=8)])
    np.testing.assert_array_equal(np.sort(rows), np.arange(37))


def test_grid_density_is_normalised_matches_pointwise_and_shifts_with_the_offset():
    rng = np.random.default_rng(51)
    counts = rng.integers(1, 17, 12)
    sspec = set_spec("attention", cap=16)  # widths 8, 16
    data = SetData.build(members_of(counts, 52), sspec.inputs, y=rng.normal(size=12))
    ensemble = [init_set_params(FLOW, sspec, 0, jax.random.PRNGKey(k)) for k in (4, 5)]
    ensemble = [jax.tree_util.tree_map(lambda a, k=k: a + 0.05 * np.random.default_rng(k).normal(size=a.shape), p)
                for k, p in enumerate(ensemble)]
    grid = np.linspace(-6, 6, 801)
    lp = set_log_prob_grid(FLOW, sspec, ensemble, data, grid, batch_size=5)
    np.testing.assert_allclose(np.trapezoid(np.exp(lp), grid, axis=1), 1.0, atol=2e-3)
    # pointwise: the equal-weight mixture of the two networks at the grid points, rows in data order
    @jax.jit
    def one_row(p, members, mask, context, points):
        return log_prob(FLOW, apply_set(FLOW, sspec, p, members, mask, context), points[:, None])[:, 0]

    def pointwise(i: int, points: np.ndarray) -> np.ndarray:
        b = pad_batch(data, np.array([i]), 64)
        per = [np.asarray(one_row(p, b.members, b.mask, b.context, jnp.asarray(points, jnp.float32)))
               for p in ensemble]
        return np.logaddexp(*per) - np.log(2)

    for i in (0, 7):
        np.testing.assert_allclose(lp[i], pointwise(i, grid), rtol=1e-4, atol=1e-4)
    # a model of residuals: row j's density at grid point g is the residual density at g - offset_j
    offset = rng.normal(size=12)
    shifted = set_log_prob_grid(FLOW, sspec, ensemble, data, grid, offset_std=offset, batch_size=5)
    for j in (3, 7):
        np.testing.assert_allclose(shifted[j], pointwise(j, grid - offset[j]), rtol=1e-4, atol=1e-4)


def test_set_spec_refuses_bad_values():
    with pytest.raises(ConfigError, match="pooling"):
        SetSpec(pooling="sum")
    with pytest.raises(ConfigError, match="inputs"):
        SetSpec(inputs=("r_proj", "colour"))
    with pytest.raises(ConfigError, match="n_heads"):
        SetSpec(phi=(30,), n_heads=4)
    with pytest.raises(ConfigError, match="cap"):
        SetSpec(cap=0)
    assert SetSpec.from_dict(SetSpec(pooling="attention").to_dict()) == SetSpec(pooling="attention")


# -- a toy problem with a known answer: sigma_v ∝ M^(1/3) ---------------------------------------------------------
LO, HI = 13.5, 15.0  # log10 M200c [Msun/h], flat


def sigma_of(log_m: np.ndarray) -> np.ndarray:
    """Velocity dispersion [km/s] of the toy clusters: 600 km/s at 10^14.5 Msun/h, ∝ M^(1/3)."""
    return 600.0 * 10 ** ((log_m - 14.5) / 3)


def toy_clusters(n: int, seed: int) -> tuple[Members, np.ndarray]:
    """Clusters of 10-60 members (independent of mass), velocities ~ N(0, sigma(M)), radii uninformative."""
    rng = np.random.default_rng(seed)
    log_m = rng.uniform(LO, HI, n)
    counts = rng.integers(10, 61, n)
    m = members_of(counts, seed + 1)
    v = (rng.normal(size=int(counts.sum())) * np.repeat(sigma_of(log_m), counts)).astype("f4")
    return Members(m.offsets, m.r_proj, v, m.log10_mstar, m.galaxy_id, m.is_true_member), log_m


def true_nll(members: Members, log_m: np.ndarray) -> float:
    """Mean -log p(log10 M | velocities) per dex, exact up to quadrature (flat prior on [LO, HI])."""
    g = np.linspace(LO, HI, 1501)
    s = sigma_of(g)[None, :]
    sum_v2 = np.add.reduceat(members.v_los.astype(np.float64) ** 2, members.offsets[:-1])[:, None]
    n = members.counts[:, None]
    log_like = lambda sig: -n * np.log(sig) - 0.5 * sum_v2 / sig**2  # noqa: E731
    ll = log_like(s)
    top = ll.max(axis=1, keepdims=True)
    log_evidence = np.log(np.trapezoid(np.exp(ll - top), g, axis=1)) + top[:, 0]
    return float(-np.mean(log_like(sigma_of(log_m)[:, None])[:, 0] - log_evidence))


def test_a_small_set_model_learns_the_true_conditional():
    train_m, train_y = toy_clusters(3000, 60)
    val_m, val_y = toy_clusters(800, 61)
    test_m, test_y = toy_clusters(1500, 62)
    mean, std = train_y.mean(), train_y.std()
    sspec = SetSpec(inputs=("r_proj", "v_los"), phi=(32, 32), pooling="moments", cap=64)

    def data(m, y):
        return SetData.build(m, sspec.inputs, context=np.log10(m.counts)[:, None] - 1.5, y=(y - mean) / std)

    train = TrainSpec(ensemble=1, batch_size=256, max_epochs=40, patience=8, learning_rate=3e-3)
    params, hist = fit_set(FLOW, sspec, train_data=data(train_m, train_y), val_data=data(val_m, val_y),
                           train=train, seed=0)
    nll_dex = evaluate_set(FLOW, sspec, params, data(test_m, test_y), batch_size=256) + np.log(std)
    prior_nll = np.log(HI - LO)  # a constant: the flat prior, 0.405 nats per dex
    best = true_nll(test_m, test_y)  # about -0.45
    assert best < prior_nll - 0.6
    assert nll_dex < prior_nll - 0.5, (nll_dex, prior_nll, best)
    assert nll_dex < best + 0.1, (nll_dex, best)  # 0.07 nats above it in 40 epochs
    assert hist.best_epoch >= 0 and len(hist.val_loss) == len(hist.train_loss)


def test_the_prediction_subsample_of_a_large_set_depends_on_that_set_alone():
    """A set above the cap keeps the same members at prediction whatever the other rows and the members' order
    (query on one cluster and the same cluster's infer row agree), a different seed draws another subsample."""
    counts = np.array([300, 20, 500])
    data = SetData.build(members_of(counts), ("r_proj", "v_los"))
    alone = data.take(np.array([2]))
    shuffled = alone.with_members(np.ones(500, bool))
    perm = np.random.default_rng(5).permutation(500)
    shuffled = SetData(shuffled.offsets, shuffled.inputs[perm], shuffled.context, shuffled.y)

    def kept(d: SetData, row: int, seed: int = 0) -> set:
        k = d.with_members(set_keyed_cap_keep(d, 64, seed))
        return {tuple(r) for r in k.inputs[k.offsets[row]:k.offsets[row + 1]]}

    together = kept(data, 2)
    assert len(together) == 64 and together == kept(alone, 0) == kept(shuffled, 0)
    assert kept(data, 2, seed=1) != together
    assert len(kept(data, 1)) == 20

"""Bayes by Backprop (models.bayes): the KL, the reparameterised draws, the ELBO, a tiny fit, model files, config."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import bayes
from models.config import TrainSection
from models.densities import log_prob
from models.io import load_model, save_model
from models.model import TrainedModel
from models.networks import Network
from models.prior import TrainingPrior
from models.spec import ModelSpec, Standardizer, TrainSpec
from pipeline.config import section
from pipeline.errors import ConfigError, InputError

TOY_SPEC = ModelSpec(kind="mdn", hidden=(32, 32), n_components=1)
TOY_TRAIN = TrainSpec(epistemic="bayes_by_backprop", batch_size=128, max_epochs=40, patience=8, learning_rate=1e-2,
                      weight_draws=8)


def hand_made(loc: dict, sigma: dict) -> dict:
    rho = {k: np.log(np.expm1(np.asarray(v, np.float64))).astype(np.float32) for k, v in sigma.items()}
    return {"loc": {k: np.asarray(v, np.float32) for k, v in loc.items()}, "rho": rho}


def test_kl_matches_the_analytic_gaussian_formula():
    loc = {"a": [0.5, -1.0, 0.0], "b": [[2.0], [0.1]]}
    sig = {"a": [0.1, 1.0, 3.0], "b": [[0.5], [0.02]]}
    var = hand_made(loc, sig)
    for s in (1.0, 0.3):
        m = np.concatenate([np.ravel(v) for v in loc.values()])
        sd = np.concatenate([np.ravel(v) for v in sig.values()])
        expected = np.sum(np.log(s / sd) + (sd**2 + m**2) / (2 * s**2) - 0.5)
        assert float(bayes.kl_divergence(var, s)) == pytest.approx(expected, rel=1e-5)
    at_prior = hand_made({"w": [0.0, 0.0]}, {"w": [0.7, 0.7]})
    assert float(bayes.kl_divergence(at_prior, 0.7)) == pytest.approx(0.0, abs=1e-6)


def test_sample_params_have_the_posterior_mean_and_std():
    var = hand_made({"w": [0.5, -2.0, 0.0]}, {"w": [0.1, 1.5, 0.01]})
    n = 20_000
    draws = jax.vmap(bayes.sample_params, in_axes=(None, 0))(var, jax.random.split(jax.random.PRNGKey(1), n))["w"]
    draws = np.asarray(draws)
    sd = np.array([0.1, 1.5, 0.01])
    np.testing.assert_allclose(draws.mean(axis=0), [0.5, -2.0, 0.0], atol=float(4 * sd.max() / np.sqrt(n)))
    np.testing.assert_allclose(draws.std(axis=0), sd, rtol=0.03)
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 0.03  # mean field: independent weights


def test_init_variational_matches_init_params_and_the_initial_std():
    from models.networks import init_params

    key = jax.random.PRNGKey(3)
    var = bayes.init_variational(TOY_SPEC, 2, key, init_std=0.02)
    plain = init_params(TOY_SPEC, 2, key)
    assert jax.tree_util.tree_structure(var["loc"]) == jax.tree_util.tree_structure(plain)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, var["loc"], plain))
    for s in jax.tree_util.tree_leaves(bayes.sigma(var)):
        np.testing.assert_allclose(np.asarray(s), 0.02, rtol=1e-5)
    assert bayes.n_weights(var) == 2 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3


def test_predictive_params_are_deterministic_under_a_seed_and_differ_across_seeds():
    var = bayes.init_variational(TOY_SPEC, 2, jax.random.PRNGKey(0), init_std=0.05)
    a, b, c = (bayes.predictive_params(var, 4, seed) for seed in (7, 7, 8))
    assert len(a) == 4
    leaves = jax.tree_util.tree_leaves
    assert all(np.array_equal(u, v) for pa, pb in zip(a, b, strict=True) for u, v in zip(leaves(pa), leaves(pb),
                                                                                          strict=True))
    assert not np.allclose(leaves(a[0])[0], leaves(c[0])[0])
    assert not np.allclose(leaves(a[0])[0], leaves(a[1])[0])  # the draws of one seed differ from each other
    train = TrainSpec(epistemic="bayes_by_backprop", weight_draws=3, seed=7)
    expanded = bayes.predictive_members((var,), train)
    first = leaves(bayes.predictive_params(var, 3, 7)[0])[0]
    assert len(expanded) == 3 and np.array_equal(leaves(expanded[0])[0], first)
    assert bayes.predictive_members(("p0", "p1"), TrainSpec()) == ("p0", "p1")  # ensembles: members unchanged


@pytest.mark.parametrize("spec", [TOY_SPEC, ModelSpec(kind="flow", hidden=(16,), n_bins=4)], ids=["mdn", "flow"])
def test_elbo_is_nll_plus_kl_per_observation_with_finite_gradients(spec):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
    y = jnp.asarray(rng.normal(size=64), jnp.float32)
    var = bayes.init_variational(spec, 2, jax.random.PRNGKey(0), init_std=0.01)
    key = jax.random.PRNGKey(5)
    loss = bayes.ElboLoss(spec, n_train=1000, prior_scale=1.0)

    @jax.jit
    def check(v):
        out = Network(spec).apply({"params": bayes.sample_params(v, key)}, x)
        expected = -jnp.mean(log_prob(spec, out, y)) + bayes.kl_divergence(v, 1.0) / 1000
        return jax.value_and_grad(loss)(v, x, y, key), expected

    (value, grads), expected = check(var)
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    for part in ("loc", "rho"):
        g = np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(grads[part])])
        assert np.all(np.isfinite(g)) and np.any(g != 0), part


def toy_1d(n: int, seed: int):
    """y = x + N(0, 0.1^2), x uniform in [-1, 1]: the predictive must widen far outside the inputs seen."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    return x, (x[:, 0] + 0.1 * rng.normal(size=n)).astype(np.float32)


@pytest.fixture(scope="module")
def toy_fit():
    x, y = toy_1d(2000, 0)
    var, hist = bayes.fit_bayes_by_backprop(TOY_SPEC, x_train=x[:1600], y_train=y[:1600], x_val=x[1600:],
                                            y_val=y[1600:], train=TOY_TRAIN, seed=0)
    return var, hist, (x, y)


@jax.jit
def _apply(params, x):
    return Network(TOY_SPEC).apply({"params": params}, x)


def draw_means(var, x: np.ndarray, n_draws: int = 16) -> np.ndarray:
    """Predicted mean (the single MDN component's) per weight draw: (D, N)."""
    draws = bayes.predictive_params(var, n_draws, 0)
    return np.stack([np.asarray(_apply(p, jnp.asarray(x)).means[:, 0]) for p in draws])


def test_a_tiny_fit_learns_and_is_less_certain_far_from_the_data(toy_fit):
    var, hist, _ = toy_fit
    assert hist.train_loss[-1] < hist.train_loss[0] - 0.5  # the negative ELBO falls
    assert min(hist.val_loss) < hist.val_loss[0] - 0.1 and hist.best_epoch == int(np.argmin(hist.val_loss))
    inside = np.linspace(-0.8, 0.8, 9, dtype=np.float32)[:, None]
    means = draw_means(var, inside)
    np.testing.assert_allclose(means.mean(axis=0), inside[:, 0], atol=0.06)  # it learnt y = x
    far = np.array([[-6.0], [-4.0], [4.0], [6.0]], np.float32)
    spread_in = draw_means(var, inside).std(axis=0).mean()
    spread_far = draw_means(var, far).std(axis=0).mean()
    assert spread_far > 2 * spread_in, (spread_in, spread_far)
    # the validation criterion is the NLL of the predictive mixture over predictive_params(var, weight_draws, seed)
    x, y = toy_1d(2000, 0)
    lps = []
    for p in bayes.predictive_params(var, TOY_TRAIN.weight_draws, 0):
        lps.append(np.asarray(log_prob(TOY_SPEC, _apply(p, jnp.asarray(x[1600:])), jnp.asarray(y[1600:]))))
    nll = -np.mean(np.logaddexp.reduce(np.stack(lps), axis=0) - np.log(len(lps)))
    assert nll == pytest.approx(min(hist.val_loss), abs=1e-4)


def test_the_elbo_criterion_scores_the_validation_negative_elbo():
    x, y = toy_1d(600, 2)
    train = TrainSpec(epistemic="bayes_by_backprop", batch_size=100, max_epochs=4, patience=4, weight_draws=4)
    var, hist = bayes.fit_bayes_by_backprop(TOY_SPEC, x_train=x[:500], y_train=y[:500], x_val=x[500:],
                                            y_val=y[500:], train=train, seed=3, criterion="elbo")
    draws = bayes.predictive_params(var, 4, 3)
    lp = np.stack([np.asarray(log_prob(TOY_SPEC, _apply(p, jnp.asarray(x[500:])), jnp.asarray(y[500:])))
                   for p in draws])
    expected = -lp.mean() + float(bayes.kl_divergence(var, train.prior_scale)) / 500
    assert min(hist.val_loss) == pytest.approx(expected, abs=1e-4)
    assert min(hist.val_loss) > -np.mean(np.logaddexp.reduce(lp, axis=0) - np.log(4))  # KL > 0, Jensen
    with pytest.raises(ValueError, match="criterion must be one of"):
        bayes.fit_bayes_by_backprop(TOY_SPEC, x_train=x, y_train=y, x_val=x, y_val=y, train=train, seed=0,
                                    criterion="waic")


def test_fit_refuses_point_models_and_dropout():
    x, y = toy_1d(100, 1)
    args = dict(x_train=x, y_train=y, x_val=x, y_val=y, train=TOY_TRAIN, seed=0)
    with pytest.raises(ValueError, match="density model"):
        bayes.fit_bayes_by_backprop(ModelSpec(kind="mse", hidden=(4,)), **args)
    with pytest.raises(ValueError, match="dropout must be 0"):
        bayes.fit_bayes_by_backprop(ModelSpec(kind="mdn", hidden=(4,), dropout=0.1), **args)


def test_save_and_load_round_trip_the_variational_member_exactly(tmp_path, toy_fit):
    var, hist, (x, y) = toy_fit
    model = TrainedModel(spec=TOY_SPEC, train=TOY_TRAIN, feature_names=("x",), x_scaler=Standardizer.fit(x),
                         y_scaler=Standardizer.fit(y), members=(var,), training_prior=TrainingPrior.estimate(y),
                         data_digest="0" * 64, split={"train_rows": 1600, "val_rows": 400})
    d = save_model(tmp_path / "m", model, histories=[hist])
    back = load_model(d, features=["x"])
    assert back.train == TOY_TRAIN and back.train.epistemic == "bayes_by_backprop" and len(back.members) == 1
    same_tree = jax.tree_util.tree_structure(back.members[0]) == jax.tree_util.tree_structure(var)
    assert same_tree and set(back.members[0]) == {"loc", "rho"}
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).dtype == np.asarray(b).dtype,
        back.members[0], var))
    meta = json.loads((d / "model.json").read_text())
    assert meta["epistemic"]["method"] == "bayes_by_backprop"
    assert meta["epistemic"]["prior_scale"] == 1.0 and meta["epistemic"]["weight_draws"] == 8
    assert meta["training"]["epistemic"] == "bayes_by_backprop"
    assert b"pickle" not in (d / "member-0.msgpack").read_bytes()[:64]
    # a variational file read as an ordinary network (or the reverse) is refused
    meta["training"]["epistemic"] = "ensemble"
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"do not fit the described network|shapes do not match"):
        load_model(d)


def test_epistemic_configuration_is_validated_with_one_line_errors():
    assert TrainSpec().epistemic == "ensemble" and TrainSection().epistemic == "ensemble"
    with pytest.raises(ConfigError, match=r"epistemic: expected one of \['ensemble', 'mc_dropout', 'bayes_by_back"):
        TrainSection(epistemic="laplace")
    with pytest.raises(ConfigError, match=r"epistemic = 'mc_dropout' requires dropout > 0 and mc_samples > 1"):
        TrainSection(epistemic="mc_dropout", mc_samples=8)
    with pytest.raises(ConfigError, match=r"epistemic = 'mc_dropout' requires dropout > 0 and mc_samples > 1"):
        TrainSection(epistemic="mc_dropout", dropout=0.1)
    with pytest.raises(ConfigError, match=r"epistemic = 'mc_dropout' requires mc_samples > 1"):
        TrainSpec(epistemic="mc_dropout")
    with pytest.raises(ConfigError, match=r"bayes_by_backprop.*set dropout = 0"):
        TrainSection(epistemic="bayes_by_backprop", dropout=0.2)
    with pytest.raises(ConfigError, match="prior_scale > 0, weight_draws >= 1 and posterior_init_std > 0"):
        TrainSpec(epistemic="bayes_by_backprop", prior_scale=0.0)
    with pytest.raises(ConfigError, match="weight_draws"):
        TrainSection(weight_draws=0)
    with pytest.raises(ConfigError, match=r"^run\.toml \[train\]: epistemic = 'mc_dropout' requires") as info:
        section(TrainSection, {"epistemic": "mc_dropout"}, "run.toml [train]")
    assert "\n" not in str(info.value)
    ok = section(TrainSection, {"epistemic": "mc_dropout", "dropout": 0.1, "mc_samples": 8}, "run.toml [train]")
    assert ok.specs("flow")[1].epistemic == "mc_dropout"
    bbb = section(TrainSection, {"epistemic": "bayes_by_backprop", "prior_scale": 0.5, "weight_draws": 12},
                  "run.toml [train]")
    _, train = bbb.specs("flow")
    assert (train.epistemic, train.prior_scale, train.weight_draws, train.ensemble) == ("bayes_by_backprop", 0.5, 12, 1)
    assert bbb.specs("mse")[1].epistemic == "ensemble"  # the point baseline stays a plain ensemble


def test_train_model_with_bayes_by_backprop_predicts_the_mixture_over_weight_draws(tmp_path):
    from models.model import epistemic_spread, log_prob_grid, train_model, weight_sets

    x, y = toy_1d(1000, 2)
    model, hist = train_model(x, y, np.arange(len(y)), feature_names=["x"], spec=TOY_SPEC,
                              train=TrainSpec(epistemic="bayes_by_backprop", batch_size=128, max_epochs=2,
                                              weight_draws=4))
    assert len(model.members) == 1 and len(hist) == 1 and set(model.members[0]) == {"loc", "rho"}
    assert weight_sets(model).size == 4
    grid = np.linspace(-3.0, 3.0, 601)
    lp = log_prob_grid(model, x[:50], grid)
    np.testing.assert_allclose(np.trapezoid(np.exp(lp), grid, axis=1), 1.0, atol=2e-3)
    singles = [log_prob_grid(TrainedModel(**{**model.__dict__, "members": (p,),
                                             "train": TrainSpec(weight_draws=1)}), x[:50], grid)
               for p in bayes.predictive_params(model.members[0], 4, model.train.seed)]
    np.testing.assert_allclose(lp, np.logaddexp.reduce(np.stack(singles), axis=0) - np.log(4), rtol=1e-5, atol=1e-5)
    assert (epistemic_spread(model, x[:20], grid) > 0).all()
    save_model(tmp_path / "m", model)
    np.testing.assert_array_equal(log_prob_grid(load_model(tmp_path / "m"), x[:50], grid), lp)

"""Models and training: a toy problem with a known conditional density, ensembles, model files, baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.io import load_model, save_model
from models.model import host_split, log_prob, log_prob_grid, predict_point, train_model
from models.msigma import fit_msigma
from models.prior import TrainingPrior
from models.spec import History, ModelSpec, TrainSpec
from models.training import evaluate, fit
from pipeline.errors import ConfigError, InputError

A = 1.5 * np.log(10)  # p(y) ∝ 10^(-1.5 y): a steep "mass function" on [0, 1.5]


def toy(n: int, seed: int):
    """y from a steep power law; x = (y + heteroscedastic noise, y^2 + noise)."""
    rng = np.random.default_rng(seed)
    y = -np.log(1 - rng.uniform(size=n) * (1 - np.exp(-A * 1.5))) / A
    x = np.column_stack([y + (0.05 + 0.15 * y) * rng.normal(size=n), y**2 + 0.1 * rng.normal(size=n)])
    return x, y


def true_log_posterior(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y | x), exact up to quadrature on a fine grid."""
    def like(yy, xx):
        s = 0.05 + 0.15 * yy
        return np.exp(-0.5 * ((xx[:, :1] - yy) / s) ** 2) / s * np.exp(-0.5 * ((xx[:, 1:] - yy**2) / 0.1) ** 2)
    g = np.linspace(0, 1.5, 3001)[None, :]
    evidence = np.trapezoid(np.exp(-A * g) * like(g, x), g[0], axis=1)
    return np.log(np.exp(-A * y) * like(y[:, None], x)[:, 0] / evidence)


TOY_TRAIN = TrainSpec(ensemble=1, batch_size=512, max_epochs=150, patience=15, learning_rate=3e-3)
SPECS = {
    "mdn": ModelSpec(kind="mdn", hidden=(64, 64), n_components=5),
    "flow": ModelSpec(kind="flow", hidden=(64, 64), n_bins=8),
}


@pytest.fixture(scope="module")
def toy_data():
    x, y = toy(40_000, 0)
    xt, yt = toy(20_000, 1)
    return x, y, xt, yt


@pytest.fixture(scope="module")
def trained(toy_data):
    x, y, _, _ = toy_data
    out = {}
    for kind, spec in SPECS.items():
        out[kind] = train_model(x, y, np.arange(len(y)), feature_names=["a", "b"], spec=spec, train=TOY_TRAIN)
    return out


@pytest.mark.parametrize("kind", list(SPECS))
def test_density_models_reach_the_true_conditional_nll(kind, trained, toy_data):
    _, _, xt, yt = toy_data
    model, histories = trained[kind]
    nll_model = -np.mean(log_prob(model, xt, yt))
    nll_true = -np.mean(true_log_posterior(xt, yt))
    assert nll_model - nll_true < 0.02, (kind, nll_model, nll_true)
    assert histories[0].best_epoch >= 0 and len(histories[0].val_loss) <= TOY_TRAIN.max_epochs


@pytest.mark.parametrize("kind", list(SPECS))
def test_grid_density_is_normalised_and_matches_pointwise(kind, trained, toy_data):
    _, _, xt, yt = toy_data
    model, _ = trained[kind]
    grid = np.linspace(-2.0, 3.5, 8801)  # fine enough for the sharpest converged posteriors of the toy
    lp = log_prob_grid(model, xt[:300], grid, chunk=128)
    np.testing.assert_allclose(np.trapezoid(np.exp(lp), grid, axis=1), 1.0, atol=2e-3)
    at = log_prob_grid(model, xt[:5], yt[:5])  # grid = the labels themselves
    np.testing.assert_allclose(np.diag(at), log_prob(model, xt[:5], yt[:5]), rtol=1e-4, atol=1e-4)


def test_each_member_trains_on_the_training_hosts_with_its_own_seed(monkeypatch, toy_data):
    """What train_model hands the training loop, recorded instead of trained (that a seed fixes the weights is
    tests/test_determinism.py's): the standardised rows of the training hosts, the other hosts as validation, labels
    aligned with their features, and seed + 1000 k for member k (the seeds model.json records)."""
    x, y, _, _ = toy_data
    n = 3000
    x_raw = np.column_stack([np.arange(n, dtype=np.float64), x[:n, 0]])  # feature 0: the row number
    y_raw = y[:n]
    hosts = np.arange(n) // 3  # three lines of sight per host
    calls = []

    def recorded_fit(spec, *, x_train, y_train, x_val, y_val, train, seed, progress=None):
        calls.append({"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val, "seed": seed})
        return {"seed": np.array(seed)}, History(val_loss=(float(seed),), best_epoch=0)

    monkeypatch.setattr("models.model.fit", recorded_fit)
    train = TrainSpec(ensemble=3, seed=7, validation_fraction=0.2)
    model, histories = train_model(x_raw, y_raw, hosts, feature_names=["row", "b"], spec=SPECS["mdn"], train=train)
    assert [c["seed"] for c in calls] == [7, 1007, 2007]
    assert [int(m["seed"]) for m in model.members] == [7, 1007, 2007]  # members and histories in member order
    assert [h.val_loss[0] for h in histories] == [7.0, 1007.0, 2007.0]
    first = calls[0]
    for later in calls[1:]:  # every member sees the same split (its data order comes from its seed)
        for key in ("x_train", "y_train", "x_val", "y_val"):
            np.testing.assert_array_equal(later[key], first[key], err_msg=key)
    # standardised with the training split's statistics: zero mean and unit variance there
    np.testing.assert_allclose(first["x_train"].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(first["x_train"].std(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_allclose([first["y_train"].mean(), first["y_train"].std()], [0.0, 1.0], atol=1e-5)
    # the standardised row numbers of both splits together are equally spaced: every row exactly once
    n_train = len(first["x_train"])
    together = np.concatenate([first["x_train"][:, 0], first["x_val"][:, 0]]).astype(np.float64)
    assert len(together) == n and np.ptp(np.diff(np.sort(together))) < 1e-3 * np.ptp(together) / (n - 1)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(together)] = np.arange(n)
    train_rows, val_rows = rank[:n_train], rank[n_train:]
    # split by host: 200 of the 1000 hosts (all three lines of sight of each) validate
    assert not set(hosts[train_rows]) & set(hosts[val_rows])
    assert len(set(hosts[val_rows])) == 200 and len(val_rows) == 600
    # both splits scaled with the training rows' mean and standard deviation; labels travel with their features
    for rows, xs, ys in ((train_rows, first["x_train"], first["y_train"]), (val_rows, first["x_val"], first["y_val"])):
        np.testing.assert_allclose(xs, (x_raw[rows] - x_raw[train_rows].mean(0)) / x_raw[train_rows].std(0),
                                   atol=2e-6, rtol=1e-6)
        np.testing.assert_allclose(ys, (y_raw[rows] - y_raw[train_rows].mean()) / y_raw[train_rows].std(),
                                   atol=2e-6, rtol=1e-6)


def test_ensemble_predictive_is_the_equal_weight_mixture(toy_data):
    x, y, xt, yt = toy_data
    spec = ModelSpec(kind="mdn", hidden=(16,), n_components=2)
    train = TrainSpec(ensemble=3, max_epochs=2, patience=2, batch_size=1024)
    model, hist = train_model(x[:2000], y[:2000], np.arange(2000), feature_names=["a", "b"], spec=spec, train=train)
    assert len(model.members) == 3 and len(hist) == 3
    singles = [log_prob(model.__class__(**{**model.__dict__, "members": (p,)}), xt[:50], yt[:50])
               for p in model.members]
    expected = np.logaddexp.reduce(np.stack(singles), axis=0) - np.log(3)
    np.testing.assert_allclose(log_prob(model, xt[:50], yt[:50]), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(singles[0], singles[1])  # members differ (seeds, data order)
    grid = np.linspace(-2.0, 3.5, 41)  # the one-pass grid evaluation is the same mixture
    on_grid = [log_prob_grid(model.__class__(**{**model.__dict__, "members": (p,)}), xt[:50], grid)
               for p in model.members]
    np.testing.assert_allclose(log_prob_grid(model, xt[:50], grid),
                               np.logaddexp.reduce(np.stack(on_grid), axis=0) - np.log(3), rtol=1e-5, atol=1e-5)


def test_early_stopping_keeps_the_best_epoch(toy_data):
    x, y, _, _ = toy_data
    spec = ModelSpec(kind="mdn", hidden=(32,), n_components=3)
    train = TrainSpec(ensemble=1, max_epochs=40, patience=5, learning_rate=5e-2, batch_size=256)
    model, (hist,) = train_model(x[:4000], y[:4000], np.arange(4000) // 3, feature_names=["a", "b"], spec=spec,
                                 train=train)
    assert hist.best_epoch == int(np.argmin(hist.val_loss))
    val = host_split(np.arange(4000) // 3, train.validation_fraction, train.seed)
    xs, ys = model.x_scaler.transform(x[:4000]), model.y_scaler.transform(y[:4000])
    assert evaluate(spec, model.members[0], xs[val], ys[val]) == pytest.approx(min(hist.val_loss), rel=1e-5)


def test_host_split_keeps_lines_of_sight_together():
    cid = np.repeat(np.arange(500), 3)
    val = host_split(cid, 0.2, seed=4)
    assert not set(cid[val]) & set(cid[~val])
    assert abs(val.mean() - 0.2) < 0.01


def test_scalers_use_the_training_split_only(trained, toy_data):
    x, y, _, _ = toy_data
    model, _ = trained["mdn"]
    val = host_split(np.arange(len(y)), TOY_TRAIN.validation_fraction, TOY_TRAIN.seed)
    np.testing.assert_allclose(model.x_scaler.mean, x[~val].mean(axis=0))
    assert model.y_mean == pytest.approx(y[~val].mean())
    assert model.training_prior.n_train == (~val).sum()


@pytest.mark.parametrize("kind", list(SPECS))
def test_save_and_load_give_bit_identical_predictions(tmp_path, kind, trained, toy_data):
    _, _, xt, _yt = toy_data
    model, hist = trained[kind]
    save_model(tmp_path / "m", model, histories=hist)
    back = load_model(tmp_path / "m", features=["a", "b"])
    grid = np.linspace(0, 1.5, 64)
    np.testing.assert_array_equal(log_prob_grid(back, xt[:100], grid), log_prob_grid(model, xt[:100], grid))
    assert back.training_prior == model.training_prior and back.spec == model.spec
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["features"] == ["a", "b"] and meta["versions"]["jax"] and len(meta["training_data_sha256"]) == 64
    assert not list(tmp_path.glob(".*"))


def test_corrupted_or_mismatched_model_files_are_refused(tmp_path, trained):
    model, hist = trained["mdn"]
    d = save_model(tmp_path / "m", model, histories=hist)
    with pytest.raises(InputError, match=r"features do not match the model's \(missing \['b'\], unexpected \['c'\]\)"):
        load_model(d, features=["a", "c"])
    with pytest.raises(InputError, match="same names, different order"):
        load_model(d, features=["b", "a"])
    blob = bytearray((d / "member-0.msgpack").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (d / "member-0.msgpack").write_bytes(bytes(blob))
    with pytest.raises(InputError, match=r"member-0\.msgpack: checksum mismatch"):
        load_model(d)
    d = save_model(tmp_path / "m2", model, histories=hist)
    meta = json.loads((d / "model.json").read_text())
    meta["model"]["hidden"] = [32, 32]
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"parameters do not fit the described network|shapes do not match"):
        load_model(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_model(d)
    with pytest.raises(InputError, match="not a clustermass model directory"):
        load_model(tmp_path)


def test_mse_baseline_learns_the_posterior_mean(toy_data):
    x, y, xt, _yt = toy_data
    model, _ = train_model(x, y, np.arange(len(y)), feature_names=["a", "b"],
                           spec=ModelSpec(kind="mse", hidden=(64, 64)), train=TOY_TRAIN)
    g = np.linspace(0, 1.5, 3001)
    post = np.exp(np.stack([true_log_posterior(xt[:500], np.full(500, v)) for v in g[::10]], axis=1))
    mean = np.trapezoid(post * g[::10], g[::10], axis=1) / np.trapezoid(post, g[::10], axis=1)
    pred = predict_point(model, xt[:500])
    assert np.sqrt(np.mean((pred - mean) ** 2)) < 0.03
    with pytest.raises(ValueError, match="predicts points"):
        log_prob_grid(model, xt[:2], g)


def test_mc_dropout_predictive_is_normalised(toy_data):
    x, y, xt, _ = toy_data
    spec = ModelSpec(kind="mdn", hidden=(32, 32), n_components=3, dropout=0.1)
    model, _ = train_model(x[:2000], y[:2000], np.arange(2000), feature_names=["a", "b"], spec=spec,
                           train=TrainSpec(ensemble=1, max_epochs=2, mc_samples=8, batch_size=512))
    grid = np.linspace(-2, 3.5, 1101)
    lp = log_prob_grid(model, xt[:20], grid)
    np.testing.assert_allclose(np.trapezoid(np.exp(lp), grid, axis=1), 1.0, atol=3e-3)


def test_msigma_fit_recovers_a_known_slope():
    rng = np.random.default_rng(3)
    logm = rng.uniform(13.5, 15.0, 5000)
    sigma = 10 ** ((logm - 14.0) / 3.0 + np.log10(600) + rng.normal(0, 0.02, 5000))
    for method in ("scaling", "ols"):
        fitted = fit_msigma(sigma, logm, method=method)
        assert fitted.slope == pytest.approx(3.0, abs=0.1)
        assert fitted.predict(np.array([600.0]))[0] == pytest.approx(14.0, abs=0.02)
    # with a noisy sigma the OLS slope is diluted toward 0; the scaling fit is not (noise is in sigma, not M)
    noisy = 10 ** ((logm - 14.0) / 3.0 + np.log10(600) + rng.normal(0, 0.1, 5000))
    assert fit_msigma(noisy, logm).slope == pytest.approx(3.0, abs=0.1)
    # OLS of log M on log sigma is diluted by var(signal) / var(total), signal = log M / 3 with log M ~ U(13.5, 15)
    signal = 1.5**2 / 12 / 9
    assert fit_msigma(noisy, logm, method="ols").slope == pytest.approx(3.0 * signal / (signal + 0.1**2), abs=0.1)
    with pytest.raises(ValueError, match="equal shape"):
        fit_msigma(sigma, logm[:-1])


def test_training_prior_integrates_to_one_and_follows_the_labels():
    y = np.random.default_rng(0).uniform(13.5, 15.0, 20000)
    prior = TrainingPrior.estimate(y)
    g = np.asarray(prior.grid)
    assert np.trapezoid(prior.density, g) == pytest.approx(1.0, abs=1e-6)
    inner = (g > 13.7) & (g < 14.8)
    np.testing.assert_allclose(np.asarray(prior.density)[inner], 1 / 1.5, rtol=0.08)
    assert prior(np.array([10.0]))[0] == 0.0


def test_training_prior_is_not_halved_at_the_host_mass_cut():
    # labels cut hard at 13.0 (every host above a mass): reflected, the estimate at the cut is the density itself;
    # a plain kernel estimate would give half of it (the correction would then double the lightest posteriors)
    y = np.random.default_rng(1).uniform(13.0, 14.0, 50000)
    prior = TrainingPrior.estimate(y)
    assert prior.grid[0] == pytest.approx(y.min())
    assert prior(np.array([y.min()]))[0] == pytest.approx(1.0, rel=0.05)
    assert TrainingPrior.estimate(y, reflect_lower=False)(np.array([y.min()]))[0] == pytest.approx(0.5, rel=0.1)


def test_training_prior_bandwidth_is_silvermans_normal_reference_rule():
    # labels with a standard deviation of exactly 0.3 dex, n = 1000: h = 1.06 x 0.3 x 1000^(-1/5) = 0.07988 dex
    # (scipy's "scott" factor would give 0.0754, the robust 0.9 min(sigma, IQR / 1.34) rule 0.0678)
    y = 14.0 + np.tile([-0.3, 0.3], 500)
    assert TrainingPrior.estimate(y).bandwidth == pytest.approx(0.07988, rel=1e-4)
    assert TrainingPrior.estimate(y, bandwidth=0.05).bandwidth == 0.05


def test_specs_validate():
    with pytest.raises(ConfigError, match="kind must be one of"):
        ModelSpec(kind="gp")
    with pytest.raises(ConfigError, match="dropout"):
        ModelSpec(dropout=1.5)
    with pytest.raises(ConfigError, match="validation_fraction"):
        TrainSpec(validation_fraction=0.0)


def test_plateau_schedule_lowers_the_rate_restores_the_best_and_stops_converged(toy_data):
    from models.training import make_optimizer, set_learning_rate

    x, y, xt, yt = toy_data
    spec = SPECS["mdn"]
    train = TrainSpec(ensemble=1, batch_size=512, max_epochs=400, patience=400, learning_rate=3e-3,
                      plateau_patience=2, plateau_factor=0.3, final_lr_fraction=0.01)
    opt = make_optimizer(train, 10)
    state = opt.init({"w": np.zeros(2, np.float32)})
    assert float(set_learning_rate(state, 1e-4)[1].hyperparams["learning_rate"]) == pytest.approx(1e-4)
    val = slice(0, 8000)
    params, history = fit(spec, x_train=x[8000:], y_train=y[8000:], x_val=x[val], y_val=y[val], train=train, seed=0)
    # the rate falls 3e-3 -> 9e-4 -> 2.7e-4 -> 8.1e-5 -> 3e-5 (the floor), each after 2 epochs without
    # improvement; one more plateau at the floor ends training long before max_epochs or patience
    assert len(history.val_loss) < 200
    assert evaluate(spec, params, x[val], y[val]) == pytest.approx(min(history.val_loss), abs=1e-5)
    cosine = TrainSpec(ensemble=1, batch_size=512, max_epochs=400, patience=5, learning_rate=3e-3,
                       schedule="cosine")
    params_c, _ = fit(spec, x_train=x[8000:], y_train=y[8000:], x_val=x[val], y_val=y[val], train=cosine, seed=0)
    # early stopping under a cosine keyed to 400 epochs ends at a high rate; the plateau schedule does better
    assert evaluate(spec, params, xt, yt) < evaluate(spec, params_c, xt, yt)


def test_train_spec_refuses_bad_schedules():
    with pytest.raises(ConfigError, match="schedule"):
        TrainSpec(schedule="step")
    with pytest.raises(ConfigError, match="plateau"):
        TrainSpec(plateau_factor=1.5)


def test_posteriors_do_not_depend_on_how_many_blocks_run_at_once(monkeypatch, trained, toy_data):
    from inference import posterior, priors

    _, _, xt, _ = toy_data
    model, _ = trained["flow"]
    grid = posterior.default_grid(model, 64)
    target = priors.flat(grid)

    def run(workers: int):
        monkeypatch.setattr(posterior, "_workers", lambda: workers)
        blocks = list(posterior.iter_posteriors(model, xt[:1000], grid, target, chunk=128))
        assert [b.start for b in blocks] == list(range(0, 1000, 128))
        return np.concatenate([b.pdf for b in blocks]), np.concatenate([b.values["median"] for b in blocks])

    one, four = run(1), run(4)
    assert one[0].shape == (1000, 64)
    np.testing.assert_array_equal(one[0], four[0])
    np.testing.assert_array_equal(one[1], four[1])


def test_epistemic_spread_is_zero_for_one_network_and_grows_far_from_the_training_inputs(trained, toy_data):
    from models.model import epistemic_spread

    x, y, xt, _ = toy_data
    grid = np.linspace(-2.0, 3.5, 221)
    single, _ = trained["mdn"]
    np.testing.assert_array_equal(epistemic_spread(single, xt[:10], grid), 0.0)
    spec = ModelSpec(kind="mdn", hidden=(32, 32), n_components=3)
    model, _ = train_model(x[:20000], y[:20000], np.arange(20000), feature_names=["a", "b"], spec=spec,
                           train=TrainSpec(ensemble=3, max_epochs=30, patience=5, batch_size=512))
    inside = epistemic_spread(model, xt[:500], grid)
    far = epistemic_spread(model, xt[:500] + np.array([4.0, 8.0]), grid)  # x ~ 4-6 sigma beyond the training data
    assert (inside > 0).all()
    assert np.median(far) > 3 * np.median(inside)


def test_an_ensemble_compiles_its_training_epoch_once(toy_data):
    """Equal training settings give the same optimizer object, so the jitted epoch (which takes the optimizer as a
    static argument) is compiled for the first member and reused by the others: compilation, not training, is most
    of a small ensemble's time."""
    from models.training import make_optimizer, scan_epoch

    x, y, _, _ = toy_data
    spec = SPECS["mdn"]
    train = TrainSpec(ensemble=1, batch_size=256, max_epochs=2, patience=2, learning_rate=1e-3)
    assert make_optimizer(train, 7) is make_optimizer(train, 7)
    fit(spec, x_train=x[:3000], y_train=y[:3000], x_val=x[3000:3500], y_val=y[3000:3500], train=train, seed=0)
    compiled = scan_epoch._cache_size()
    fit(spec, x_train=x[:3000], y_train=y[:3000], x_val=x[3000:3500], y_val=y[3000:3500], train=train, seed=1)
    assert scan_epoch._cache_size() == compiled

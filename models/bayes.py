"""Bayes by Backprop: one network with a mean-field Gaussian posterior over every weight (pure, jit-friendly).

The third way to represent epistemic uncertainty (``TrainSpec.epistemic = "bayes_by_backprop"``), after deep
ensembles and MC dropout. Following Blundell et al. (2015, "Weight Uncertainty in Neural Networks",
arXiv:1505.05424) and the lecture (Lanusse, "Deep Probabilistic Learning": q_theta(w) = N(mu_theta, Sigma_theta),
p(w) = N(0, I), minimise the negative ELBO):

* variational posterior  q(w) = prod_j N(w_j | mu_j, sigma_j^2),  sigma_j = softplus(rho_j) = log(1 + e^rho_j),
  over every weight and bias of :class:`models.networks.Network` (trunk and head, MDN or spline flow);
* prior  p(w) = prod_j N(w_j | 0, s^2)  (``TrainSpec.prior_scale`` = s);
* loss, per observation (N = ``n_train`` training rows):

      L(mu, rho) = -ELBO / N = KL(q || p) / N  -  (1/N) sum_i E_q[ log p(y_i | x_i, w) ]

  estimated on a minibatch B with ONE weight draw w = mu + sigma * eps, eps ~ N(0, I) (the reparameterisation
  trick, Kingma & Welling 2014, arXiv:1312.6114, which makes the draw differentiable in mu and rho):

      L_B = KL(q || p) / N  -  (1/|B|) sum_{i in B} log p(y_i | x_i, w).

  Averaged over the minibatches of an epoch, this is Blundell et al.'s minibatch weighting pi_i = 1/M (the KL
  spread evenly over the M = N/|B| minibatches), divided by N so it reads in the same units as the ordinary
  training loss: nats per observation, standardised target units. The KL of two Gaussians is closed form
  (TensorFlow Probability on JAX), so only the likelihood term is Monte Carlo.

Prediction: q(y | x) ~= (1/D) sum_d p(y | x, w_d) over D = ``TrainSpec.weight_draws`` fixed draws
(:func:`predictive_params`), used exactly like the members of a deep ensemble (the equal-weight mixture).

A trained model's single "member" is the variational pytree ``{"loc": params, "rho": params}`` (both with the
structure of :func:`models.networks.init_params`); :func:`predictive_members` expands it into the draws.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tensorflow_probability.substrates import jax as tfp

from models.densities import log_prob
from models.networks import Network, init_params
from models.spec import History, ModelSpec, TrainSpec
from models.training import TrainState, batching, make_optimizer, optimise, scan_epoch

tfd = tfp.distributions

#: rows per chunk of the validation criterion (one compilation; bounds memory to draws x chunk activations)
VAL_CHUNK = 8192


def inverse_softplus(sigma: float) -> float:
    """rho with softplus(rho) = sigma > 0: rho = log(exp(sigma) - 1), evaluated in float64."""
    return float(np.log(np.expm1(np.float64(sigma))))


def init_variational(spec: ModelSpec, n_features: int, key: jax.Array, *, init_std: float) -> dict[str, Any]:
    """Initial variational parameters ``{"loc": params, "rho": params}`` for ``spec`` on ``n_features`` inputs.

    loc is the ordinary initialisation (:func:`models.networks.init_params` with ``key``); rho is the constant
    softplus^-1(init_std), so every weight starts with posterior std ``init_std`` (network-weight units).
    """
    loc = init_params(spec, n_features, key)
    rho0 = inverse_softplus(init_std)
    rho = jax.tree_util.tree_map(lambda a: jnp.full(jnp.shape(a), rho0, dtype=jnp.asarray(a).dtype), loc)
    return {"loc": loc, "rho": rho}


def sigma(var: dict[str, Any]) -> Any:
    """Posterior standard deviations softplus(rho), with the structure of ``var["loc"]``."""
    return jax.tree_util.tree_map(jax.nn.softplus, var["rho"])


def draw_noise(like: Any, key: jax.Array) -> Any:
    """Standard-normal eps with the structure, shapes and dtypes of the pytree ``like`` (float32 leaves).

    One draw of all the weights at once, cut into the leaves (one random-number call: cheaper to compile and run
    than one per leaf).
    """
    leaves, treedef = jax.tree_util.tree_flatten(like)
    sizes = [math.prod(jnp.shape(a)) for a in leaves]
    flat = jax.random.normal(key, (sum(sizes),), jnp.float32)
    parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist()) if len(sizes) > 1 else [flat]
    eps = [p.reshape(jnp.shape(a)).astype(jnp.asarray(a).dtype) for p, a in zip(parts, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, eps)


def perturb(var: dict[str, Any], eps: Any) -> Any:
    """Weights w = loc + softplus(rho) * eps for given noise ``eps`` (the reparameterisation, Kingma & Welling)."""
    return jax.tree_util.tree_map(lambda m, r, e: m + jax.nn.softplus(r) * e, var["loc"], var["rho"], eps)


def sample_params(var: dict[str, Any], key: jax.Array) -> Any:
    """One draw w ~ q(w) = N(loc, softplus(rho)^2), differentiable in loc and rho: loc + softplus(rho) * eps."""
    return perturb(var, draw_noise(var["loc"], key))


def kl_divergence(var: dict[str, Any], prior_scale: float) -> jax.Array:
    """KL(q || p) in nats, summed over every weight: q_j = N(loc_j, sigma_j^2), p = N(0, s^2), s = prior_scale.

    Per weight (closed form, TFP's Normal-Normal KL): log(s / sigma) + (sigma^2 + loc^2) / (2 s^2) - 1/2.
    """
    loc = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(var["loc"])])
    rho = jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(var["rho"])])
    q = tfd.Normal(loc=loc, scale=jax.nn.softplus(rho))
    return jnp.sum(tfd.kl_divergence(q, tfd.Normal(loc=jnp.zeros((), loc.dtype), scale=jnp.asarray(prior_scale,
                                                                                                   loc.dtype))))


def elbo_loss(spec: ModelSpec, var: dict[str, Any], x: jax.Array, y: jax.Array, key: jax.Array, *, n_train: int,
              prior_scale: float) -> jax.Array:
    """Negative ELBO per observation on a minibatch, nats (standardised target units).

    ``mean_i[-log p(y_i | x_i, w)] + KL(q || N(0, s^2)) / n_train`` with one draw w ~ q from ``key``; its
    expectation over minibatches and draws is -ELBO / n_train (module docstring). ``x`` (B, F) and ``y`` (B,) are
    standardised features and targets.
    """
    params = sample_params(var, key)
    out = Network(spec).apply({"params": params}, x, deterministic=True)
    nll = -jnp.mean(log_prob(spec, out, y))
    return nll + kl_divergence(var, prior_scale) / n_train


@dataclass(frozen=True)
class ElboLoss:
    """:func:`elbo_loss` as a hashable ``(var, x, y, key) -> scalar`` for :func:`models.training.scan_epoch`."""

    spec: ModelSpec
    n_train: int
    prior_scale: float

    def __call__(self, var: dict[str, Any], x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        return elbo_loss(self.spec, var, x, y, key, n_train=self.n_train, prior_scale=self.prior_scale)


def _draw_keys(n_draws: int, seed: int) -> jax.Array:
    return jax.random.split(jax.random.PRNGKey(seed), n_draws)


_sample = jax.jit(sample_params)
#: noise of several keys at once, stacked on a leading axis: the same values as :func:`draw_noise` key by key
_stacked_noise = jax.jit(jax.vmap(draw_noise, in_axes=(None, 0)))


def predictive_params(var: dict[str, Any], n_draws: int, seed: int = 0) -> tuple[Any, ...]:
    """``n_draws`` weight draws w_d ~ q(w), deterministic in ``seed``, as ordinary network parameters.

    The predictive density is their equal-weight mixture q(y | x) = (1/D) sum_d p(y | x, w_d): use them exactly
    like the members of a deep ensemble. Draw d uses key d of ``jax.random.split(PRNGKey(seed), n_draws)``, so the
    first draws of a larger ``n_draws`` differ from a smaller one's (each call is self-consistent).
    """
    if n_draws < 1:
        raise ValueError(f"predictive_params: n_draws must be >= 1, got {n_draws}")
    return tuple(jax.device_get(_sample(var, k)) for k in _draw_keys(n_draws, seed))


def predictive_members(members: Sequence[Any], train: TrainSpec) -> tuple[Any, ...]:
    """The networks whose equal-weight mixture is a model's predictive density.

    ``members`` of a ``"bayes_by_backprop"`` model are variational pytrees: each is expanded into
    ``train.weight_draws`` draws (seed ``train.seed``, the draws the validation criterion of
    :func:`fit_bayes_by_backprop` scored); any other model's members are returned unchanged.
    """
    if train.epistemic != "bayes_by_backprop":
        return tuple(members)
    return tuple(p for var in members for p in predictive_params(var, train.weight_draws, train.seed))


@partial(jax.jit, static_argnames=("spec",))
def _validation_rows(var: dict[str, Any], eps: Any, x: jax.Array, y: jax.Array, *,
                     spec: ModelSpec) -> tuple[jax.Array, jax.Array]:
    """Per row, for the draws w_d = loc + sigma * eps_d (``eps`` stacked, leading axis D): the predictive mixture's
    NLL -log[(1/D) sum_d p(y_i | x_i, w_d)] and the expected NLL -(1/D) sum_d log p(y_i | x_i, w_d)."""
    def one(e: Any) -> jax.Array:
        out = Network(spec).apply({"params": perturb(var, e)}, x, deterministic=True)
        return log_prob(spec, out, y)

    lp = jax.lax.map(one, eps)  # (D, B), one draw at a time: the memory of one pass
    return -(jax.nn.logsumexp(lp, axis=0) - jnp.log(lp.shape[0])), -jnp.mean(lp, axis=0)


def validation_nll(spec: ModelSpec, var: dict[str, Any], eps: Any, x: np.ndarray, y: np.ndarray,
                   chunk: int = VAL_CHUNK) -> tuple[float, float]:
    """``(predictive, expected)``: mean NLL per observation (nats, standardised targets) of the equal-weight mixture
    over the draws ``loc + softplus(rho) * eps_d``, and the mean over draws of each draw's NLL (the data term of the
    negative ELBO; >= the first by Jensen). Chunks have one size (the last is padded)."""
    n = len(x)
    totals = np.zeros(2)
    for start in range(0, n, chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        rows = len(xb)
        if n > chunk and rows < chunk:
            xb = np.pad(xb, ((0, chunk - rows), (0, 0)))
            yb = np.pad(yb, (0, chunk - rows))
        parts = _validation_rows(var, eps, jnp.asarray(xb), jnp.asarray(yb), spec=spec)
        totals += [float(np.sum(np.asarray(p, dtype=np.float64)[:rows])) for p in parts]
    mix, expected = totals / max(n, 1)
    return float(mix), float(expected)


def predictive_nll(spec: ModelSpec, var: dict[str, Any], eps: Any, x: np.ndarray, y: np.ndarray,
                   chunk: int = VAL_CHUNK) -> float:
    """Mean NLL per observation of the predictive mixture over the draws ``loc + softplus(rho) * eps_d``."""
    return validation_nll(spec, var, eps, x, y, chunk)[0]


_kl = jax.jit(kl_divergence, static_argnums=1)

#: early-stopping criteria of :func:`fit_bayes_by_backprop`
CRITERIA = ("predictive", "elbo")


def fit_bayes_by_backprop(
    spec: ModelSpec,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    train: TrainSpec,
    seed: int,
    progress: Callable[[int, float, float], None] | None = None,
    criterion: str = "predictive",
) -> tuple[dict[str, Any], History]:
    """Train one variational network by Bayes by Backprop; return the best epoch's ``{"loc", "rho"}`` and history.

    The loop is :func:`models.training.fit`'s (:func:`models.training.optimise`: same optimizer, minibatches,
    plateau learning-rate schedule with best-weight restore, early stopping), on :func:`elbo_loss` with one weight
    draw per minibatch. AdamW's weight decay is switched off: the prior N(0, s^2) is the regulariser, and decay would
    also pull rho toward 0, i.e. every sigma toward log 2 ~ 0.69.

    Early stopping and the plateau schedule watch a validation criterion computed with ``train.weight_draws``
    FIXED draws (seed ``seed``: the draws :func:`predictive_params` gives with that seed), so that epochs compare
    with common random numbers, free of Monte Carlo noise:

    * ``criterion="predictive"`` (default): the NLL per observation of the predictive mixture over those draws —
      the very density the model will use. Training stops when it stops improving, at a cost comparable to one
      ordinary network (measured 1.5-1.9x one ensemble member at 20k rows, 18 features); the posterior widths are
      then those reached by then (from ``posterior_init_std``), not the ELBO optimum.
    * ``criterion="elbo"``: the validation negative ELBO per observation, expected NLL over the draws +
      KL / n_train: training continues while the posterior widens toward the ELBO optimum (the Bayesian answer
      under the prior). Closer to the method, but slow: at 20k rows it ran to ``max_epochs`` = 300 (6-10x one
      member) with sigma's median 0.014 -> 0.42 and twice the spread of the predictive far from the training data.

    History: ``train_loss`` = mean minibatch negative ELBO per observation, ``val_loss`` = the criterion.
    Inputs are standardised float32 arrays (targets: standardised log10 M200c). ``progress(epoch, train_loss,
    val_loss)`` is called after every epoch. The same seed gives the same result on the same machine.
    """
    if not spec.is_density:
        raise ValueError(f"bayes_by_backprop needs a density model (mdn or flow), got '{spec.kind}'")
    if spec.dropout > 0:
        raise ValueError(f"bayes_by_backprop averages over weight draws, not dropout masks: dropout must be 0, got "
                         f"{spec.dropout}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {list(CRITERIA)}, got '{criterion}'")
    start = time.perf_counter()
    x = jnp.asarray(x_train, dtype=jnp.float32)
    y = jnp.asarray(y_train, dtype=jnp.float32)
    xv = np.asarray(x_val, dtype=np.float32)
    yv = np.asarray(y_val, dtype=np.float32)
    batch, n_batches = batching(x.shape[0], train)
    opt = make_optimizer(dataclasses.replace(train, weight_decay=0.0), n_batches)
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    var = init_variational(spec, x.shape[1], init_key, init_std=train.posterior_init_std)
    n_train, prior_scale = int(x.shape[0]), float(train.prior_scale)
    loss = ElboLoss(spec, n_train, prior_scale)
    eps_stacked = _stacked_noise(var["loc"], _draw_keys(train.weight_draws, seed))  # predictive_params' draws

    def epoch(state: TrainState, epoch_key: jax.Array) -> tuple[TrainState, jax.Array]:
        return scan_epoch(state, x, y, epoch_key, loss=loss, opt=opt, batch_size=batch, n_batches=n_batches)

    def validate(v: dict[str, Any]) -> float:
        mix, expected = validation_nll(spec, v, eps_stacked, xv, yv)
        return mix if criterion == "predictive" else expected + float(_kl(v, prior_scale)) / n_train

    var, history = optimise(var, key, opt=opt, epoch=epoch, validate=validate, train=train, progress=progress,
                            start=start)
    return jax.device_get(var), history


def n_weights(var: dict[str, Any]) -> int:
    """Number of network weights (and biases) the variational posterior covers."""
    return int(sum(math.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(var["loc"])))

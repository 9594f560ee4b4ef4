"""Training one network: optax, one jitted ``lax.scan`` per epoch, early stopping that keeps the best weights.

``fit(spec, x_train=..., y_train=..., x_val=..., y_val=..., train=..., seed=...) -> (params, history)``.
Inputs are standardised float32 arrays; the loss is the mean negative log-likelihood (nats per observation, in
standardised target units) for density models and the mean squared error for the ``mse`` baseline. The same seed
gives the same weights on the same machine. Arrays live on JAX's default device: on a machine with a GPU and
``jax[cuda12]`` installed, training runs there with no code change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.densities import log_prob
from models.networks import Network, init_params
from models.spec import History, ModelSpec, TrainSpec


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


@lru_cache(maxsize=64)
def make_optimizer(train: TrainSpec, steps_per_epoch: int) -> optax.GradientTransformation:
    """Gradient clipping + Adam(W). ``schedule = "cosine"``: a cosine learning-rate decay over ``max_epochs``;
    ``"plateau"``: the rate is a hyperparameter in the optimizer state, set between epochs (:func:`set_learning_rate`).

    Cached: equal arguments return the same (stateless) transformation object, so the compiled epoch, which takes it
    as a static argument, is compiled once for all members of an ensemble rather than once per member.
    """
    if train.schedule == "cosine":
        rate: Any = optax.cosine_decay_schedule(
            train.learning_rate, decay_steps=max(1, train.max_epochs * steps_per_epoch), alpha=train.final_lr_fraction
        )
        if train.optimizer == "adamw":
            return optax.chain(optax.clip_by_global_norm(train.grad_clip),
                               optax.adamw(rate, weight_decay=train.weight_decay))
        return optax.chain(optax.clip_by_global_norm(train.grad_clip), optax.adam(rate))
    if train.optimizer == "adamw":
        opt = optax.inject_hyperparams(optax.adamw)(learning_rate=train.learning_rate, weight_decay=train.weight_decay)
    else:
        opt = optax.inject_hyperparams(optax.adam)(learning_rate=train.learning_rate)
    return optax.chain(optax.clip_by_global_norm(train.grad_clip), opt)


def set_learning_rate(opt_state: Any, rate: float) -> Any:
    """The optimizer state of :func:`make_optimizer` (plateau schedule) with its learning rate set to ``rate``."""
    clip_state, inner = opt_state
    hyper = dict(inner.hyperparams)
    hyper["learning_rate"] = jnp.asarray(rate, dtype=jnp.asarray(hyper["learning_rate"]).dtype)
    return (clip_state, inner._replace(hyperparams=hyper))


def loss_fn(spec: ModelSpec, params: Any, x: jax.Array, y: jax.Array, key: jax.Array | None) -> jax.Array:
    """Mean NLL (density models) or mean squared error (mse), standardised units."""
    deterministic = key is None or spec.dropout == 0.0
    rngs = None if deterministic else {"dropout": key}
    out = Network(spec).apply({"params": params}, x, deterministic=deterministic, rngs=rngs)
    if spec.is_density:
        return -jnp.mean(log_prob(spec, out, y))
    return jnp.mean((out - y) ** 2)


@dataclass(frozen=True)
class SpecLoss:
    """:func:`loss_fn` of one spec as a hashable callable ``(params, x, y, key) -> scalar`` (a static argument of
    :func:`scan_epoch`: equal specs share one compilation)."""

    spec: ModelSpec

    def __call__(self, params: Any, x: jax.Array, y: jax.Array, key: jax.Array | None) -> jax.Array:
        return loss_fn(self.spec, params, x, y, key)


@partial(jax.jit, static_argnames=("loss", "opt", "batch_size", "n_batches"))
def scan_epoch(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array, *,
               loss: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array], opt: optax.GradientTransformation,
               batch_size: int, n_batches: int) -> tuple[TrainState, jax.Array]:
    """One epoch: a random permutation cut into ``n_batches`` minibatches (the remainder is skipped), one optimizer
    step per minibatch in a ``lax.scan``. ``loss(params, x, y, key)`` gets a fresh key per minibatch (dropout masks,
    or weight draws in :mod:`models.bayes`). Returns the new state and the mean minibatch loss."""
    perm_key, drop_key = jax.random.split(key)
    perm = jax.random.permutation(perm_key, x.shape[0])[: n_batches * batch_size].reshape(n_batches, batch_size)
    drop_keys = jax.random.split(drop_key, n_batches)

    def step(st: TrainState, inputs):
        idx, dkey = inputs
        value, grads = jax.value_and_grad(loss)(st.params, x[idx], y[idx], dkey)
        updates, opt_state = opt.update(grads, st.opt_state, st.params)
        return TrainState(optax.apply_updates(st.params, updates), opt_state), value

    state, losses = jax.lax.scan(step, state, (perm, drop_keys))
    return state, jnp.mean(losses)


def _epoch(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array, *, spec: ModelSpec,
           opt: optax.GradientTransformation, batch_size: int, n_batches: int) -> tuple[TrainState, jax.Array]:
    """One epoch of :func:`loss_fn` (the ordinary, non-Bayesian loss); see :func:`scan_epoch`."""
    return scan_epoch(state, x, y, key, loss=SpecLoss(spec), opt=opt, batch_size=batch_size, n_batches=n_batches)


@partial(jax.jit, static_argnames=("spec",))
def _eval_loss(params: Any, x: jax.Array, y: jax.Array, *, spec: ModelSpec) -> jax.Array:
    return loss_fn(spec, params, x, y, None) * x.shape[0]


def evaluate(spec: ModelSpec, params: Any, x: np.ndarray, y: np.ndarray, chunk: int = 65536) -> float:
    """Mean loss over a data set, in chunks of a fixed size (one compilation)."""
    total, n = 0.0, len(x)
    for start in range(0, n, chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        total += float(_eval_loss(params, jnp.asarray(xb), jnp.asarray(yb), spec=spec))
    return total / max(n, 1)


def batching(n: int, train: TrainSpec) -> tuple[int, int]:
    """``(batch, n_batches)`` for ``n`` training rows: the batch is at most ``n``, an epoch is ``n // batch`` steps."""
    batch = min(train.batch_size, n)
    return batch, max(1, n // batch)


def optimise(
    params: Any,
    key: jax.Array,
    *,
    opt: optax.GradientTransformation,
    epoch: Callable[[TrainState, jax.Array], tuple[TrainState, jax.Array]],
    validate: Callable[[Any], float],
    train: TrainSpec,
    progress: Callable[[int, float, float], None] | None = None,
    start: float | None = None,
) -> tuple[Any, History]:
    """The training loop shared by :func:`fit` and :func:`models.bayes.fit_bayes_by_backprop`.

    From ``params`` (any pytree the optimizer ``opt`` of :func:`make_optimizer` accepts), run
    ``epoch(state, epoch_key)`` (split from ``key`` once per epoch) and score it with ``validate(params)`` (lower is
    better) until ``train.patience`` epochs without improvement, ``train.max_epochs``, or — schedule ``"plateau"`` — a
    plateau at the smallest learning rate; on each plateau of ``train.plateau_patience`` epochs the best parameters
    are restored and the rate multiplied by ``plateau_factor``. Returns the parameters of the best epoch and the
    :class:`History` (``seconds`` counted from ``start``, default now). ``progress(epoch, train_loss, val_loss)``
    is called after every epoch.
    """
    start = time.perf_counter() if start is None else start
    state = TrainState(params, opt.init(params))
    best_params, best_val, best_epoch, waited = params, np.inf, -1, 0
    rate, plateau = train.learning_rate, 0
    floor = train.learning_rate * train.final_lr_fraction
    train_hist: list[float] = []
    val_hist: list[float] = []
    for e in range(train.max_epochs):
        key, epoch_key = jax.random.split(key)
        state, tr = epoch(state, epoch_key)
        val = validate(state.params)
        train_hist.append(float(tr))
        val_hist.append(val)
        if progress is not None:
            progress(e, float(tr), val)
        if np.isfinite(val) and val < best_val - 1e-5:
            best_params, best_val, best_epoch, waited, plateau = state.params, val, e, 0, 0
            continue
        waited += 1
        plateau += 1
        if waited >= train.patience:
            break
        if train.schedule == "plateau" and plateau >= train.plateau_patience:
            if rate <= floor * (1 + 1e-6):
                break  # a plateau at the smallest rate: converged
            rate, plateau = max(rate * train.plateau_factor, floor), 0
            state = TrainState(best_params, set_learning_rate(state.opt_state, rate))
    history = History(tuple(train_hist), tuple(val_hist), best_epoch, time.perf_counter() - start)
    return best_params, history


def fit(
    spec: ModelSpec,
    *,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    train: TrainSpec,
    seed: int,
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[Any, History]:
    """Train one network; return the parameters of the epoch with the lowest validation loss, and the history.

    ``progress(epoch, train_loss, val_loss)`` is called after every epoch.
    """
    start = time.perf_counter()
    x = jnp.asarray(x_train, dtype=jnp.float32)
    y = jnp.asarray(y_train, dtype=jnp.float32)
    xv = np.asarray(x_val, dtype=np.float32)
    yv = np.asarray(y_val, dtype=np.float32)
    batch, n_batches = batching(x.shape[0], train)
    opt = make_optimizer(train, n_batches)
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    params = init_params(spec, x.shape[1], init_key)
    loss = SpecLoss(spec)

    def epoch(state: TrainState, epoch_key: jax.Array) -> tuple[TrainState, jax.Array]:
        return scan_epoch(state, x, y, epoch_key, loss=loss, opt=opt, batch_size=batch, n_batches=n_batches)

    return optimise(params, key, opt=opt, epoch=epoch, validate=lambda p: evaluate(spec, p, xv, yv), train=train,
                    progress=progress, start=start)

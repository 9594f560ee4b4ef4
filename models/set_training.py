"""Training one set network (:class:`models.set_encoder.SetNetwork`) with the feature models' loop.

``fit_set(spec, set_spec, train_data=..., val_data=..., train=..., seed=...) -> (params, history)``, keyword-only
like :func:`models.training.fit`, with the same optimizer (:func:`models.training.make_optimizer`) and the same
loop (:func:`models.training.optimise`: early stopping on the validation loss with the best weights kept, the
plateau schedule). The loss is the mean negative log-likelihood (nats per observation, standardised target units)
for density models, the mean squared error for ``mse``.

An epoch is every minibatch of every size bucket (:func:`models.set_batches.epoch_batches`) in a random order:
one jitted optimizer step per minibatch, compiled once per bucket width (the batch shape is fixed: a bucket's last
minibatch is completed with zero-weight filler rows). Validation is evaluated bucket by bucket. With ``augment``
each epoch trains on freshly drawn data (e.g. :func:`models.set_batches.thin_sets`: new random incompleteness every
epoch) and a fresh subsample of the sets above the cap; without it the capped training sets are drawn once.
Arrays live on JAX's default device: with a GPU and ``jax[cuda12]`` installed the same code runs there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.densities import log_prob
from models.set_batches import SetData, bucket_index, cap_sets, epoch_batches, ordered_batches
from models.set_encoder import SetSpec, apply_set, init_set_params
from models.spec import History, ModelSpec, TrainSpec
from models.training import TrainState, make_optimizer, optimise

#: spawn keys of the numpy streams drawn from a training seed (cap subsample of the validation sets; epochs)
_VAL_STREAM, _EPOCH_STREAM = 0x5E71, 0x5E72


def set_loss(spec: ModelSpec, set_spec: SetSpec, params: Any, members: jax.Array, mask: jax.Array,
             context: jax.Array, y: jax.Array, weight: jax.Array, key: jax.Array | None) -> jax.Array:
    """Weighted mean NLL (density models) or squared error (mse) of a padded batch, standardised units; filler
    rows (weight 0) count for nothing."""
    out = apply_set(spec, set_spec, params, members, mask, context, key=key)
    per_row = -log_prob(spec, out, y) if spec.is_density else jnp.square(out - y)
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


@dataclass(frozen=True)
class SetLoss:
    """:func:`set_loss` of one architecture as a hashable callable (a static jit argument: equal specs share one
    compilation per batch shape)."""

    spec: ModelSpec
    set_spec: SetSpec

    def __call__(self, params: Any, members: jax.Array, mask: jax.Array, context: jax.Array, y: jax.Array,
                 weight: jax.Array, key: jax.Array | None) -> jax.Array:
        return set_loss(self.spec, self.set_spec, params, members, mask, context, y, weight, key)


@partial(jax.jit, static_argnames=("loss", "opt"))
def set_step(state: TrainState, members: jax.Array, mask: jax.Array, context: jax.Array, y: jax.Array,
             weight: jax.Array, key: jax.Array, *, loss: SetLoss,
             opt: optax.GradientTransformation) -> tuple[TrainState, jax.Array]:
    """One optimizer step on a padded batch; returns the new state and the batch's loss."""
    value, grads = jax.value_and_grad(loss)(state.params, members, mask, context, y, weight, key)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), value


@partial(jax.jit, static_argnames=("loss",))
def _loss_sum(params: Any, members: jax.Array, mask: jax.Array, context: jax.Array, y: jax.Array,
              weight: jax.Array, *, loss: SetLoss) -> jax.Array:
    return loss(params, members, mask, context, y, weight, None) * jnp.sum(weight)


def evaluate_set(spec: ModelSpec, set_spec: SetSpec, params: Any, data: SetData, *, batch_size: int) -> float:
    """Mean loss over ``data`` (sets at most ``set_spec.cap`` members), bucket by bucket, per observation."""
    loss = SetLoss(spec, set_spec)
    total = jnp.zeros((), jnp.float32)
    for b in ordered_batches(data, widths=set_spec.widths, batch_size=batch_size):
        total = total + _loss_sum(params, b.members, b.mask, b.context, b.y, b.weight, loss=loss)
    return float(total) / max(data.n_obs, 1)


def steps_per_epoch(data: SetData, set_spec: SetSpec, batch_size: int) -> int:
    """Minibatches of one epoch: per bucket, its observations over ``batch_size`` rounded up."""
    per_bucket = np.bincount(bucket_index(np.minimum(data.counts, set_spec.cap), set_spec.widths),
                             minlength=len(set_spec.widths))
    return int(np.sum(-(-per_bucket // batch_size)))


def fit_set(
    spec: ModelSpec,
    set_spec: SetSpec,
    *,
    train_data: SetData,
    val_data: SetData,
    train: TrainSpec,
    seed: int,
    augment: Callable[[SetData, np.random.Generator], SetData] | None = None,
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[Any, History]:
    """Train one set network; return the parameters of the epoch with the lowest validation loss, and the history.

    ``train_data``, ``val_data``: :class:`~models.set_batches.SetData` with standardised targets (``y``) and context.
    ``augment(data, rng)``: drawn anew every epoch from the training data (e.g. random thinning); the validation
    data are used as given (draw their thinning once, before). Sets above ``set_spec.cap`` members are subsampled
    (validation: once, from ``seed``). ``train.batch_size`` rows per minibatch (at most the training set).
    ``progress(epoch, train_loss, val_loss)`` is called after every epoch. The same seed gives the same weights on
    the same machine.
    """
    start = time.perf_counter()
    if train_data.n_obs == 0 or val_data.n_obs == 0:
        raise ValueError("fit_set: expected observations in both the training and the validation data")
    if train_data.inputs.shape[1] != len(set_spec.inputs) or val_data.inputs.shape[1] != len(set_spec.inputs):
        raise ValueError(f"fit_set: expected {len(set_spec.inputs)} member inputs {list(set_spec.inputs)}, got "
                         f"{train_data.inputs.shape[1]} (training) and {val_data.inputs.shape[1]} (validation)")
    if train_data.context.shape[1] != val_data.context.shape[1]:
        raise ValueError("fit_set: training and validation data have different context columns")
    val_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_VAL_STREAM,)))
    val = cap_sets(val_data, set_spec.cap, val_rng)
    epochs_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_EPOCH_STREAM,)))
    fixed = None if augment is not None else cap_sets(train_data, set_spec.cap, epochs_rng)
    batch = min(train.batch_size, train_data.n_obs)
    opt = make_optimizer(train, steps_per_epoch(train_data, set_spec, batch))
    key = jax.random.PRNGKey(seed)
    key, init_key = jax.random.split(key)
    params = init_set_params(spec, set_spec, train_data.context.shape[1], init_key)
    loss = SetLoss(spec, set_spec)

    def epoch(state: TrainState, epoch_key: jax.Array) -> tuple[TrainState, jax.Array]:
        if fixed is None:
            assert augment is not None
            data = cap_sets(augment(train_data, epochs_rng), set_spec.cap, epochs_rng)
        else:
            data = fixed
        batches = epoch_batches(data, widths=set_spec.widths, batch_size=batch, rng=epochs_rng)
        keys = jax.random.split(epoch_key, len(batches))
        total = jnp.zeros((), jnp.float32)
        for b, k in zip(batches, keys, strict=True):
            state, value = set_step(state, b.members, b.mask, b.context, b.y, b.weight, k, loss=loss, opt=opt)
            total = total + value * float(b.weight.sum())
        return state, total / data.n_obs

    return optimise(params, key, opt=opt, epoch=epoch,
                    validate=lambda p: evaluate_set(spec, set_spec, p, val, batch_size=batch),
                    train=train, progress=progress, start=start)

"""A permutation-invariant set encoder (Deep Sets; Zaheer et al. 2017) that conditions the feature models' trunk
and density head: each observation's members, not 18 summaries of them, are the input.

``SetNetwork(spec, set_spec)(members, mask, context)``:

1. phi, a per-member MLP (:class:`models.networks.Trunk` applied to the last axis) on each member's scaled inputs
   ``members`` (B, W, C) (:mod:`models.set_batches`: r_proj / (1 Mpc/h), v_los / (1000 km/s) and, for the ``full``
   set, (log10 M* [Msun] - 10.5) / 0.5);
2. masked pooling over the W member slots (``mask`` (B, W), True for real members; padding never contributes):
   ``"mean"``; ``"moments"`` — the mean, standard deviation and maximum of every phi feature; or ``"attention"`` —
   pooling by multi-head attention from learned queries (PMA, Lee et al. 2019, "Set Transformer",
   arXiv:1810.00825), a weighted mean whose weights the members' features decide;
3. the pooled vector joined with the observation's ``context`` (B, F) (standardised summary features, log10 of the
   member count where the count is information, the ``full`` set; F may be 0);
4. the feature models' own network, :class:`models.networks.Network` (trunk + MDN or spline-flow head, by
   ``spec.kind``), so that :func:`models.densities.log_prob` and ``log_prob_grid`` read its output unchanged.

The output is in standardised target units (log10 M200c [Msun/h], or its residual to the M-sigma law, standardised
with the training split's mean and standard deviation). Every function is pure and jit-able, on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.networks import Network, Trunk
from models.set_batches import (
    DEFAULT_CAP,
    MEMBER_SCALES,
    SetData,
    bucket_widths,
    ordered_batches,
    set_keyed_cap_keep,
)
from models.spec import ModelSpec
from pipeline.errors import ConfigError

#: masked poolings of :class:`SetSpec`
POOLINGS = ("mean", "moments", "attention")


@dataclass(frozen=True)
class SetSpec:
    """The set encoder's architecture (the trunk and head after it are a :class:`models.spec.ModelSpec`).

    inputs : per-member columns, from :data:`models.set_batches.MEMBER_SCALES` (``("r_proj", "v_los")`` for the
        dynamics set, plus ``"log10_mstar"`` for the full set)
    phi : widths of the per-member MLP (each layer Dense + the ModelSpec's activation)
    pooling : one of :data:`POOLINGS`
    n_heads, n_queries : attention pooling: heads and learned queries (the pooled vector has
        ``n_queries * phi[-1]`` entries; ``phi[-1]`` must be a multiple of ``n_heads``)
    cap : members per observation; a larger set keeps a random subsample of ``cap``
        (:func:`models.set_batches.cap_sets`)
    """

    inputs: tuple[str, ...] = ("r_proj", "v_los", "log10_mstar")
    phi: tuple[int, ...] = (64, 64)
    pooling: str = "moments"
    n_heads: int = 4
    n_queries: int = 1
    cap: int = DEFAULT_CAP

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "phi", tuple(int(w) for w in self.phi))
        unknown = [c for c in self.inputs if c not in MEMBER_SCALES]
        if not self.inputs or unknown or len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(f"set model: inputs must be distinct names from {list(MEMBER_SCALES)}, got "
                              f"{list(self.inputs)}")
        if not self.phi or any(w < 1 for w in self.phi):
            raise ConfigError(f"set model: phi must be positive layer widths, got {list(self.phi)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"set model: pooling must be one of {list(POOLINGS)}, got '{self.pooling}'")
        if self.n_heads < 1 or self.n_queries < 1 or self.phi[-1] % self.n_heads:
            raise ConfigError(f"set model: n_heads >= 1 dividing phi[-1] = {self.phi[-1]} and n_queries >= 1 are "
                              f"required, got n_heads = {self.n_heads}, n_queries = {self.n_queries}")
        if self.cap < 1:
            raise ConfigError(f"set model: cap must be >= 1 member, got {self.cap}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Bucket widths of the padded batches (:func:`models.set_batches.bucket_widths`)."""
        return bucket_widths(self.cap)

    @property
    def pooled_size(self) -> int:
        """Entries of the pooled vector per observation."""
        d = self.phi[-1]
        return {"mean": d, "moments": 3 * d, "attention": self.n_queries * d}[self.pooling]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"inputs": list(self.inputs), "phi": list(self.phi)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SetSpec:
        return cls(**data)


def masked_mean(h: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``h`` (B, W, D) over the members where ``mask`` (B, W); 0 for an empty set: (B, D)."""
    m = mask[..., None].astype(h.dtype)
    n = jnp.sum(m, axis=1)
    return jnp.sum(h * m, axis=1) / jnp.maximum(n, 1.0)


def masked_moments(h: jax.Array, mask: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Masked mean, standard deviation (population; ``sqrt(var + eps)``, finite gradients for one member) and
    maximum of ``h`` (B, W, D) over members: (B, 3D); an empty set gives mean 0, std sqrt(eps), max 0."""
    m = mask[..., None].astype(h.dtype)
    n = jnp.maximum(jnp.sum(m, axis=1), 1.0)
    mean = jnp.sum(h * m, axis=1) / n
    var = jnp.sum(jnp.square(h - mean[:, None, :]) * m, axis=1) / n
    low = jnp.finfo(h.dtype).min
    top = jnp.max(jnp.where(mask[..., None], h, low), axis=1)
    top = jnp.where(jnp.any(mask, axis=1)[:, None], top, 0.0)
    return jnp.concatenate([mean, jnp.sqrt(var + eps), top], axis=-1)


class AttentionPool(nn.Module):
    """Pooling by multi-head attention (PMA): ``n_queries`` learned queries attend over the members' features;
    masked members get zero weight (their logits are dropped before the softmax). Output (B, n_queries * D) with
    D the feature width; an empty set gives the queries' own residual term."""

    n_heads: int = 4
    n_queries: int = 1

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        b, _, d = h.shape
        dh = d // self.n_heads
        queries = self.param("queries", nn.initializers.normal(1.0), (self.n_queries, d))
        q = nn.Dense(d, name="q")(queries).reshape(self.n_queries, self.n_heads, dh)
        k = nn.Dense(d, name="k")(h).reshape(b, -1, self.n_heads, dh)
        v = nn.Dense(d, name="v")(h).reshape(b, -1, self.n_heads, dh)
        logits = jnp.einsum("qhe,bwhe->bhqw", q, k) / jnp.sqrt(float(dh))
        keep = mask[:, None, None, :]
        logits = jnp.where(keep, logits, -1e30)  # finite: no inf or NaN reaches a gradient, even for an empty set
        top = jnp.max(logits, axis=-1, keepdims=True)
        w = jnp.where(keep, jnp.exp(logits - top), 0.0)
        w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-30)
        pooled = jnp.einsum("bhqw,bwhe->bqhe", w, v).reshape(b, self.n_queries, d)
        out = pooled + queries[None]  # the residual of a multihead-attention block (MAB(S, Z) of the Set Transformer)
        out = out + nn.Dense(d, name="ff")(nn.relu(out))
        return out.reshape(b, self.n_queries * d)


class SetEncoder(nn.Module):
    """phi on every member, then masked pooling: (B, W, C), (B, W) -> (B, ``set_spec.pooled_size``)."""

    set_spec: SetSpec
    activation: str = "relu"

    @nn.compact
    def __call__(self, members: jax.Array, mask: jax.Array) -> jax.Array:
        s = self.set_spec
        h = Trunk(s.phi, self.activation, name="phi")(members)
        if s.pooling == "mean":
            return masked_mean(h, mask)
        if s.pooling == "moments":
            return masked_moments(h, mask)
        return AttentionPool(s.n_heads, s.n_queries, name="pool")(h, mask)


class SetNetwork(nn.Module):
    """Set encoder + the feature models' :class:`models.networks.Network` (trunk + head by ``spec.kind``).

    ``members`` (B, W, C) scaled member inputs, ``mask`` (B, W) bool, ``context`` (B, F) (F may be 0). Returns the
    head's output for B rows, as :class:`~models.networks.Network` does (MixtureParams, FlowParams or (B,) points),
    in standardised target units.
    """

    spec: ModelSpec
    set_spec: SetSpec

    @nn.compact
    def __call__(self, members: jax.Array, mask: jax.Array, context: jax.Array, *,
                 deterministic: bool = True) -> Any:
        z = SetEncoder(self.set_spec, self.spec.activation, name="encoder")(members, mask)
        if context.shape[-1]:
            z = jnp.concatenate([z, context.astype(z.dtype)], axis=-1)
        return Network(self.spec, name="network")(z, deterministic=deterministic)


def init_set_params(spec: ModelSpec, set_spec: SetSpec, n_context: int, key: jax.Array) -> Any:
    """Fresh parameters of :class:`SetNetwork` for ``n_context`` context columns."""
    c = len(set_spec.inputs)
    return SetNetwork(spec, set_spec).init(
        {"params": key}, jnp.zeros((1, 1, c), jnp.float32), jnp.ones((1, 1), bool),
        jnp.zeros((1, n_context), jnp.float32))["params"]


def apply_set(spec: ModelSpec, set_spec: SetSpec, params: Any, members: jax.Array, mask: jax.Array,
              context: jax.Array, *, key: jax.Array | None = None) -> Any:
    """:class:`SetNetwork`'s output; dropout (``spec.dropout > 0``) only when a ``key`` is given."""
    deterministic = key is None or spec.dropout == 0.0
    rngs = None if deterministic else {"dropout": key}
    return SetNetwork(spec, set_spec).apply({"params": params}, members, mask, context, deterministic=deterministic,
                                            rngs=rngs)


# -- predictions ----------------------------------------------------------------------------------------------------
def log_prob_rows(spec: ModelSpec, out: Any, y: jax.Array) -> jax.Array:
    """log q(y_ij | x_i) for a (B, G) array ``y`` of standardised targets, each row its own points (a grid shifted
    per row, e.g. masses as residuals to a per-row M-sigma prediction): (B, G), per standardised unit."""
    if spec.kind == "flow":
        from models.flow import FlowParams, flow_log_prob

        rows = FlowParams(out.shift[:, None], out.log_scale[:, None], out.widths[:, None, :],
                          out.heights[:, None, :], out.derivatives[:, None, :])
        return flow_log_prob(rows, y, bound=spec.bound)
    if spec.kind == "mdn":
        z = (y[:, :, None] - out.means[:, None, :]) / out.scales[:, None, :]
        comp = -0.5 * z * z - jnp.log(out.scales[:, None, :]) - 0.5 * jnp.log(2 * jnp.pi)
        return jax.nn.logsumexp(comp + jax.nn.log_softmax(out.logits, axis=-1)[:, None, :], axis=-1)
    raise ValueError(f"a '{spec.kind}' model has no density")


@partial(jax.jit, static_argnames=("spec", "set_spec"))
def _mixture_rows(stacked: Any, members: jax.Array, mask: jax.Array, context: jax.Array, y: jax.Array, *,
                  spec: ModelSpec, set_spec: SetSpec) -> jax.Array:
    """log of the equal-weight mixture over the D stacked networks (leaves (D, ...)) at (B, G) standardised points,
    per standardised unit (the networks unrolled, as in :mod:`models.model`)."""
    n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    per = []
    for d in range(n):
        p = jax.tree_util.tree_map(lambda a, d=d: a[d], stacked)
        per.append(log_prob_rows(spec, apply_set(spec, set_spec, p, members, mask, context), y))
    return jax.nn.logsumexp(jnp.stack(per), axis=0) - jnp.log(float(n))


def set_log_prob_grid(spec: ModelSpec, set_spec: SetSpec, members_params: Sequence[Any], data: SetData,
                      grid_std: np.ndarray, *, offset_std: np.ndarray | None = None, batch_size: int = 512,
                      seed: int = 0) -> np.ndarray:
    """log q(grid_j | set_i) of the equal-weight mixture over ``members_params`` (an ensemble), per standardised
    target unit, for every observation of ``data``: an (N, G) float32 array in ``data``'s row order.

    ``grid_std`` (G,): standardised target points; ``offset_std`` (N,): a per-observation shift subtracted from the
    grid (a model of the residual to a per-observation prediction, in the same standardised units), default 0.
    Sets above ``set_spec.cap`` members keep a subsample that depends on ``seed`` and the set's own members only
    (:func:`models.set_batches.set_keyed_cap_keep`), not on the other rows. Divide by the target's standard
    deviation (subtract its log) for a density per dex.
    """
    if not spec.is_density:
        raise ValueError(f"a '{spec.kind}' model predicts points, not densities")
    if np.any(data.counts > set_spec.cap):
        data = data.with_members(set_keyed_cap_keep(data, set_spec.cap, seed))
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack([jnp.asarray(a) for a in leaves]), *members_params)
    grid = np.asarray(grid_std, np.float32)
    offset = np.zeros(data.n_obs, np.float32) if offset_std is None else np.asarray(offset_std, np.float32)
    out = np.empty((data.n_obs, len(grid)), np.float32)
    for batch in ordered_batches(data, widths=set_spec.widths, batch_size=min(batch_size, max(data.n_obs, 1))):
        real = batch.rows >= 0
        shift = np.zeros(len(batch.rows), np.float32)
        shift[real] = offset[batch.rows[real]]
        y = jnp.asarray(grid[None, :] - shift[:, None])
        lp = _mixture_rows(stacked, jnp.asarray(batch.members), jnp.asarray(batch.mask), jnp.asarray(batch.context),
                           y, spec=spec, set_spec=set_spec)
        out[batch.rows[real]] = np.asarray(lp)[real]
    return out

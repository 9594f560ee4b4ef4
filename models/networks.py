"""Flax modules: an MLP trunk with a distribution head (MDN or spline flow) or a point head (MSE baseline).

Inputs are standardised features (B, F); outputs live in standardised target units.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.spec import ModelSpec

_ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu, "tanh": jnp.tanh, "silu": nn.silu}


class MixtureParams(NamedTuple):
    """Gaussian mixture per row: logits (B, K), means (B, K), scales (B, K) > min_scale."""

    logits: jax.Array
    means: jax.Array
    scales: jax.Array


class Trunk(nn.Module):
    hidden: tuple[int, ...]
    activation: str = "relu"
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        act = _ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
        return x


class MixtureHead(nn.Module):
    n_components: int
    min_scale: float

    @nn.compact
    def __call__(self, h: jax.Array) -> MixtureParams:
        k = self.n_components
        out = nn.Dense(3 * k)(h)
        logits, means, raw = out[:, :k], out[:, k : 2 * k], out[:, 2 * k :]
        return MixtureParams(logits, means, jax.nn.softplus(raw) + self.min_scale)


class PointHead(nn.Module):
    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return nn.Dense(1)(h)[:, 0]


class Network(nn.Module):
    """Trunk + head chosen by ``spec.kind``."""

    spec: ModelSpec

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> Any:
        s = self.spec
        h = Trunk(s.hidden, s.activation, s.dropout)(x, deterministic=deterministic)
        if s.kind == "mdn":
            return MixtureHead(s.n_components, s.min_scale)(h)
        if s.kind == "flow":
            from models.flow import SplineFlowHead

            return SplineFlowHead(n_bins=s.n_bins, bound=s.bound)(h)
        return PointHead()(h)


def init_params(spec: ModelSpec, n_features: int, key: jax.Array) -> Any:
    """Fresh parameters for ``spec`` on ``n_features`` inputs."""
    return Network(spec).init({"params": key}, jnp.zeros((1, n_features), jnp.float32))["params"]

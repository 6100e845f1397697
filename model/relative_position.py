"""T5's bucketed relative position bias (Raffel et al. 2020), bidirectional or causal.

A learned table (buckets, H) is looked up by the bucket of each (query, key) distance and
added to the attention scores. T5 keeps one table per stack (encoder self-attention,
decoder self-attention), stored in the first layer and shared by all layers; Meshtron
keeps it beside the stack. The table's `heads` axis is split like the attention heads
under tensor parallelism, so each device adds the bias of its own heads.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model.layers import make_param


def relative_bucket(relative: jax.Array, bidirectional: bool, num_buckets: int = 32,
                    max_distance: int = 128) -> jax.Array:
    """Bucket of `relative` = key position - query position (int array), as T5 computes it.

    Half the buckets (per direction when bidirectional) are exact small distances, the rest
    logarithmic bins up to `max_distance`; causal attention maps every future key to bucket 0.
    """
    relative = relative.astype(jnp.int32)
    buckets = jnp.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative)
    else:
        distance = -jnp.minimum(relative, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    safe = jnp.maximum(distance, 1).astype(jnp.float32)
    large = max_exact + (jnp.log(safe / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


class RelativeBias(nnx.Module):
    """The (buckets, H) table of one stack and the (1, H, T, S) bias it gives."""

    def __init__(self, cfg: ModelConfig, bidirectional: bool, rngs: nnx.Rngs):
        self.bidirectional = bidirectional
        self.buckets = cfg.relative_buckets
        self.max_distance = cfg.relative_max_distance
        init = jax.nn.initializers.normal(cfg.init_std)
        self.table = make_param(rngs, init, (cfg.relative_buckets, cfg.n_heads), (None, "heads"), cfg)

    def __call__(self, query_positions: jax.Array, key_length: int, dtype=jnp.float32) -> jax.Array:
        """query_positions (T,) int, keys at 0..key_length-1 -> bias (1, H, T, S)."""
        relative = jnp.arange(key_length)[None, :] - query_positions[:, None]  # (T, S)
        idx = relative_bucket(relative, self.bidirectional, self.buckets, self.max_distance)
        values = jnp.take(self.table[...], idx, axis=0)  # (T, S, H)
        return jnp.transpose(values, (2, 0, 1))[None].astype(dtype)

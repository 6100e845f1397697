"""Blocks of encoders and encoder-decoders: attention with an explicit mask and additive bias, cross-attention,
pre- or post-normalisation.

The attention keeps the decoder's parameters (q (E, H, D), k/v (E, K, D), o (H, D, E), the same logical axis
names), so Megatron splits self- and cross-attention by heads exactly as it splits the decoder's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model.attention import Attention
from meshtron.model.block import MLP
from meshtron.model.layers import Norm, apply_rope, dropout
from meshtron.parallel import spmd


class SeqAttention(Attention):
    """Self-attention (bidirectional or causal, by `mask`) or cross-attention over given keys and values.

    T5 (model.position=relative) has no 1/sqrt(D) on the scores: it is folded into its initialisation."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        super().__init__(cfg, rngs)
        if cfg.position == "relative":
            self.scale = 1.0

    def kv(self, memory: jax.Array) -> dict:
        """Keys and values (B, S, K, D) of `memory` (B, S, E): cross-attention's, computed once per sequence."""
        memory = spmd.enter_split(memory, "kv_heads")
        return {"k": self._project(memory, self.k, self.k_bias), "v": self._project(memory, self.v, self.v_bias)}

    def __call__(self, x, mask=None, bias=None, kv=None, positions=None, cache=None, cache_index=None):
        """x (B, T, E) -> (B, T, E), new cache. mask: bool broadcastable to (B, H, T, S); bias: (1, H, T, S).
        kv given: cross-attention to it. cache given: decoder self-attention writing at cache_index."""
        x = spmd.enter_split(x, "heads", "kv_heads")
        q = self._project(x, self.q, self.q_bias)
        new_cache = None
        if kv is None:
            k, v = self._project(x, self.k, self.k_bias), self._project(x, self.v, self.v_bias)
            if self.position == "rope":
                q, k = apply_rope(q, positions, self.rope_theta), apply_rope(k, positions, self.rope_theta)
            if cache is not None:
                k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1)
                v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1)
                new_cache = {"k": k, "v": v}
        else:
            k, v = kv["k"], kv["v"]
        out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias=bias, mask=mask,
                                           scale=self.scale, implementation=self.implementation)
        y = jnp.einsum("bthd,hde->bte", out, self.o[...].astype(x.dtype))
        return spmd.sum_over(y, "heads") + self.output_bias(y.dtype), new_cache


class SeqBlock(nnx.Module):
    """Self-attention, optional cross-attention, MLP; each a residual branch normalised before (pre-norm,
    T5) or after the add (post-norm: BERT, the original Transformer)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, cross: bool = False):
        self.post = cfg.post_norm
        self.rate = cfg.dropout
        self.attn_norm = Norm(cfg)
        self.attn = SeqAttention(cfg, rngs)
        self.cross_norm = Norm(cfg) if cross else None
        self.cross = SeqAttention(cfg, rngs) if cross else None
        self.mlp_norm = Norm(cfg)
        self.mlp = MLP(cfg, rngs)

    def _residual(self, x, norm, branch, key):
        if self.post:
            return norm(x + dropout(branch(x), self.rate, key))
        return x + dropout(branch(norm(x)), self.rate, key)

    def __call__(self, x, mask=None, bias=None, memory=None, memory_mask=None, cross_kv=None, positions=None,
                 cache=None, cache_index=None, dropout_key=None):
        """x (B, T, E) -> (B, T, E), new self-attention cache. Cross-attention reads `cross_kv` when given
        (generation), else projects `memory` (B, S, E)."""
        keys = jax.random.split(dropout_key, 3) if dropout_key is not None else (None, None, None)
        caches = []

        def self_attention(h):
            y, c = self.attn(h, mask, bias, positions=positions, cache=cache, cache_index=cache_index)
            caches.append(c)
            return y

        x = self._residual(x, self.attn_norm, self_attention, keys[0])
        if self.cross is not None:
            def cross_attention(h):
                kv = cross_kv if cross_kv is not None else self.cross.kv(memory)
                return self.cross(h, memory_mask, kv=kv)[0]

            x = self._residual(x, self.cross_norm, cross_attention, keys[1])
        x = self._residual(x, self.mlp_norm, self.mlp, keys[2])
        return x, caches[0]


def padding_mask(key_mask: jax.Array | None, query_length: int) -> jax.Array | None:
    """(B, S) bool of real keys -> (B, 1, T, S) attention mask (None: every key is real)."""
    if key_mask is None:
        return None
    return jnp.broadcast_to(key_mask[:, None, None, :].astype(bool),
                            (key_mask.shape[0], 1, query_length, key_mask.shape[1]))


def causal_mask(query_positions: jax.Array, key_length: int) -> jax.Array:
    """(1, 1, T, S) bool: query at position p sees keys 0..p."""
    return (jnp.arange(key_length)[None, :] <= query_positions[:, None])[None, None]

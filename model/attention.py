"""Causal self-attention: multi-head, grouped-query and multi-query, with an optional KV cache.

Shapes: B batch, T query positions, S cached positions, H query heads, K key/value heads,
D head width, E d_model. Under tensor parallelism each device holds H/t query heads and
K/t kv heads; the only communication is the all-reduce after the output projection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model import mup
from meshtron.model.layers import apply_rope, attention_implementation, initializer, make_param, zeros_param
from meshtron.parallel import spmd


class Attention(nnx.Module):
    """Self-attention block with projections kept per head: q (E, H, D), k/v (E, K, D), o (H, D, E)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        E, H, K, D = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        self.position = cfg.position
        self.rope_theta = cfg.rope_theta
        self.implementation = attention_implementation(cfg)
        self.scale = mup.attention_scale(cfg)  # None: 1/sqrt(head_dim)
        in_init = initializer(cfg, in_axis=0, out_axis=(1, 2))
        self.q = make_param(rngs, in_init, (E, H, D), ("embed", "heads", "head_dim"), cfg)
        self.k = make_param(rngs, in_init, (E, K, D), ("embed", "kv_heads", "head_dim"), cfg)
        self.v = make_param(rngs, in_init, (E, K, D), ("embed", "kv_heads", "head_dim"), cfg)
        out_init = initializer(cfg, in_axis=(0, 1), out_axis=2, residual=True)
        self.o = make_param(rngs, out_init, (H, D, E), ("heads", "head_dim", "embed"), cfg)
        if cfg.bias:
            self.q_bias = zeros_param((H, D), ("heads", "head_dim"), cfg)
            self.k_bias = zeros_param((K, D), ("kv_heads", "head_dim"), cfg)
            self.v_bias = zeros_param((K, D), ("kv_heads", "head_dim"), cfg)
            self.o_bias = zeros_param((E,), ("embed",), cfg)
        else:
            self.q_bias = self.k_bias = self.v_bias = self.o_bias = None

    def _project(self, x, kernel, bias):
        y = jnp.einsum("bte,ehd->bthd", x, kernel[...].astype(x.dtype))
        return y if bias is None else y + bias[...].astype(x.dtype)

    def __call__(self, x: jax.Array, positions: jax.Array, cache: dict | None = None,
                 cache_index: jax.Array | None = None, reduce: bool = True, mask: jax.Array | None = None):
        """x (B, T, E) -> (B, T, E). With a cache (k, v: (B, S, K, D)) the new keys are written at
        cache_index and queries attend to everything cached so far; returns (y, new_cache). A mask (B, 1, T, T)
        replaces the causal one (prefix LM)."""
        x = spmd.enter_split(x, "heads", "kv_heads")
        q = self._project(x, self.q, self.q_bias)  # (B, T, H, D)
        k = self._project(x, self.k, self.k_bias)  # (B, T, K, D)
        v = self._project(x, self.v, self.v_bias)
        if self.position == "rope":
            q = apply_rope(q, positions, self.rope_theta)
            k = apply_rope(k, positions, self.rope_theta)
        if cache is None:
            out = jax.nn.dot_product_attention(q, k, v, scale=self.scale, is_causal=mask is None, mask=mask,
                                               implementation=self.implementation)
            new_cache = None
        else:
            k_all = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1)
            key_pos = jnp.arange(k_all.shape[1])
            mask = key_pos[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, T, S)
            out = jax.nn.dot_product_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype), scale=self.scale,
                                               mask=mask)
            new_cache = {"k": k_all, "v": v_all}
        y = jnp.einsum("bthd,hde->bte", out, self.o[...].astype(x.dtype))  # partial sum over local heads
        if reduce:
            y = spmd.sum_over(y, "heads") + self.output_bias(y.dtype)
        return y, new_cache

    def output_bias(self, dtype) -> jax.Array | float:
        """Bias added once after the heads' partial outputs are summed."""
        return 0.0 if self.o_bias is None else self.o_bias[...].astype(dtype)

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


CPU_QUERY_BLOCK = 64  # the smallest query block worth its own matmuls on a CPU
CPU_QUERY_BLOCKS = 4  # at most this many: beyond it the extra slices and concatenations cost more than they save


def query_blocks(seq_len: int, implementation: str | None) -> int:
    """How many query blocks causal attention runs in: on a CPU with the `auto` kernel, 2-4 blocks of at least
    CPU_QUERY_BLOCK queries, each against the keys up to its own end, so the fully masked upper triangle of
    the scores is never computed (about 3/8 of the attention matmuls and softmax at 4 blocks); 1 elsewhere,
    where cuDNN's and the TPU's kernels handle the mask themselves."""
    if implementation is not None or spmd.target_platform() != "cpu":
        return 1
    n = min(CPU_QUERY_BLOCKS, seq_len // CPU_QUERY_BLOCK)
    while n > 1 and seq_len % n:
        n -= 1
    return max(n, 1)


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, scale: float | None,
                     implementation: str | None) -> jax.Array:
    """Causal attention, q (B, T, H, D), k and v (B, T, K, D) -> (B, T, H, D), in query_blocks() blocks:
    block i's queries attend to keys 0 .. its own last position, the diagonal block under a causal mask.
    The result is full causal attention's (masked keys have zero weight either way)."""
    T = q.shape[1]
    n = query_blocks(T, implementation)
    if n == 1:
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation=implementation)
    size = T // n
    outputs = []
    for i in range(n):
        end = (i + 1) * size
        queries = i * size + jnp.arange(size)
        mask = (jnp.arange(end)[None, :] <= queries[:, None])[None, None]  # (1, 1, size, end)
        outputs.append(jax.nn.dot_product_attention(q[:, i * size:end], k[:, :end], v[:, :end], scale=scale,
                                                    mask=mask))
    return jnp.concatenate(outputs, axis=1)


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
        # one (B·T, E) x (E, heads·D) matmul, as plain matrices: XLA:CPU then keeps q, k and v in the
        # matmul's own row-major layout (an einsum over the head axis costs it extra transposes and copies)
        w = kernel[...].astype(x.dtype)
        y = (x.reshape(-1, x.shape[-1]) @ w.reshape(w.shape[0], -1)).reshape(*x.shape[:-1], *w.shape[1:])
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
        if cache is None and mask is None:
            out = causal_attention(q, k, v, self.scale, self.implementation)
            new_cache = None
        elif cache is None:
            out = jax.nn.dot_product_attention(q, k, v, scale=self.scale, mask=mask, implementation=self.implementation)
            new_cache = None
        else:
            k_all = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), cache_index, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), cache_index, axis=1)
            key_pos = jnp.arange(k_all.shape[1])
            mask = key_pos[None, None, None, :] <= positions[:, None, :, None]  # (B, 1, T, S)
            out = jax.nn.dot_product_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype), scale=self.scale,
                                               mask=mask)
            new_cache = {"k": k_all, "v": v_all}
        o = self.o[...].astype(x.dtype)  # partial sum over local heads, as one (B·T, heads·D) x (heads·D, E) matmul
        y = (out.reshape(-1, o.shape[0] * o.shape[1]) @ o.reshape(-1, o.shape[2])).reshape(*out.shape[:2], -1)
        if reduce:
            y = spmd.sum_over(y, "heads") + self.output_bias(y.dtype)
        return y, new_cache

    def output_bias(self, dtype) -> jax.Array | float:
        """Bias added once after the heads' partial outputs are summed."""
        return 0.0 if self.o_bias is None else self.o_bias[...].astype(dtype)

"""The MLP and the transformer block (pre-norm sequential, or PaLM's parallel form)."""

from __future__ import annotations

import jax
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model.activations import ACTIVATIONS, GATED
from meshtron.model.attention import Attention
from meshtron.model.layers import Norm, dropout, initializer, make_param, zeros_param
from meshtron.parallel import spmd


class MLP(nnx.Module):
    """Feed-forward E -> F -> E with the activation of `model.mlp`, gated (SwiGLU, GEGLU) or plain."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        E, F = cfg.d_model, cfg.ff_dim
        self.kind = cfg.mlp
        in_init = initializer(cfg, in_axis=0, out_axis=1)
        self.up = make_param(rngs, in_init, (E, F), ("embed", "mlp"), cfg)
        self.gate = make_param(rngs, in_init, (E, F), ("embed", "mlp"), cfg) if cfg.mlp in GATED else None
        self.down = make_param(rngs, initializer(cfg, 0, 1, residual=True), (F, E), ("mlp", "embed"), cfg)
        self.up_bias = zeros_param((F,), ("mlp",), cfg) if cfg.bias else None
        self.down_bias = zeros_param((E,), ("embed",), cfg) if cfg.bias else None

    def __call__(self, x: jax.Array, reduce: bool = True) -> jax.Array:
        """x (B, T, E) -> (B, T, E); each device holds F/t hidden units under tensor parallelism."""
        x = spmd.enter_split(x, "mlp")
        h = x @ self.up[...].astype(x.dtype)  # (B, T, F)
        if self.up_bias is not None:
            h = h + self.up_bias[...].astype(x.dtype)
        act = ACTIVATIONS[self.kind]
        h = act(x @ self.gate[...].astype(x.dtype)) * h if self.gate is not None else act(h)
        y = h @ self.down[...].astype(x.dtype)  # partial sum over local hidden units
        if reduce:
            y = spmd.sum_over(y, "mlp") + self.output_bias(y.dtype)
        return y

    def output_bias(self, dtype) -> jax.Array | float:
        """Bias added once after the partial outputs are summed."""
        return 0.0 if self.down_bias is None else self.down_bias[...].astype(dtype)


class Block(nnx.Module):
    """x + attn(norm(x)), then + mlp(norm(.)); or PaLM's x + attn(norm(x)) + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.parallel = cfg.parallel_block
        self.rate = cfg.dropout
        self.attn_norm = Norm(cfg)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = None if cfg.parallel_block else Norm(cfg)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, cache=None, cache_index=None, dropout_key=None,
                 mask=None):
        """x (B, T, E) -> (B, T, E), new_cache."""
        keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        if self.parallel:
            h = spmd.enter_split(self.attn_norm(x), "heads", "kv_heads", "mlp")  # one "f" for both branches
            a, new_cache = self.attn(h, positions, cache, cache_index, reduce=False, mask=mask)
            m = self.mlp(h, reduce=False)
            # one all-reduce for both branches (heads and mlp are split over the same devices)
            y = spmd.sum_over(a + m, "heads", "mlp") + self.attn.output_bias(a.dtype) + self.mlp.output_bias(a.dtype)
            return x + dropout(y, self.rate, keys[0]), new_cache
        a, new_cache = self.attn(self.attn_norm(x), positions, cache, cache_index, mask=mask)
        x = x + dropout(a, self.rate, keys[0])
        x = x + dropout(self.mlp(self.mlp_norm(x)), self.rate, keys[1])
        return x, new_cache

"""Small building blocks: parameter creation with logical axes, norms, positions, RoPE.

Every parameter is an `nnx.Param` whose `out_sharding` metadata names its logical axes
(`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`); parallel/rules.py
alone decides which mesh axes split them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model import mup
from meshtron.parallel.spmd import target_platform

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(cfg: ModelConfig):
    """The dtype of matmuls and activations; `auto` is float32 on CPU and bfloat16 elsewhere."""
    if cfg.compute_dtype == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return DTYPES[cfg.compute_dtype]


CPU_UNROLL_UP_TO = 8  # layers: XLA:CPU runs an unrolled stack of up to this many faster; compile time stays flat


def scan_unroll(cfg: ModelConfig) -> int:
    """Layers per iteration of the layer scan. `auto` (0): the whole stack when it has at most CPU_UNROLL_UP_TO
    layers and the step is compiled for a CPU (no loop, weight slices and gradient updates fused across layers,
    about 8% less work there); one layer elsewhere, a TPU slice compiled on a CPU host included (GPU/TPU keep
    the rolled loop: compile time independent of depth, same speed), and under remat or ZeRO-3
    (model/transformer.py), where the loop bounds the memory."""
    if cfg.scan_unroll:
        return min(cfg.scan_unroll, cfg.n_layers)
    if target_platform() == "cpu" and cfg.n_layers <= CPU_UNROLL_UP_TO:
        return cfg.n_layers
    return 1


def attention_implementation(cfg: ModelConfig) -> str | None:
    """The kernel for jax.nn.dot_product_attention: None lets JAX pick (cuDNN flash attention when the GPU,
    dtype and shapes allow, XLA otherwise); `cudnn` asked for off a GPU falls back to XLA."""
    if cfg.attention == "auto":
        return None
    if cfg.attention == "cudnn" and jax.default_backend() != "gpu":
        return "xla"
    return cfg.attention


def initializer(cfg: ModelConfig, in_axis, out_axis, residual: bool = False):
    """Weight initialiser by config: gpt2 normal (residual outputs scaled by 1/sqrt(2L)), xavier or kaiming."""
    if cfg.init == "gpt2":
        std = cfg.init_std / math.sqrt(2 * cfg.n_layers) if residual else cfg.init_std
        return jax.nn.initializers.normal(std * mup.hidden_init_factor(cfg))  # muP: variance ~ 1/fan_in
    if cfg.init == "xavier":
        return jax.nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=in_axis, out_axis=out_axis)
    return jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal", in_axis=in_axis, out_axis=out_axis)


def _param(value: jax.Array, names: tuple) -> nnx.Param:
    # logical names only: parallel/ turns them into shardings when it creates the state under jit
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def make_param(rngs: nnx.Rngs, init, shape: tuple, names: tuple, cfg: ModelConfig) -> nnx.Param:
    """A parameter initialised by `init`, stored in param_dtype, tagged with logical axis names."""
    return _param(init(rngs.params(), shape, DTYPES[cfg.param_dtype]), names)


def zeros_param(shape: tuple, names: tuple, cfg: ModelConfig) -> nnx.Param:
    """A zero-initialised parameter (biases)."""
    return _param(jnp.zeros(shape, DTYPES[cfg.param_dtype]), names)


def ones_param(shape: tuple, names: tuple, cfg: ModelConfig) -> nnx.Param:
    """A one-initialised parameter (norm scales)."""
    return _param(jnp.ones(shape, DTYPES[cfg.param_dtype]), names)


class Norm(nnx.Module):
    """LayerNorm (optionally with bias) or RMSNorm over the last axis, computed in float32."""

    def __init__(self, cfg: ModelConfig):
        self.kind = cfg.norm
        self.eps = cfg.norm_eps
        self.scale = ones_param((cfg.d_model,), ("embed",), cfg)
        self.bias = zeros_param((cfg.d_model,), ("embed",), cfg) if cfg.norm == "layernorm" and cfg.bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - jnp.mean(x, axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        x = x * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            x = x + self.bias[...].astype(jnp.float32)
        return x.astype(dtype)


def sinusoidal_positions(positions: jax.Array, d_model: int) -> jax.Array:
    """Vaswani et al. encodings for integer positions (...,) -> (..., d_model), float32."""
    half = d_model // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[..., None] * freqs
    enc = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*positions.shape, 2 * half)
    if d_model % 2:
        enc = jnp.pad(enc, [(0, 0)] * positions.ndim + [(0, 1)])
    return enc


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary positions, rotate-half layout (as Hugging Face Llama). x: (B, T, H, D), positions: (B, T)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # (D/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, D/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # (B, T, 1, D)
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., dim // 2:], xf[..., : dim // 2]], axis=-1)
    return (xf * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when rate is 0 or no key is given (evaluation)."""
    if rate == 0.0 or key is None:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))

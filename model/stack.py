"""A stack of identical blocks, stacked on a `layers` axis and scanned (or a plain list), with activation
checkpointing and ZeRO-3's per-block gather: the machinery of the decoder's trunk for any block kind."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.parallel import spmd

REMAT_POLICIES = {
    "none": jax.checkpoint_policies.everything_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(kind: str):
    """The activation-checkpoint policy for `model.remat`; ZeRO-3's gathered weights are never saved."""
    return spmd.never_save_gathered(REMAT_POLICIES[kind])


def gathers_params() -> bool:
    """True inside a step whose layout gathers each block's weights when used (ZeRO-3)."""
    layout = spmd.current_layout()
    return layout is not None and layout.gathers_params


def make_stack(cfg: ModelConfig, n_layers: int, rngs: nnx.Rngs, build: Callable[[nnx.Rngs], nnx.Module]):
    """`n_layers` blocks from `build(rngs)`: one module with stacked parameters (scan) or an nnx.List."""
    if not cfg.scan_layers:
        return nnx.List([build(rngs) for _ in range(n_layers)])

    @nnx.split_rngs(splits=n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return build(rngs)

    return make(rngs)


def run_stack(cfg: ModelConfig, blocks, n_layers: int, x: jax.Array, call: Callable, per_layer=None,
              dropout_key=None):
    """x through every block: `call(block, x, layer_inputs, key) -> (x, out)`; `per_layer` is a pytree with a
    leading n_layers axis (caches, cross-attention K/V) or None. Returns x and the stacked outs."""
    keys = jax.random.split(dropout_key, n_layers) if dropout_key is not None else None
    return scan_blocks(cfg, blocks, x, call, per_layer, keys)


def scan_blocks(cfg: ModelConfig, blocks, x: jax.Array, call: Callable, per_layer, layer_keys, unroll: int = 1):
    """x through every block, each gathered (ZeRO-3) and checkpointed (remat) as `cfg` and the layout ask:
    `call(block, x, layer_inputs, key) -> (x, out)`, with per-layer inputs and keys (leading n_layers axis)
    or None. Returns x and the stacked outs (None where the blocks return none)."""
    def layer(x, block, inputs, key):
        return call(spmd.gathered(block), x, inputs, key)  # ZeRO-3: this block's full weights, only now

    layer = nnx.remat(layer, policy=remat_policy(cfg.remat)) if cfg.remat != "none" or gathers_params() else layer
    if not cfg.scan_layers:
        outs = []
        for i, block in enumerate(blocks):
            inputs = None if per_layer is None else jax.tree.map(lambda c: c[i], per_layer)
            x, out = layer(x, block, inputs, None if layer_keys is None else layer_keys[i])
            outs.append(out)
        stacked = None if not outs or outs[0] is None else jax.tree.map(lambda *c: jnp.stack(c), *outs)
        return x, stacked

    @nnx.scan(in_axes=(nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0), unroll=unroll,
              transform_metadata={nnx.PARTITION_NAME: "layers"})
    def scan(x, block, inputs, key):
        return layer(x, block, inputs, key)

    return scan(x, blocks, per_layer, layer_keys)

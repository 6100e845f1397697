"""The decoder-only transformer: GPT-2, GPT-3, LLaMA and PaLM as switches of one module.

Shapes: B batch, T positions, E d_model, V vocabulary rows (padded; V/t per device under
tensor parallelism), L layers. Blocks are stacked along a leading `layers` axis and run
with `nnx.scan`, so compile time does not grow with depth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model import mup
from meshtron.model.block import Block
from meshtron.model.layers import Norm, compute_dtype, dropout, make_param, scan_unroll, sinusoidal_positions
from meshtron.model.stack import gathers_params, scan_blocks
from meshtron.parallel import spmd

def padded_init(init, vocab_size: int, vocab_rows: int, vocab_axis: int):
    """Initialise the true vocabulary and zero the padding, so the values do not depend on how
    far the vocabulary is padded (tensor degree), and padded rows stay exactly zero."""
    def create(key, shape, dtype):
        true_shape = list(shape)
        true_shape[vocab_axis] = vocab_size
        pad = [(0, 0)] * len(shape)
        pad[vocab_axis] = (0, vocab_rows - vocab_size)
        return jnp.pad(init(key, tuple(true_shape), dtype), pad)
    return create


class Embedding(nnx.Module):
    """Token embedding (V, E) and, for learned positions, a position table (T, E)."""

    def __init__(self, cfg: ModelConfig, vocab_rows: int, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(cfg.init_std)
        table_init = padded_init(init, cfg.vocab_size, vocab_rows, vocab_axis=0)
        self.tokens = make_param(rngs, table_init, (vocab_rows, cfg.d_model), ("vocab", "embed"), cfg)
        self.positions = (make_param(rngs, init, (cfg.seq_len, cfg.d_model), (None, "embed"), cfg)
                          if cfg.position == "learned" else None)


class Transformer(nnx.Module):
    """Token ids (B, T) -> logits (B, T, V) or per-token losses (B, T)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, vocab_rows: int | None = None):
        self.cfg = cfg
        self.vocab_rows = vocab_rows or cfg.padded_vocab()
        self.embed = Embedding(cfg, self.vocab_rows, rngs)
        if cfg.scan_layers:
            @nnx.split_rngs(splits=cfg.n_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_blocks(rngs):
                return Block(cfg, rngs)

            self.blocks = make_blocks(rngs)
        else:
            self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = Norm(cfg)
        self.head = (None if cfg.tie_embeddings else
                     make_param(rngs, padded_init(jax.nn.initializers.normal(cfg.init_std), cfg.vocab_size,
                                                  self.vocab_rows, vocab_axis=1),
                                (cfg.d_model, self.vocab_rows), ("embed", "vocab"), cfg))

    # -- the trunk ---------------------------------------------------------------------------
    def _run_blocks(self, x, positions, cache, cache_index, dropout_key, mask=None):
        keys = jax.random.split(dropout_key, self.cfg.n_layers) if dropout_key is not None else None
        return run_blocks(self.cfg, self.blocks, x, positions, cache, cache_index, keys, mask)

    def hidden(self, tokens, positions=None, cache=None, cache_index=None, dropout_key=None, prefix=None):
        """Final normalised hidden states (B, T, E), the output matrix (E, V) and the new cache."""
        keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        embed = spmd.gathered(self.embed)  # ZeRO-3: gathered once for the lookup and a tied output layer
        x, positions = self.embed_inputs(tokens, positions, cache_index, keys[0], embed)
        x, new_cache = self._run_blocks(x, positions, cache, cache_index, keys[1], prefix_mask(prefix, tokens.shape[1]))
        x, out = self.output_projection(x, embed)
        return x, out, new_cache

    def embed_inputs(self, tokens, positions=None, cache_index=None, dropout_key=None, embed=None):
        """Token and position embeddings (B, T, E) in the compute dtype, after dropout; and the positions."""
        cfg = self.cfg
        if positions is None:
            start = 0 if cache_index is None else cache_index
            # (1, T): the same for every row, so rotary angles and position tables are computed once, not per row
            positions = (start + jnp.arange(tokens.shape[1]))[None, :]
        embed = embed if embed is not None else spmd.gathered(self.embed)
        x = spmd.embedding_lookup(embed.tokens[...], tokens).astype(compute_dtype(cfg))  # (B, T, E)
        if cfg.position == "learned":
            x = x + jnp.take(embed.positions[...], positions, axis=0).astype(x.dtype)
        elif cfg.position == "sinusoidal":
            x = x + sinusoidal_positions(positions, cfg.d_model).astype(x.dtype)
        return dropout(x, cfg.dropout, dropout_key), positions

    def output_projection(self, x, embed=None):
        """Final norm of the trunk's output (B, T, E) and the output matrix (E, V) in the compute dtype."""
        x = spmd.gathered(self.final_norm)(x)
        if self.head is None:
            out = (embed if embed is not None else spmd.gathered(self.embed)).tokens[...].T
        else:
            out = spmd.gathered(self.head)[...]
        if mup.enabled(self.cfg):
            out = out * mup.output_multiplier(self.cfg)  # logits x base/width
        return x, out.astype(compute_dtype(self.cfg))

    # -- the two outputs ---------------------------------------------------------------------
    def __call__(self, tokens, positions=None, cache=None, cache_index=None):
        """Logits (B, T, V) in float32 (padded rows included) and the new KV cache (or None)."""
        x, out, new_cache = self.hidden(tokens, positions, cache, cache_index)
        logits = jnp.einsum("bte,ev->btv", x, out, preferred_element_type=jnp.float32)
        return logits, new_cache

    def token_losses(self, tokens, targets, dropout_key=None, prefix=None):
        """Next-token cross-entropy per position (B, T), float32; logits are never whole in memory
        when model.logits_chunk is set (chunks of the sequence, recomputed in the backward pass)."""
        x, out, _ = self.hidden(tokens, dropout_key=dropout_key, prefix=prefix)
        return self.losses_from_hidden(x, out, targets)

    def losses_from_hidden(self, x, out, targets):
        """Per-token cross-entropy (B, T) of normalised hidden states x (B, T, E) under output matrix (E, V)."""
        vocab = self.cfg.vocab_size

        def chunk_loss(x_chunk, t_chunk):
            logits = jnp.einsum("bte,ev->btv", x_chunk, out, preferred_element_type=jnp.float32)
            return spmd.cross_entropy(logits, t_chunk, vocab)

        chunk = self.cfg.logits_chunk
        if not chunk or chunk >= x.shape[1]:
            return chunk_loss(x, targets)
        B, T, E = x.shape
        xs = x.reshape(B, T // chunk, chunk, E).swapaxes(0, 1)  # (T/c, B, c, E)
        ts = targets.reshape(B, T // chunk, chunk).swapaxes(0, 1)
        losses = jax.lax.map(lambda a: jax.checkpoint(chunk_loss)(*a), (xs, ts))  # (T/c, B, c)
        return losses.swapaxes(0, 1).reshape(B, T)

    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        """Empty KV cache for `length` positions: k, v of shape (L, B, S, K, D)."""
        cfg = self.cfg
        shape = (cfg.n_layers, batch, length, cfg.kv_heads, cfg.dim_per_head)
        dtype = dtype or compute_dtype(cfg)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def run_blocks(cfg: ModelConfig, blocks, x, positions, cache=None, cache_index=None, layer_keys=None, mask=None):
    """x (B, T, E) through stacked `blocks` (any number of layers: all of them, or one pipeline stage's),
    with per-layer dropout keys (n, 2) or None; returns x and the new cache."""
    def call(block, x, layer_cache, key):
        return block(x, positions, layer_cache, cache_index, key, mask)

    # auto unrolling is for plain steps only: under remat or ZeRO-3 the rolled loop is what bounds the
    # memory (one block's gathered weights / activations at a time, re-gathered in the backward pass)
    unroll = scan_unroll(cfg) if cfg.scan_unroll or (cfg.remat == "none" and not gathers_params()) else 1
    return scan_blocks(cfg, blocks, x, call, cache, layer_keys, unroll)


def prefix_mask(prefix, length: int):
    """Prefix LM attention (B, 1, T, T): positions < prefix (B,) are seen from everywhere, the rest causally;
    None (plain causal attention) without a prefix."""
    if prefix is None:
        return None
    pos = jnp.arange(length)
    return ((pos[None, :] <= pos[:, None])[None] | (pos[None, None, :] < prefix[:, None, None]))[:, None]


def build_model(cfg: ModelConfig, seed: int = 0, vocab_rows: int | None = None) -> Transformer:
    """A model with initialised parameters (on the default device); see parallel/ for sharded creation."""
    return Transformer(cfg, nnx.Rngs(params=seed), vocab_rows)

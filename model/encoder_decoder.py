"""The encoder-decoder transformer (T5, the original Transformer; model.arch=encoder_decoder).

One token table shared by encoder input, decoder input and (tied) output. Encoder blocks attend both
ways over the real input tokens; decoder blocks attend causally to themselves and across to the
encoder output. With model.position=relative (T5) each stack has one relative-bias table shared by its
layers, scores have no 1/sqrt(D), and a tied output scales the decoder output by d_model^-0.5; with
sinusoidal or learned positions (Vaswani et al.) a tied table scales the embeddings by sqrt(d_model).

Shapes: B batch, S encoder positions, U decoder positions, E d_model, L decoder layers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model.encoder import SeqEmbedding, encode_stack
from meshtron.model.layers import Norm, compute_dtype, dropout, make_param
from meshtron.model.relative_position import RelativeBias
from meshtron.model.seq_block import SeqBlock, causal_mask, padding_mask
from meshtron.model.stack import make_stack, run_stack
from meshtron.model.transformer import padded_init
from meshtron.parallel import spmd


def decoder_layers(cfg: ModelConfig) -> int:
    """Blocks of the decoder stack."""
    return cfg.n_decoder_layers or cfg.n_layers


class EncoderDecoder(nnx.Module):
    """(inputs (B, S), decoder inputs (B, U)) -> logits (B, U, V) or per-token losses (B, U)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, vocab_rows: int | None = None):
        self.cfg = cfg
        self.vocab_rows = vocab_rows or cfg.padded_vocab()
        self.embed = SeqEmbedding(cfg, self.vocab_rows, rngs)
        relative = cfg.position == "relative"
        self.encoder_bias = RelativeBias(cfg, True, rngs) if relative else None
        self.decoder_bias = RelativeBias(cfg, False, rngs) if relative else None
        self.encoder_blocks = make_stack(cfg, cfg.n_layers, rngs, lambda r: SeqBlock(cfg, r))
        self.decoder_blocks = make_stack(cfg, decoder_layers(cfg), rngs, lambda r: SeqBlock(cfg, r, cross=True))
        self.encoder_norm = None if cfg.post_norm else Norm(cfg)
        self.decoder_norm = None if cfg.post_norm else Norm(cfg)
        self.head = (None if cfg.tie_embeddings else
                     make_param(rngs, padded_init(jax.nn.initializers.normal(cfg.init_std), cfg.vocab_size,
                                                  self.vocab_rows, vocab_axis=1),
                                (cfg.d_model, self.vocab_rows), ("embed", "vocab"), cfg))

    @property
    def _embed_scale(self) -> float:
        tied_vaswani = self.cfg.tie_embeddings and self.cfg.position != "relative"
        return math.sqrt(self.cfg.d_model) if tied_vaswani else 1.0

    def _embed(self, tokens, positions, key):
        x = spmd.gathered(self.embed)(self.cfg, tokens, positions, scale=self._embed_scale)
        return dropout(x, self.cfg.dropout, key)

    def encode(self, inputs, mask=None, dropout_key=None):
        """Encoder output (B, S, E). mask: (B, S) bool, False on padding."""
        positions = jnp.arange(inputs.shape[1])[None, :]  # the same for every row (see Transformer.embed_inputs)
        keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        x = self._embed(inputs, positions, keys[0])
        return encode_stack(self.cfg, x, positions, self.encoder_bias, self.encoder_blocks, self.encoder_norm, mask,
                            keys[1])

    def cross_kv(self, memory) -> dict:
        """Cross-attention keys and values of every decoder layer, computed once: k, v (L, B, S, K, D)."""
        def call(block, x, _, key):
            return x, block.cross.kv(memory)

        return run_stack(self.cfg, self.decoder_blocks, decoder_layers(self.cfg), memory, call)[1]

    def decode(self, tokens, memory=None, memory_mask=None, cross=None, cache=None, cache_index=None,
               dropout_key=None):
        """Decoder hidden states (B, U, E) ready for the output layer, and the new self-attention cache.
        Cross-attention reads `cross` (from cross_kv) when given, else projects `memory`."""
        cfg = self.cfg
        start = 0 if cache_index is None else cache_index
        query_pos = start + jnp.arange(tokens.shape[1])
        positions = query_pos[None, :]  # the same for every row
        keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        x = self._embed(tokens, positions, keys[0])
        key_length = tokens.shape[1] if cache is None else cache["k"].shape[2]
        self_mask = causal_mask(query_pos, key_length)
        bias = (None if self.decoder_bias is None
                else spmd.gathered(self.decoder_bias)(query_pos, key_length, x.dtype))
        cross_mask = padding_mask(memory_mask, tokens.shape[1])

        def call(block, x, layer, key):
            layer_cache, layer_cross = layer if layer is not None else (None, None)
            return block(x, self_mask, bias, memory=memory, memory_mask=cross_mask, cross_kv=layer_cross,
                         positions=positions, cache=layer_cache, cache_index=cache_index, dropout_key=key)

        per_layer = None if cache is None and cross is None else (cache, cross)
        x, new_cache = run_stack(cfg, self.decoder_blocks, decoder_layers(cfg), x, call, per_layer, keys[1])
        x = x if self.decoder_norm is None else spmd.gathered(self.decoder_norm)(x)
        if cfg.tie_embeddings and cfg.position == "relative":
            x = x * cfg.d_model ** -0.5
        return x, new_cache

    def _output(self, dtype):
        out = spmd.gathered(self.embed).tokens[...].T if self.head is None else spmd.gathered(self.head)[...]
        return out.astype(dtype)

    def logits(self, x):
        """Float32 logits (B, U, V) of decoder hidden states."""
        return jnp.einsum("bte,ev->btv", x, self._output(x.dtype), preferred_element_type=jnp.float32)

    def __call__(self, inputs, decoder_inputs, mask=None):
        """Logits (B, U, V) in float32 (padded rows included)."""
        memory = self.encode(inputs, mask)
        return self.logits(self.decode(decoder_inputs, memory, mask)[0])

    def token_losses(self, inputs, decoder_inputs, targets, dropout_key=None, mask=None):
        """Cross-entropy of each target (B, U), float32."""
        keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        memory = self.encode(inputs, mask, keys[0])
        x, _ = self.decode(decoder_inputs, memory, mask, dropout_key=keys[1])
        return spmd.cross_entropy(self.logits(x), targets, self.cfg.vocab_size)

    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        """Empty decoder self-attention cache for `length` positions: k, v (L, B, length, K, D)."""
        cfg = self.cfg
        shape = (decoder_layers(cfg), batch, length, cfg.kv_heads, cfg.dim_per_head)
        dtype = dtype or compute_dtype(cfg)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

"""The encoder-only transformer (BERT; model.arch=encoder): bidirectional attention with a padding mask,
token-type and learned (or sinusoidal / relative) positions, post- or pre-norm blocks, and BERT's MLM head
(dense + activation + norm, then the tied token embedding with its own output bias).

Shapes: B batch, T positions, E d_model, V vocabulary rows (padded; split over tensor devices).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model.activations import ACTIVATIONS
from meshtron.model.layers import Norm, compute_dtype, dropout, make_param, sinusoidal_positions, zeros_param
from meshtron.model.relative_position import RelativeBias
from meshtron.model.seq_block import SeqBlock, padding_mask
from meshtron.model.stack import make_stack, run_stack
from meshtron.model.transformer import padded_init
from meshtron.parallel import spmd


class SeqEmbedding(nnx.Module):
    """Token table (V, E), optional learned positions (P, E), token types (types, E) and embedding norm."""

    def __init__(self, cfg: ModelConfig, vocab_rows: int, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(cfg.init_std)
        self.tokens = make_param(rngs, padded_init(init, cfg.vocab_size, vocab_rows, 0), (vocab_rows, cfg.d_model),
                                 ("vocab", "embed"), cfg)
        rows = cfg.max_positions or cfg.seq_len
        self.positions = (make_param(rngs, init, (rows, cfg.d_model), (None, "embed"), cfg)
                          if cfg.position == "learned" else None)
        self.types = (make_param(rngs, init, (cfg.type_vocab_size, cfg.d_model), (None, "embed"), cfg)
                      if cfg.type_vocab_size else None)
        self.norm = Norm(cfg) if cfg.embed_norm else None

    def __call__(self, cfg: ModelConfig, tokens, positions, types=None, scale: float = 1.0):
        """(B, T) ids -> (B, T, E) in the compute dtype."""
        dtype = compute_dtype(cfg)
        x = spmd.embedding_lookup(self.tokens[...], tokens).astype(dtype) * scale
        if self.positions is not None:
            x = x + jnp.take(self.positions[...], positions, axis=0).astype(dtype)
        elif cfg.position == "sinusoidal":
            x = x + sinusoidal_positions(positions, cfg.d_model).astype(dtype)
        if self.types is not None:
            types = jnp.zeros_like(tokens) if types is None else types
            x = x + jnp.take(self.types[...], types, axis=0).astype(dtype)
        return x if self.norm is None else self.norm(x)


def encode_stack(cfg: ModelConfig, x, positions, relative, blocks, final_norm, mask, dropout_key):
    """Embedded x (B, T, E) through a bidirectional stack (relative bias, padding mask), then its final norm."""
    T = x.shape[1]
    bias = None if relative is None else spmd.gathered(relative)(jnp.arange(T), T, x.dtype)
    attn_mask = padding_mask(mask, T)

    def call(block, x, _, key):
        return block(x, attn_mask, bias, positions=positions, dropout_key=key)

    x, _ = run_stack(cfg, blocks, cfg.n_layers, x, call, dropout_key=dropout_key)
    return x if final_norm is None else spmd.gathered(final_norm)(x)


class MLMHead(nnx.Module):
    """BERT's prediction head: dense (E, E) + activation + norm; the output layer is the token embedding."""

    def __init__(self, cfg: ModelConfig, vocab_rows: int, rngs: nnx.Rngs):
        self.act = "gelu" if cfg.mlp in ("swiglu", "geglu") else cfg.mlp
        self.dense = make_param(rngs, jax.nn.initializers.normal(cfg.init_std), (cfg.d_model, cfg.d_model),
                                ("embed", None), cfg)
        self.dense_bias = zeros_param((cfg.d_model,), ("embed",), cfg)
        self.norm = Norm(cfg)
        self.bias = zeros_param((vocab_rows,), ("vocab",), cfg)

    def __call__(self, x):
        h = x @ self.dense[...].astype(x.dtype) + self.dense_bias[...].astype(x.dtype)
        return self.norm(ACTIVATIONS[self.act](h))


class Encoder(nnx.Module):
    """Token ids (B, T) -> MLM logits (B, T, V) or per-token losses; every position sees every real token."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, vocab_rows: int | None = None):
        self.cfg = cfg
        self.vocab_rows = vocab_rows or cfg.padded_vocab()
        self.embed = SeqEmbedding(cfg, self.vocab_rows, rngs)
        self.relative = RelativeBias(cfg, True, rngs) if cfg.position == "relative" else None
        self.blocks = make_stack(cfg, cfg.n_layers, rngs, lambda r: SeqBlock(cfg, r))
        self.final_norm = None if cfg.post_norm else Norm(cfg)
        self.mlm = MLMHead(cfg, self.vocab_rows, rngs)

    def hidden(self, tokens, mask=None, types=None, dropout_key=None):
        """Final hidden states (B, T, E) (before the MLM head). mask: (B, T) bool, False on padding."""
        cfg = self.cfg
        positions = jnp.arange(tokens.shape[1])[None, :]  # the same for every row (see Transformer.embed_inputs)
        keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        x = dropout(spmd.gathered(self.embed)(cfg, tokens, positions, types), cfg.dropout, keys[0])
        return encode_stack(cfg, x, positions, self.relative, self.blocks, self.final_norm, mask, keys[1])

    def _logits(self, x):
        head = spmd.gathered(self.mlm)
        out = spmd.gathered(self.embed).tokens[...].T.astype(x.dtype)
        return (jnp.einsum("bte,ev->btv", head(x), out, preferred_element_type=jnp.float32)
                + head.bias[...].astype(jnp.float32))

    def __call__(self, tokens, mask=None, types=None):
        """MLM logits (B, T, V) in float32 (padded rows included)."""
        return self._logits(self.hidden(tokens, mask, types))

    def token_losses(self, inputs, targets, dropout_key=None, mask=None):
        """Cross-entropy of the original token at every position (B, T), float32; the objective's weights
        pick the positions that count."""
        logits = self._logits(self.hidden(inputs, mask, dropout_key=dropout_key))
        return spmd.cross_entropy(logits, targets, self.cfg.vocab_size)

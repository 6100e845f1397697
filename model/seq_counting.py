"""Exact parameter counts and FLOPs of encoders (BERT) and encoder-decoders (T5, the original Transformer).

Counts use the true vocabulary and equal transformers' own models built from the same config: bert-base
BertForMaskedLM 109,514,298 (BertModel with its pooler: 109,482,240, see `with_pooler`), t5-small
60,506,624, t5-base 222,903,552. An encoder-decoder step reads S input tokens and U target tokens (T5's span
corruption lengths for seq_len = S); its FLOPs per token are per input token with the decoder's included,
so tokens/s x FLOPs/token stays the step's FLOP rate.
"""

from __future__ import annotations

from meshtron.configs.objectives import span_corruption_lengths
from meshtron.configs.schema import ModelConfig


def _norm(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def _attention(cfg: ModelConfig) -> int:
    E, H, K, D = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
    return E * H * D + 2 * E * K * D + H * D * E + ((H + 2 * K) * D + E if cfg.bias else 0)


def _mlp(cfg: ModelConfig) -> int:
    E, F = cfg.d_model, cfg.ff_dim
    return (3 if cfg.mlp in ("swiglu", "geglu") else 2) * E * F + (F + E if cfg.bias else 0)


def sequence_lengths(cfg: ModelConfig) -> tuple[int, int]:
    """(encoder tokens, decoder tokens) of one training sequence: (seq_len, 0) for an encoder, T5's span
    corruption lengths (seq_len, target length) for an encoder-decoder."""
    if cfg.arch != "encoder_decoder":
        return cfg.seq_len, 0
    return cfg.seq_len, span_corruption_lengths(cfg.seq_len)[1]


def seq_param_parts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters by part: token_embedding, position_embedding, per_layer (encoder block), layers (all
    blocks), final_norm (embedding and final norms), output_layer (MLM head or untied output), other
    (relative position tables)."""
    E, V = cfg.d_model, cfg.vocab_size
    block = _attention(cfg) + _mlp(cfg) + 2 * _norm(cfg)
    positions = (cfg.max_positions or cfg.seq_len) * E if cfg.position == "learned" else 0
    norms = (_norm(cfg) if cfg.embed_norm else 0)
    relative = cfg.relative_buckets * cfg.n_heads if cfg.position == "relative" else 0
    if cfg.arch == "encoder":
        layers = cfg.n_layers * block
        norms += 0 if cfg.post_norm else _norm(cfg)
        output = E * E + E + _norm(cfg) + V  # BERT's MLM head: dense, norm, output bias (matrix tied)
    else:
        decoder_block = block + _attention(cfg) + _norm(cfg)
        layers = cfg.n_layers * block + (cfg.n_decoder_layers or cfg.n_layers) * decoder_block
        norms += 0 if cfg.post_norm else 2 * _norm(cfg)
        output = 0 if cfg.tie_embeddings else E * V
        relative *= 2
    return dict(token_embedding=V * E, position_embedding=positions + cfg.type_vocab_size * E, per_layer=block,
                layers=layers, final_norm=norms, output_layer=output, other=relative)


def with_pooler(cfg: ModelConfig, total: int) -> int:
    """BertModel's count: the encoder without the MLM head, with BERT's pooler (dense E x E + bias)."""
    E = cfg.d_model
    return total - seq_param_parts(cfg)["output_layer"] + E * E + E


def seq_flops_per_token(cfg: ModelConfig, counts) -> dict[str, float]:
    """Training FLOPs per (encoder) token: 6 x matmul parameters each token passes through, plus attention
    scores and values (12 x layers x H x D x keys), for the encoder's S and the decoder's U tokens."""
    E, H, D, V = cfg.d_model, cfg.n_heads, cfg.dim_per_head, cfg.vocab_size
    S, U = sequence_lengths(cfg)
    block = _attention(cfg) + _mlp(cfg)
    if cfg.arch == "encoder":
        per = 6.0 * (cfg.n_layers * block + E * E + E * V) + 12.0 * cfg.n_layers * H * D * S
        return {"6N": 6.0 * counts.total, "palm": per}
    L_dec = cfg.n_decoder_layers or cfg.n_layers
    encoder = S * (6.0 * cfg.n_layers * block + 12.0 * cfg.n_layers * H * D * S)
    decoder = U * (6.0 * (L_dec * (block + _attention(cfg)) + E * V) + 12.0 * L_dec * H * D * (U + S))
    return {"6N": 6.0 * counts.total, "palm": (encoder + decoder) / S}

"""Exact parameter counts and FLOPs per token: the one count behind MFU, the planner and scaling.

Counts use the true vocabulary (`vocab_size`), not the padded embedding rows, so they
match published figures (GPT-2 small 124,439,808; LLaMA-1 7B 6,738,415,616).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshtron.configs.schema import ModelConfig
from meshtron.model.seq_counting import seq_flops_per_token, seq_param_parts

# The convention MFU is computed with (PaLM, Chowdhery et al. 2022, App. B; also nanoGPT's estimate_mfu).
MFU_CONVENTION = "palm"


@dataclass(frozen=True)
class ParamCount:
    """Parameters by part; `total` is what the model holds with an unpadded vocabulary."""

    token_embedding: int
    position_embedding: int
    per_layer: int
    layers: int
    final_norm: int
    output_layer: int  # 0 when tied to the token embedding (BERT: the MLM head)
    other: int = 0  # T5's relative position tables

    @property
    def total(self) -> int:
        """All parameters."""
        return (self.token_embedding + self.position_embedding + self.layers + self.final_norm
                + self.output_layer + self.other)

    @property
    def non_embedding(self) -> int:
        """Parameters outside the token/position embeddings and the output layer (Kaplan et al.'s N)."""
        return self.layers + self.final_norm + self.other


def layer_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one block, by part."""
    E, H, K, D, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.ff_dim
    norm = E * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
    attention = E * H * D + 2 * E * K * D + H * D * E + ((H + 2 * K) * D + E if cfg.bias else 0)
    mlp = (3 if cfg.mlp in ("swiglu", "geglu") else 2) * E * F + (F + E if cfg.bias else 0)
    return {"attention": attention, "mlp": mlp, "norms": norm * (1 if cfg.parallel_block else 2)}


def count_params(cfg: ModelConfig) -> ParamCount:
    """Exact parameter count of a config (encoders and encoder-decoders: model/seq_counting.py)."""
    if cfg.arch != "decoder":
        return ParamCount(**seq_param_parts(cfg))
    E, V = cfg.d_model, cfg.vocab_size
    per_layer = sum(layer_params(cfg).values())
    return ParamCount(
        token_embedding=V * E,
        position_embedding=cfg.seq_len * E if cfg.position == "learned" else 0,
        per_layer=per_layer,
        layers=cfg.n_layers * per_layer,
        final_norm=E * (2 if cfg.norm == "layernorm" and cfg.bias else 1),
        output_layer=0 if cfg.tie_embeddings else E * V,
    )


def flops_per_token(cfg: ModelConfig) -> dict[str, float]:
    """Training FLOPs (forward + backward) per token under each published convention.

    6N         Kaplan et al. 2020 / Hoffmann et al. 2022: 6 x all parameters.
    palm       Chowdhery et al. 2022: 6 x matmul parameters (non-embedding + output layer) + 12 L H Q T.
    chinchilla Hoffmann et al. 2022, App. F: embeddings, QKV, logits, softmax, reduction, projection,
               MLP and final logits counted one by one; backward = 2 x forward.
    megatron   Korthikanti et al. 2022 (no recomputation): 72 l h^2 (1 + s/(6h) + V/(12 l h)) per token.
    """
    counts = count_params(cfg)
    if cfg.arch != "decoder":
        return seq_flops_per_token(cfg, counts)
    E, H, K, D, F = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dim_per_head, cfg.ff_dim
    L, T, V = cfg.n_layers, cfg.seq_len, cfg.vocab_size
    matmul_params = counts.non_embedding + E * V
    mlp_mats = 3 if cfg.mlp == "swiglu" else 2
    forward = (2 * V * E  # embeddings, counted as a matmul by the paper
               + L * (2 * E * (H + 2 * K) * D  # QKV
                      + 2 * T * D * H  # attention logits
                      + 3 * H * T  # softmax
                      + 2 * T * D * H  # reduction over values
                      + 2 * D * H * E  # output projection
                      + 2 * mlp_mats * E * F)  # dense
               + 2 * E * V)  # final logits
    return {
        "6N": 6.0 * counts.total,
        "palm": 6.0 * matmul_params + 12.0 * L * H * D * T,
        "chinchilla": 3.0 * forward,
        "megatron": 72.0 * L * E**2 * (1 + T / (6 * E) + V / (12 * L * E)),
    }


def model_flops_per_token(cfg: ModelConfig) -> float:
    """The FLOPs per token MFU is measured against (the PaLM convention)."""
    return flops_per_token(cfg)[MFU_CONVENTION]

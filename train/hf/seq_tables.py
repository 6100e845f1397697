"""Hugging Face tables of the encoder (BertForMaskedLM) and encoder-decoder (T5ForConditionalGeneration)
architectures, in export.py's HFTensor form: every Hugging Face tensor and the Meshtron parameters it is.

Per-layer rows name a stack ("blocks.", "encoder_blocks.", "decoder_blocks.") whose layer count they
repeat over; T5's relative-bias tables live in the first layer of each stack, as Hugging Face stores them.
"""

from __future__ import annotations

from meshtron.configs.schema import ModelConfig
from meshtron.model.encoder_decoder import decoder_layers
from meshtron.train.hf.export import HFTensor


SEQ_MODEL_TYPES = ("bert", "t5")


def _t(name, *ours, n_in=0, transpose=False):
    return HFTensor(name, tuple(ours), n_in, transpose)


def _linear(hf, ours, n_in=1, bias=True):
    rows = [_t(hf + ".weight", ours, n_in=n_in, transpose=True)]
    return rows + ([_t(hf + ".bias", ours + "_bias")] if bias else [])


def _norm(hf, ours, bias=True, weight="weight"):
    return [_t(f"{hf}.{weight}", ours + ".scale")] + ([_t(hf + ".bias", ours + ".bias")] if bias else [])


_B = "bert.encoder.layer.{i}."
BERT = (
    [_t("bert.embeddings.word_embeddings.weight", "embed.tokens", n_in=1),
     _t("bert.embeddings.position_embeddings.weight", "embed.positions", n_in=1),
     _t("bert.embeddings.token_type_embeddings.weight", "embed.types", n_in=1)]
    + _norm("bert.embeddings.LayerNorm", "embed.norm")
    + _linear(_B + "attention.self.query", "blocks.attn.q") + _linear(_B + "attention.self.key", "blocks.attn.k")
    + _linear(_B + "attention.self.value", "blocks.attn.v")
    + _linear(_B + "attention.output.dense", "blocks.attn.o", n_in=2)
    + _norm(_B + "attention.output.LayerNorm", "blocks.attn_norm")
    + _linear(_B + "intermediate.dense", "blocks.mlp.up") + _linear(_B + "output.dense", "blocks.mlp.down")
    + _norm(_B + "output.LayerNorm", "blocks.mlp_norm")
    + _linear("cls.predictions.transform.dense", "mlm.dense")
    + _norm("cls.predictions.transform.LayerNorm", "mlm.norm")
    + [_t("cls.predictions.bias", "mlm.bias")])


def _t5_attention(hf, ours):
    return [_t(f"{hf}.{n}.weight", f"{ours}.{n}", n_in=2 if n == "o" else 1, transpose=True) for n in "qkvo"]


def _t5_stack(side: str, ours: str, gated: bool) -> list:
    b = f"{side}.block.{{i}}.layer."
    mlp = 2 if side == "decoder" else 1
    rows = _t5_attention(b + "0.SelfAttention", ours + ".attn") + _norm(b + "0.layer_norm", ours + ".attn_norm", False)
    if side == "decoder":
        rows += _t5_attention(b + "1.EncDecAttention", ours + ".cross")
        rows += _norm(b + "1.layer_norm", ours + ".cross_norm", False)
    ff = f"{b}{mlp}.DenseReluDense."
    if gated:
        rows += [_t(ff + "wi_0.weight", ours + ".mlp.gate", n_in=1, transpose=True),
                 _t(ff + "wi_1.weight", ours + ".mlp.up", n_in=1, transpose=True)]
    else:
        rows += [_t(ff + "wi.weight", ours + ".mlp.up", n_in=1, transpose=True)]
    rows += [_t(ff + "wo.weight", ours + ".mlp.down", n_in=1, transpose=True)]
    rows += _norm(f"{b}{mlp}.layer_norm", ours + ".mlp_norm", False)
    rows += _norm(f"{side}.final_layer_norm", side + "_norm", False)
    rows += [_t(f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", side + "_bias.table",
                n_in=1)]
    return rows


def t5_tensors(cfg: ModelConfig) -> list[HFTensor]:
    """Every T5ForConditionalGeneration tensor for `cfg` (relu or gated-gelu; tied or untied output)."""
    gated = cfg.mlp == "geglu"
    rows = [_t("shared.weight", "embed.tokens", n_in=1)]
    rows += _t5_stack("encoder", "encoder_blocks", gated) + _t5_stack("decoder", "decoder_blocks", gated)
    if not cfg.tie_embeddings:
        rows.append(_t("lm_head.weight", "head", n_in=1, transpose=True))
    return rows


def stack_layers(cfg: ModelConfig, tensor: HFTensor) -> int:
    """How many layers a per-layer row repeats over."""
    return decoder_layers(cfg) if tensor.ours[0].startswith("decoder_blocks.") else cfg.n_layers


# Hugging Face config keys <-> ModelConfig fields, and the switches each architecture computes
BERT_KEYS = {"num_hidden_layers": "n_layers", "hidden_size": "d_model", "num_attention_heads": "n_heads",
             "intermediate_size": "d_ff", "vocab_size": "vocab_size", "max_position_embeddings": "max_positions",
             "type_vocab_size": "type_vocab_size", "layer_norm_eps": "norm_eps", "initializer_range": "init_std"}
BERT_SWITCHES = dict(family="bert", arch="encoder", position="learned", norm="layernorm", mlp="gelu_exact", bias=True,
                     post_norm=True, embed_norm=True, tie_embeddings=True, parallel_block=False)
T5_KEYS = {"num_layers": "n_layers", "num_decoder_layers": "n_decoder_layers", "d_model": "d_model",
           "num_heads": "n_heads", "d_kv": "head_dim", "d_ff": "d_ff", "vocab_size": "vocab_size",
           "relative_attention_num_buckets": "relative_buckets",
           "relative_attention_max_distance": "relative_max_distance", "layer_norm_epsilon": "norm_eps"}
T5_SWITCHES = dict(family="t5", arch="encoder_decoder", position="relative", norm="rmsnorm", bias=False,
                   post_norm=False, embed_norm=False, parallel_block=False, type_vocab_size=0)

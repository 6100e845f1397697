"""The Hugging Face architectures Meshtron converts to and from, one table each.

Each table (`GPT2`, `LLAMA`) lists every Hugging Face tensor, the Meshtron parameters it is
made of and how their axes map; export.py reads them forwards, importer.py backwards. A model
family with a Hugging Face twin adds its table here (see model/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HFTensor:
    """One Hugging Face tensor; "{i}" in its name is the layer index."""

    name: str
    ours: tuple[str, ...]
    """Dotted Meshtron paths; "blocks." ones are stacked (L, ...). Several are concatenated on the output axis."""
    n_in: int = 0
    """Leading axes of each Meshtron array that form the input dimension (0: a vector)."""
    transpose: bool = False
    """torch nn.Linear stores (out, in)."""

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name

    @property
    def is_bias(self) -> bool:
        """Biases may be absent on one side; they are then zero, which computes the same."""
        return all(k.endswith("bias") for k in self.ours)

    def to_hf(self, parts: list[np.ndarray]) -> np.ndarray:
        """Meshtron arrays of one layer -> the Hugging Face array."""
        flat = [p.reshape(math.prod(p.shape[:self.n_in]), -1) if self.n_in else p.reshape(-1) for p in parts]
        w = flat[0] if len(flat) == 1 else np.concatenate(flat, axis=-1)  # (in, out) or (out,)
        return w.T if self.transpose else w

    def from_hf(self, w: np.ndarray, shapes: list[tuple]) -> list[np.ndarray]:
        """The Hugging Face array -> Meshtron arrays of one layer with the given shapes (ValueError if they differ)."""
        w = w.T if self.transpose else w
        w = w.reshape(math.prod(shapes[0][:self.n_in]), -1) if self.n_in else w.reshape(-1)
        out_sizes = [math.prod(s[self.n_in:]) for s in shapes]
        if w.shape[-1] != sum(out_sizes):
            raise ValueError(f"{w.shape[-1]} outputs, expected {sum(out_sizes)}")
        pieces = np.split(w, np.cumsum(out_sizes)[:-1], axis=-1)
        return [p.reshape(s) for p, s in zip(pieces, shapes)]


@dataclass(frozen=True)
class Architecture:
    """A Hugging Face model class Meshtron converts to and from."""

    name: str
    model_type: str
    hf_class: str
    family: str
    switches: dict
    """ModelConfig switches this architecture computes."""
    config_keys: dict
    """Hugging Face config key -> ModelConfig field."""
    fixed: dict
    """Hugging Face config key -> the values Meshtron computes the same way (export writes the first)."""
    tensors: tuple[HFTensor, ...]


def _t(name, *ours, n_in=0, transpose=False):
    return HFTensor(name, tuple(ours), n_in, transpose)


_H = "transformer.h.{i}."
GPT2 = Architecture(
    name="GPT-2", model_type="gpt2", hf_class="GPT2LMHeadModel", family="gpt2",
    switches=dict(position="learned", norm="layernorm", mlp="gelu", parallel_block=False),
    config_keys={"n_layer": "n_layers", "n_embd": "d_model", "n_head": "n_heads", "n_inner": "d_ff",
                 "vocab_size": "vocab_size", "n_positions": "seq_len", "layer_norm_epsilon": "norm_eps",
                 "tie_word_embeddings": "tie_embeddings", "initializer_range": "init_std"},
    fixed={"activation_function": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"), "scale_attn_weights": (True,),
           "scale_attn_by_inverse_layer_idx": (False,), "add_cross_attention": (False,)},
    tensors=(
        _t("transformer.wte.weight", "embed.tokens", n_in=1),  # (V, E)
        _t("transformer.wpe.weight", "embed.positions", n_in=1),  # (T, E)
        _t(_H + "ln_1.weight", "blocks.attn_norm.scale"),
        _t(_H + "ln_1.bias", "blocks.attn_norm.bias"),
        _t(_H + "attn.c_attn.weight", "blocks.attn.q", "blocks.attn.k", "blocks.attn.v", n_in=1),  # (E, 3E)
        _t(_H + "attn.c_attn.bias", "blocks.attn.q_bias", "blocks.attn.k_bias", "blocks.attn.v_bias"),
        _t(_H + "attn.c_proj.weight", "blocks.attn.o", n_in=2),  # (H*D, E)
        _t(_H + "attn.c_proj.bias", "blocks.attn.o_bias"),
        _t(_H + "ln_2.weight", "blocks.mlp_norm.scale"),
        _t(_H + "ln_2.bias", "blocks.mlp_norm.bias"),
        _t(_H + "mlp.c_fc.weight", "blocks.mlp.up", n_in=1),  # (E, F)
        _t(_H + "mlp.c_fc.bias", "blocks.mlp.up_bias"),
        _t(_H + "mlp.c_proj.weight", "blocks.mlp.down", n_in=1),  # (F, E)
        _t(_H + "mlp.c_proj.bias", "blocks.mlp.down_bias"),
        _t("transformer.ln_f.weight", "final_norm.scale"),
        _t("transformer.ln_f.bias", "final_norm.bias"),
        _t("lm_head.weight", "head", n_in=1, transpose=True),  # (V, E)
    ))

_L = "model.layers.{i}."
LLAMA = Architecture(
    name="Llama", model_type="llama", hf_class="LlamaForCausalLM", family="llama",
    switches=dict(position="rope", norm="rmsnorm", mlp="swiglu", parallel_block=False),
    config_keys={"num_hidden_layers": "n_layers", "hidden_size": "d_model", "num_attention_heads": "n_heads",
                 "num_key_value_heads": "n_kv_heads", "head_dim": "head_dim", "intermediate_size": "d_ff",
                 "vocab_size": "vocab_size", "max_position_embeddings": "seq_len", "rms_norm_eps": "norm_eps",
                 "tie_word_embeddings": "tie_embeddings", "initializer_range": "init_std", "rope_theta": "rope_theta"},
    fixed={"hidden_act": ("silu",), "pretraining_tp": (1, None)},
    tensors=(
        _t("model.embed_tokens.weight", "embed.tokens", n_in=1),  # (V, E)
        _t(_L + "input_layernorm.weight", "blocks.attn_norm.scale"),
        _t(_L + "self_attn.q_proj.weight", "blocks.attn.q", n_in=1, transpose=True),  # (H*D, E)
        _t(_L + "self_attn.q_proj.bias", "blocks.attn.q_bias"),
        _t(_L + "self_attn.k_proj.weight", "blocks.attn.k", n_in=1, transpose=True),  # (K*D, E)
        _t(_L + "self_attn.k_proj.bias", "blocks.attn.k_bias"),
        _t(_L + "self_attn.v_proj.weight", "blocks.attn.v", n_in=1, transpose=True),
        _t(_L + "self_attn.v_proj.bias", "blocks.attn.v_bias"),
        _t(_L + "self_attn.o_proj.weight", "blocks.attn.o", n_in=2, transpose=True),  # (E, H*D)
        _t(_L + "self_attn.o_proj.bias", "blocks.attn.o_bias"),
        _t(_L + "post_attention_layernorm.weight", "blocks.mlp_norm.scale"),
        _t(_L + "mlp.gate_proj.weight", "blocks.mlp.gate", n_in=1, transpose=True),  # (F, E)
        # mlp_bias also biases gate_proj; Meshtron's gate has none, so it is zero
        _t(_L + "mlp.gate_proj.bias", "blocks.mlp.gate_bias"),
        _t(_L + "mlp.up_proj.weight", "blocks.mlp.up", n_in=1, transpose=True),
        _t(_L + "mlp.up_proj.bias", "blocks.mlp.up_bias"),
        _t(_L + "mlp.down_proj.weight", "blocks.mlp.down", n_in=1, transpose=True),  # (E, F)
        _t(_L + "mlp.down_proj.bias", "blocks.mlp.down_bias"),
        _t("model.norm.weight", "final_norm.scale"),
        _t("lm_head.weight", "head", n_in=1, transpose=True),  # (V, E)
    ))

ARCHITECTURES = {a.model_type: a for a in (GPT2, LLAMA)}

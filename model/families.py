"""The model families Meshtron builds, one entry each; model/README.md is the contract a new one follows.

A family is: the NNX module that computes it, the parameter and FLOP counts of its configs, and,
if it has a Hugging Face twin, the `model_type` of its table in train/hf/architectures.py. Its
config switches (positions, norm, MLP, bias, ...) are its entry in configs/schema.py's
FAMILY_DEFAULTS, which the config loader fills in before anything is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flax import nnx

from meshtron.configs.schema import FAMILY_DEFAULTS, ModelConfig
from meshtron.model.counting import ParamCount, count_params, flops_per_token
from meshtron.model.encoder import Encoder
from meshtron.model.encoder_decoder import EncoderDecoder
from meshtron.model.transformer import Transformer

# Every logical axis name model code may give a parameter; parallel/rules.py maps some of them to mesh axes.
LOGICAL_AXES = ("layers", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", None)


@dataclass(frozen=True)
class Family:
    """What Meshtron needs from a model family."""

    name: str
    module: type
    """The NNX module, built as module(cfg, rngs, vocab_rows)."""
    count_params: Callable[[ModelConfig], ParamCount]
    """Exact parameters of a config (true vocabulary, no padding): MFU, the planner and scaling use it."""
    flops_per_token: Callable[[ModelConfig], dict]
    """Training FLOPs per token under each published convention."""
    hf_model_type: str | None
    """Its table in train/hf/architectures.py (bert, t5: train/hf/seq_tables.py) (None: no Hugging Face twin)."""

    @property
    def switches(self) -> dict:
        """The config switches the family sets (configs/schema.py FAMILY_DEFAULTS)."""
        return FAMILY_DEFAULTS[self.name]


FAMILIES = {f.name: f for f in (
    Family("gpt2", Transformer, count_params, flops_per_token, hf_model_type="gpt2"),
    Family("gpt3", Transformer, count_params, flops_per_token, hf_model_type="gpt2"),  # GPT-2's blocks, wider
    Family("llama", Transformer, count_params, flops_per_token, hf_model_type="llama"),
    Family("palm", Transformer, count_params, flops_per_token, hf_model_type=None),  # parallel block: no HF twin
    Family("bert", Encoder, count_params, flops_per_token, hf_model_type="bert"),
    Family("t5", EncoderDecoder, count_params, flops_per_token, hf_model_type="t5"),
    Family("transformer", EncoderDecoder, count_params, flops_per_token, hf_model_type=None),  # no HF twin
)}


def family(cfg: ModelConfig) -> Family:
    """The registered family of a config (the loader has already checked model.family)."""
    return FAMILIES[cfg.family]


def build(cfg: ModelConfig, seed: int = 0, vocab_rows: int | None = None) -> nnx.Module:
    """A model of `cfg`'s family with initialised parameters (on the default device)."""
    return family(cfg).module(cfg, nnx.Rngs(params=seed), vocab_rows)

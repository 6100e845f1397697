"""The module class of each `model.arch`: decoder (Transformer), encoder (Encoder), encoder_decoder
(EncoderDecoder). Every class takes (cfg, rngs, vocab_rows) and names its parameters' logical axes alike."""

from __future__ import annotations

from flax import nnx

from meshtron.configs.schema import ModelConfig
from meshtron.model.encoder import Encoder
from meshtron.model.encoder_decoder import EncoderDecoder
from meshtron.model.transformer import Transformer

CLASSES = {"decoder": Transformer, "encoder": Encoder, "encoder_decoder": EncoderDecoder}


def model_class(cfg: ModelConfig) -> type[nnx.Module]:
    """The module class of `cfg.arch`."""
    return CLASSES[cfg.arch]


def build_any(cfg: ModelConfig, seed: int = 0, vocab_rows: int | None = None) -> nnx.Module:
    """A model of any architecture with initialised parameters (on the default device)."""
    return model_class(cfg)(cfg, nnx.Rngs(params=seed), vocab_rows)

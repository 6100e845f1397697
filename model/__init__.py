"""Flax NNX transformer (GPT-2, GPT-3, LLaMA, PaLM switches) and its parameter and FLOP counts."""

from meshtron.model.transformer import Transformer, build_model

__all__ = ["Transformer", "build_model"]

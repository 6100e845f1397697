"""Flax NNX transformer (GPT-2, GPT-3, LLaMA, PaLM switches) and its parameter and FLOP counts.

Model code names logical axes only; how they are split is parallel/'s business. Imports
configs/ and parallel.spmd (the collectives); see model/README.md for adding a family.
"""

from meshtron.model.transformer import Transformer, build_model

__all__ = ["Transformer", "build_model"]

"""MLP activations by `model.mlp`: plain (E -> F -> E) or gated (act(x W_gate) * x W_up, Shazeer 2020)."""

from __future__ import annotations

import jax

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's tanh approximation (T5 v1.1's gelu_new)
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),  # BERT's erf GELU
    "relu": jax.nn.relu,  # original Transformer, T5
    "swiglu": jax.nn.silu,  # LLaMA, PaLM (gated)
    "geglu": lambda x: jax.nn.gelu(x, approximate=True),  # T5 v1.1's gated-gelu
}
GATED = ("swiglu", "geglu")

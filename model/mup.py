"""muP: hyper-parameters tuned at a small width carry over to wide models (Yang et al. 2022,
"Tensor Programs V", arXiv 2203.03466).

Meshtron implements the multiplier form of Table 3 of that paper ("muP formulation in the style of
Table 3", as the `mup` package's MuReadout + MuAdam do), relative to a base width so that a model
of width `mup_base_width` is exactly the standard model except for the attention scale. With
m = d_model / mup_base_width:

    parameter                        init std              multiplier      Adam learning rate
    token / position embeddings      init_std              1               lr
    hidden matrices (q k v o, MLP)   init_std / sqrt(m)    1               lr / m
    output layer (untied head)       init_std              1 / m           lr
    norm scales, biases              1 / 0                 1               lr
    attention logits                 q.k / head_dim  (standard: q.k / sqrt(head_dim))

The output layer's effective weights (init_std / m) have Table 3's variance 1/fan_in^2. Its
zero-initialised variant (Sec. 6 of the paper) is not used: on the stdlib corpus, at 100 steps, it
cost 0.59 nats at the base width (BENCHMARKS.md, muP learning-rate transfer).
Tied embeddings keep the embedding's init (it is also the input layer) and take the 1/m output
multiplier. A hidden matrix's fan-in grows with width for every matrix listed (d_model for q k v
and the MLP input, n_heads * head_dim for o, d_ff for the MLP output), so one factor m serves all.
"""

from __future__ import annotations

import math

import jax
import optax
from flax import nnx

from meshtron.configs.schema import ModelConfig

# Parameters that are not hidden matrices: their learning rate and init do not scale with width.
_VECTOR_LIKE = ("tokens", "positions", "head", "scale", "bias")


def enabled(cfg: ModelConfig) -> bool:
    """True when the config asks for muP."""
    return getattr(cfg, "parametrization", "standard") == "mup"


def width_mult(cfg: ModelConfig) -> float:
    """m = d_model / mup_base_width (1.0 under standard parametrization or without a base width)."""
    base = getattr(cfg, "mup_base_width", None)
    return cfg.d_model / base if enabled(cfg) and base else 1.0


def hidden_init_factor(cfg: ModelConfig) -> float:
    """Factor on the init std of hidden matrices: 1/sqrt(m) (init variance proportional to 1/fan_in)."""
    return 1.0 / math.sqrt(width_mult(cfg))


def attention_scale(cfg: ModelConfig) -> float | None:
    """Scale of q.k: 1/head_dim under muP; None (JAX's default 1/sqrt(head_dim)) otherwise."""
    return 1.0 / cfg.dim_per_head if enabled(cfg) else None


def output_multiplier(cfg: ModelConfig) -> float:
    """Factor on the output logits: base/width under muP, 1 otherwise."""
    return 1.0 / width_mult(cfg)


def is_hidden(path) -> bool:
    """True for a hidden matrix (its Adam learning rate scales as 1/m); False for embeddings, the output
    layer, norm scales and biases."""
    name = str(getattr(path[-1], "key", path[-1]))
    return not (name in _VECTOR_LIKE or name.endswith("_bias"))


def scale_hidden_updates(cfg: ModelConfig) -> optax.GradientTransformation:
    """Multiply the updates of hidden matrices by 1/m: with Adam (whose update has unit scale per
    coordinate) this is the per-parameter learning rate lr/m, weight decay included (decoupled)."""
    factor = 1.0 / width_mult(cfg)

    def scale(path, update):
        if not is_hidden(path):
            return update
        if isinstance(update, nnx.Variable):
            return update.replace(update[...] * factor)
        return update * factor

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(scale, updates, is_leaf=lambda x: isinstance(x, nnx.Variable)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def describe(cfg: ModelConfig) -> str:
    """One line for the run's announcement."""
    if not enabled(cfg):
        return "standard parametrization"
    m = width_mult(cfg)
    return (f"muP (Tensor Programs V, Table 3 multiplier form): width {cfg.d_model} = {m:g} x base "
            f"{cfg.d_model / m:g}; hidden lr x{1 / m:.3g}, init x{1 / math.sqrt(m):.3g}, logits x{1 / m:.3g}, "
            f"attention 1/head_dim")


def check_exportable(cfg: ModelConfig) -> None:
    """Refuse, in one line, a muP model Hugging Face cannot express: tied embeddings with logits x base/width."""
    from meshtron.configs.errors import UserError

    if enabled(cfg) and cfg.tie_embeddings and width_mult(cfg) != 1:
        raise UserError(f"model.parametrization=mup with tied embeddings scales the logits by base/width = "
                        f"{1 / width_mult(cfg):g}, which a tied Hugging Face model cannot hold; train with "
                        "model.tie_embeddings=false (or mup_base_width = d_model) to export")


def fold_for_export(cfg: ModelConfig, flat: dict) -> dict:
    """The muP multipliers folded into the weights, so a standard model (Hugging Face) computes the same
    logits: q (and its bias) x 1/sqrt(head_dim) turns q.k/sqrt(head_dim) into q.k/head_dim; an untied
    head x base/width carries the output multiplier."""
    if not enabled(cfg):
        return flat
    check_exportable(cfg)
    flat = dict(flat)
    q_scale = 1.0 / math.sqrt(cfg.dim_per_head)
    for key in ("blocks.attn.q", "blocks.attn.q_bias"):
        if key in flat:
            flat[key] = flat[key] * q_scale
    if "head" in flat:
        flat["head"] = flat["head"] * output_multiplier(cfg)
    return flat

"""AdamW with warm-up and decay (optax), weight decay on matrices and embeddings only."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from meshtron.configs.schema import TrainConfig
from meshtron.model import mup


def lr_schedule(t: TrainConfig) -> optax.Schedule:
    """Linear warm-up to train.lr, then cosine / linear decay to lr * min_lr_ratio, or constant."""
    warmup = min(t.warmup_steps, t.steps)
    decay_steps = max(t.steps - warmup, 1)
    final = t.lr * t.min_lr_ratio
    if t.schedule == "cosine":
        decay = optax.cosine_decay_schedule(t.lr, decay_steps, alpha=t.min_lr_ratio)
    elif t.schedule == "linear":
        decay = optax.linear_schedule(t.lr, final, decay_steps)
    else:
        decay = optax.constant_schedule(t.lr)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, t.lr, warmup), decay], [warmup])


def is_decayed(path) -> bool:
    """Matrices and embeddings decay; norm scales and biases do not."""
    name = str(getattr(path[-1], "key", path[-1]))
    return not (name in ("scale", "bias") or name.endswith("_bias"))


def decay_mask(params):
    """A tree of booleans shaped like `params`: True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(lambda path, v: v.replace(is_decayed(path)), params,
                                            is_leaf=lambda x: isinstance(x, nnx.Variable))


def make_optimizer(t: TrainConfig, model=None) -> optax.GradientTransformation:
    """optax AdamW; clipping and the NaN guard happen in the step, on the global gradient. Under muP
    (model.parametrization=mup) hidden matrices take lr x base/width (model/mup.py)."""
    adamw = optax.adamw(lr_schedule(t), b1=t.beta1, b2=t.beta2, eps=t.eps, weight_decay=t.weight_decay,
                        mask=decay_mask)
    if model is None or not mup.enabled(model):
        return adamw
    return optax.chain(adamw, mup.scale_hidden_updates(model))

"""What the train and eval steps read and minimise for each `train.objective`.

causal batches are token windows (B, T+1), as always. The others are named arrays (train/data/objectives.py):
every array is split over the batch axes by rows; the loss is the weighted mean of per-token losses, divided
by the weights of the whole global batch (psum over the batch axes), so every layout and micro-batching
gives the single-device loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from meshtron.configs.objectives import span_corruption_lengths
from meshtron.configs.schema import Config
from meshtron.parallel.rules import BATCH_AXES

FIELDS = {"mlm": ("inputs", "targets", "weights"),
          "span_corruption": ("inputs", "decoder_inputs", "targets", "weights"),
          "prefix_lm": ("inputs", "targets", "weights", "prefix")}


def batch_spec(objective: str, axes: tuple = BATCH_AXES):
    """PartitionSpec (tree) of a global batch split over the mesh axes `axes`."""
    axes = axes or None
    if objective == "causal":
        return P(axes, None)
    return {k: P(axes) if k == "prefix" else P(axes, None) for k in FIELDS[objective]}


def batch_shapes(config: Config) -> dict:
    """Shapes and dtypes of a global batch's arrays (for ahead-of-time compiles)."""
    t, m = config.train, config.model
    B, T = t.batch_size, m.seq_len
    if t.objective == "causal":
        return jax.ShapeDtypeStruct((B, T + 1), jnp.int32)
    U = span_corruption_lengths(T)[1] if t.objective == "span_corruption" else T
    shapes = {"inputs": (B, T), "decoder_inputs": (B, U), "targets": (B, U), "weights": (B, U), "prefix": (B,)}
    return {k: jax.ShapeDtypeStruct(shapes[k], jnp.float32 if k == "weights" else jnp.int32)
            for k in FIELDS[t.objective]}


def weighted_losses(model, batch: dict, objective: str, key) -> jax.Array:
    """Sum over this device's rows of weight x per-token loss."""
    if objective == "span_corruption":
        losses = model.token_losses(batch["inputs"], batch["decoder_inputs"], batch["targets"], dropout_key=key)
    elif objective == "prefix_lm":
        losses = model.token_losses(batch["inputs"], batch["targets"], dropout_key=key, prefix=batch["prefix"])
    else:
        losses = model.token_losses(batch["inputs"], batch["targets"], dropout_key=key)
    # a zero weight must hide whatever the position computes
    return jnp.sum(jnp.where(batch["weights"] > 0, losses, 0.0) * batch["weights"])


def global_weight(batch: dict, axes: tuple = BATCH_AXES) -> jax.Array:
    """Sum of the weights of the global batch (inside the sharded step; the batch is split over `axes`)."""
    total = jnp.sum(batch["weights"])
    return jax.lax.psum(total, axes) if axes else total


def host_arrays(local_batch, objective: str):
    """numpy arrays with the dtypes the step expects."""
    import numpy as np

    if objective == "causal":
        return np.asarray(local_batch, np.int32)
    return {k: np.asarray(local_batch[k], np.float32 if k == "weights" else np.int32) for k in FIELDS[objective]}

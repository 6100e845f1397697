"""What the compiled step keeps besides its arguments and the saved activations: XLA's own choices.

Read off the TPU compiler's buffer assignment of Meshtron's step at real scale (llama-7b to
gpt3-175b on v5e/v5p slices, BENCHMARKS.md) and kept here as formulas:

- the parameters cast to the compute dtype: XLA converts the whole local stack of block weights
  once, outside the scan over layers (loop-invariant code motion), and keeps the copy until the
  backward pass has used it;
- under ZeRO-3, each gathered weight's gradient, full size in the compute dtype, before it is
  reduce-scattered: as large again as the gathered weights themselves;
- one block's backward working set: under remat the block's forward is recomputed, so its
  activations exist again (the difference between remat none and the policy), and attention
  scores and their gradient are float32 (heads x s x s per sequence, split over the tensor axis);
- the float32 logits' gradient beside the float32 logits;
- what a block saves for its backward pass beyond Korthikanti et al.'s count, because Meshtron
  computes softmax and normalisation in float32: without remat the float32 softmax output beside
  its compute-dtype copy, the norms' float32 values (4 x s·b·h) and SwiGLU's intermediate
  products (as many again as its three matmul-side values). Under remat dots nothing more: the
  policy (dots_with_no_batch_dims_saveable) saves q, k, v and the MLP's matmul outputs, not the
  attention logits (their einsum has a batch dimension, the heads).
"""

from __future__ import annotations

from meshtron.configs.schema import ModelConfig
from meshtron.parallel.rules import Rules
from meshtron.train.planner.formulas import Precision, activation_bytes_per_layer, shard_elements

SCORE_BYTES = 4  # attention logits and softmax are float32 whatever the compute dtype
SCORE_COPIES = 2  # the scores and their gradient, alive together in a block's backward pass


def compute_copy_bytes(params, rules: Rules, degrees: dict, precision: Precision) -> int:
    """The local parameters converted to the compute dtype (0 when they are stored in it)."""
    copy = 0
    for tensor in params:
        if tensor.itemsize != precision.activation_bytes:
            copy += shard_elements(tensor, rules.params, degrees) * precision.activation_bytes
    return copy


def gathered_gradient_bytes(gathered_bytes: int) -> int:
    """ZeRO-3: the full-size gradient of each gathered weight, before its reduce-scatter."""
    return gathered_bytes


def kept_bytes_per_layer(model: ModelConfig, micro_batch: int, tensor: int, activation_bytes: int,
                         remat: str | None = None) -> int:
    """Bytes one block saves for its backward pass beyond activation_bytes_per_layer (Korthikanti's count)."""
    remat = remat or model.remat
    s, b = model.seq_len, micro_batch
    scores = (model.n_heads // tensor) * s * s * b
    if remat != "none":
        return 0
    mlp_values = 3 if model.mlp == "swiglu" else 2
    return (SCORE_BYTES * scores + activation_bytes * mlp_values * s * b * model.ff_dim // tensor
            + 4 * SCORE_BYTES * s * b * model.d_model)


def block_working_bytes(model: ModelConfig, micro_batch: int, tensor: int, activation_bytes: int) -> int:
    """One block's backward pass: its recomputed activations under remat, and float32 attention scores
    with their gradient."""
    recomputed = (activation_bytes_per_layer(model, micro_batch, tensor, activation_bytes, "none")
                  - activation_bytes_per_layer(model, micro_batch, tensor, activation_bytes))
    scores = SCORE_COPIES * SCORE_BYTES * (model.n_heads // tensor) * model.seq_len ** 2 * micro_batch
    return recomputed + scores


def logits_gradient_bytes(model: ModelConfig, micro_batch: int, tensor: int, vocab_rows: int) -> int:
    """The float32 gradient of the logits of the vocabulary shard (one chunk of positions when chunked)."""
    positions = model.logits_chunk if 0 < model.logits_chunk < model.seq_len else model.seq_len
    return 4 * micro_batch * positions * (vocab_rows // tensor)


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
  attention logits (their einsum has a batch dimension, the heads). A ReLU MLP keeps its output and
  a 1-byte mask, no float32 intermediates (XLA:CPU's buffer assignment of T5's step);
- outside the blocks: an encoder-decoder's encoder-output gradient (each decoder layer's cross-attention
  adds to it), T5's relative-position biases' float32 gradients, and under BERT's MLM head a second
  float32 logits buffer (the logits plus the output bias).
"""

from __future__ import annotations

from meshtron.configs.schema import ModelConfig
from meshtron.parallel.rules import Rules
from meshtron.train.planner.formulas import Precision, activation_bytes_per_layer, mlp_values, shard_elements
from meshtron.train.planner.stacks import (Stack, memory_gradient_elements, model_stacks, output_positions,
                                         relative_bias_elements)

SCORE_BYTES = 4  # attention logits and softmax are float32 whatever the compute dtype
# float32 (heads x s x s) buffers alive together in a block's backward pass: libtpu's buffer assignment keeps the
# scores, the softmax's gradient and the scores' gradient (llama-7b, v5p-8, tensor 4: three f32[8, 8, 2048, 2048]);
# XLA:CPU reuses one of them, keeping two. GPUs follow the TPU figure until a GPU compile says otherwise.
SCORE_COPIES = {"cpu": 2}
SCORE_COPIES_ELSEWHERE = 3


def score_copies(platform: str) -> int:
    """float32 attention-score buffers a block's backward pass holds at once on `platform`."""
    return SCORE_COPIES.get(platform, SCORE_COPIES_ELSEWHERE)


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
                         remat: str | None = None, stack: Stack | None = None) -> int:
    """Bytes one block of `stack` (default: the model's first) saves for its backward pass beyond
    activation_bytes_per_layer (Korthikanti's count); a cross-attention block's cross scores and norm too."""
    remat = remat or model.remat
    stack = stack or model_stacks(model)[0]
    if remat != "none":
        return 0
    s, b, norms = stack.tokens, micro_batch, 4 + (2 if stack.memory else 0)
    scores = (model.n_heads // tensor) * s * (s + stack.memory) * b
    mlp = 0 if model.mlp == "relu" else mlp_values(model)  # float32 intermediates of GELU and gated MLPs
    return (SCORE_BYTES * scores + activation_bytes * mlp * s * b * model.ff_dim // tensor
            + norms * SCORE_BYTES * s * b * model.d_model)


def block_working_bytes(model: ModelConfig, micro_batch: int, tensor: int, activation_bytes: int,
                        platform: str = "tpu") -> int:
    """One block's backward pass (the largest of the model's stacks): its recomputed activations under
    remat, and float32 attention scores with their gradients (self- or cross-attention, one at a time)."""
    copies = score_copies(platform)

    def working(stack: Stack) -> int:
        recomputed = (activation_bytes_per_layer(model, micro_batch, tensor, activation_bytes, "none", stack)
                      - activation_bytes_per_layer(model, micro_batch, tensor, activation_bytes, stack=stack))
        keys = max(stack.tokens, stack.memory)
        return recomputed + copies * SCORE_BYTES * (model.n_heads // tensor) * stack.tokens * keys * micro_batch

    return max(working(stack) for stack in model_stacks(model))


def logits_gradient_bytes(model: ModelConfig, micro_batch: int, tensor: int, vocab_rows: int) -> int:
    """The float32 gradient of the logits of the vocabulary shard (one chunk of positions when chunked)."""
    s = output_positions(model)
    positions = model.logits_chunk if 0 < model.logits_chunk < s else s
    return 4 * micro_batch * positions * (vocab_rows // tensor)


def outside_working_bytes(model: ModelConfig, micro_batch: int, tensor: int, vocab_rows: int,
                          activation_bytes: int) -> int:
    """What the backward pass builds outside the blocks: an encoder-decoder's encoder-output gradient (summed
    over the decoder layers), the float32 gradients of T5's relative-position biases, and under BERT's MLM
    head one more float32 logits buffer (the logits with the head's output bias added)."""
    mlm_bias = 4 * micro_batch * output_positions(model) * (vocab_rows // tensor) if model.arch == "encoder" else 0
    return (activation_bytes * memory_gradient_elements(model, micro_batch)
            + SCORE_BYTES * relative_bias_elements(model, tensor) + mlm_bias)

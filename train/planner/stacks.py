"""The stacks of blocks a model runs, as the planner's activation formulas see them.

A decoder (GPT, LLaMA, PaLM) runs one causal stack over its T positions; an encoder (BERT) one
bidirectional stack over its T positions, then BERT's MLM head over every position; an
encoder-decoder (T5, the original Transformer) an encoder stack over the S input tokens and a
decoder stack over the U target tokens (T5's span-corruption target length for seq_len = S,
model/seq_counting.py), whose blocks add cross-attention: queries over U, keys and values of the S
encoder outputs projected again in every decoder layer, scores U x S.

What the model keeps outside its blocks differs too (`outside_values`): a decoder's final norm; BERT's
embedding norm, its MLM head (dense, activation, norm) and the logits with the head's output bias; an
encoder-decoder's two final norms, T5's rescaled decoder output, the relative-position biases of both
stacks (one (H, T, S) table per stack, shared by its layers) and the encoder output's gradient, summed
over the decoder layers that read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshtron.configs.schema import ModelConfig
from meshtron.model.encoder_decoder import decoder_layers
from meshtron.model.seq_counting import sequence_lengths


@dataclass(frozen=True)
class Stack:
    """One stack of identical blocks: how many, over how many positions, and cross-attention's keys."""

    name: str  # decoder, encoder, or (in an encoder-decoder) encoder / decoder
    layers: int
    tokens: int  # positions each block runs over (its queries)
    memory: int = 0  # encoder positions each block cross-attends to (0: no cross-attention)


def model_stacks(model: ModelConfig) -> tuple[Stack, ...]:
    """The model's stacks in the order the step runs them."""
    if model.arch != "encoder_decoder":
        return (Stack(model.arch, model.n_layers, model.seq_len),)
    inputs, targets = sequence_lengths(model)
    return (Stack("encoder", model.n_layers, inputs), Stack("decoder", decoder_layers(model), targets, inputs))


def output_positions(model: ModelConfig) -> int:
    """Positions the output layer computes logits for (all of them: BERT's head scores every position, and
    the weights pick the masked ones); an encoder-decoder's are its U target positions."""
    return model_stacks(model)[-1].tokens


def outside_values(model: ModelConfig, micro_batch: int) -> int:
    """Elements of (B, ·, E) values the model keeps outside its blocks, in the compute dtype."""
    h, b = model.d_model, micro_batch
    stacks = model_stacks(model)
    final_norm = 1 if model.post_norm else 2  # post-norm: the last block's output only; pre-norm: in and out
    if model.arch == "decoder":
        return 2 * stacks[0].tokens * b * h
    if model.arch == "encoder":
        # embedding norm's input; the MLM head's input, dense output, activation and norm output
        head = (final_norm + 3) + (1 if model.embed_norm else 0)
        return head * stacks[0].tokens * b * h
    rescaled = 1 if model.tie_embeddings and model.position == "relative" else 0  # T5: x * d_model^-0.5
    return (final_norm * stacks[0].tokens + (final_norm + rescaled) * stacks[1].tokens) * b * h


def relative_bias_elements(model: ModelConfig, tensor: int) -> int:
    """T5's relative-position biases, (H/t, T, S) per stack, computed once and read by every layer."""
    if model.position != "relative":
        return 0
    return sum(model.n_heads // tensor * s.tokens * s.tokens for s in model_stacks(model))


def memory_gradient_elements(model: ModelConfig, micro_batch: int) -> int:
    """An encoder-decoder's encoder output gradient (B, S, E), summed over the decoder layers (0 otherwise)."""
    stacks = model_stacks(model)
    return stacks[-1].memory * micro_batch * model.d_model


def embedding_uses(model: ModelConfig) -> int:
    """Times the model reads its ZeRO-3-gathered token table, each with its own gradient reduce-scatter: a
    decoder passes one gathered table from the lookup to the output layer; BERT reads it for the lookup and
    the MLM output; an encoder-decoder for each stack's lookup and, tied, the output."""
    if model.arch == "decoder":
        return 1
    if model.arch == "encoder":
        return 2
    return 2 + (1 if model.tie_embeddings else 0)

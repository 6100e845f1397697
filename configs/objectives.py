"""Which objective trains which architecture, and T5's span-corruption lengths (Raffel et al. 2020).

Pure arithmetic shared by config checks (configs/), FLOP counts (model/) and the data pipeline (train/).
"""

from __future__ import annotations

ARCH_OBJECTIVES = {"decoder": ("causal", "prefix_lm"), "encoder": ("mlm",), "encoder_decoder": ("span_corruption",)}
NOISE_DENSITY, MEAN_SPAN = 0.15, 3.0
SENTINELS = 100  # T5's <extra_id_0..99>, counted down from the top of the vocabulary
MIN_SPAN_INPUT = 8  # shorter inputs leave no room for a clean span, a noise span and EOS


def _span_lengths(tokens_length: int, density: float, mean_span: float) -> tuple[int, int]:
    noise = int(round(tokens_length * density))
    spans = int(round(noise / mean_span))
    return tokens_length - noise + spans + 1, noise + spans + 1  # inputs, targets (one EOS each)


def span_corruption_lengths(inputs_length: int, density: float = NOISE_DENSITY,
                            mean_span: float = MEAN_SPAN) -> tuple[int, int]:
    """(raw tokens per example, target length) such that the corrupted input is exactly `inputs_length`
    tokens: T5's `random_spans_helper` (one sentinel per span in inputs and targets, one EOS each)."""
    tokens = inputs_length - 1
    while _span_lengths(tokens + 1, density, mean_span)[0] <= inputs_length:
        tokens += 1
    _, targets = _span_lengths(tokens, density, mean_span)
    if density == 0.5 and targets > inputs_length:
        tokens, targets = tokens - 1, targets - 1
    return tokens, targets

"""Training objectives as pure functions of (raw token windows, seed, step): causal LM, BERT's masked LM,
T5's span corruption and prefix LM.

Every random choice is drawn from a generator seeded by (seed, step, global row), so a batch is the same
whatever the number of processes and a resumed run sees exactly the batches it would have seen.
Each objective turns a batch of raw windows (B, raw_length) into named arrays:

  causal           inputs (B, T), targets (B, T), weights (B, T)
  prefix_lm        the same, plus prefix (B,): positions < prefix attend both ways; loss on the suffix
  mlm              inputs (B, T) with [MASK]/random/kept tokens, targets (B, T), weights 1 on chosen positions
  span_corruption  inputs (B, T) (encoder), decoder_inputs (B, U), targets (B, U), weights (B, U)

Sentinels (T5's <extra_id_i>) are counted down from the top of the vocabulary: span i -> vocab_size - 1 - i
(train/data/special_tokens.py names these ids for `meshtron fill`, `meshtron generate` and the exported tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshtron.configs.objectives import MEAN_SPAN, NOISE_DENSITY, span_corruption_lengths

MASK_RATE, MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.15, 0.8, 0.1  # Devlin et al. 2018
PAD_ID = 0  # decoder start and padding of T5 targets


@dataclass(frozen=True)
class Specials:
    """Ids the objectives need: EOS, the [MASK] token, the range random replacements come from."""

    eos_id: int
    mask_id: int = -1
    vocab_size: int = 0  # true vocabulary (sentinels are vocab_size-1, vocab_size-2, ...)
    ordinary: int = 0  # ids [0, ordinary) are ordinary pieces (random replacements are drawn from them)


def _row_rng(seed: int, step: int, row: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, row])


def _segmentation(rng: np.random.Generator, items: int, segments: int) -> np.ndarray:
    """Split `items` into `segments` random non-empty lengths (T5's _random_segmentation)."""
    first = np.zeros(items, np.int64)
    first[1:] = rng.permutation((np.arange(items - 1) < segments - 1).astype(np.int64))
    return np.bincount(np.cumsum(first), minlength=segments)


def random_spans_noise_mask(rng: np.random.Generator, length: int, density: float = NOISE_DENSITY,
                            mean_span: float = MEAN_SPAN) -> np.ndarray:
    """Boolean (length,) noise mask of alternating clean / noise spans, starting clean (T5's layout)."""
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = max(int(round(noise / mean_span)), 1)
    lengths = np.stack([_segmentation(rng, length - noise, spans), _segmentation(rng, noise, spans)], 1).ravel()
    span_id = np.repeat(np.arange(2 * spans), lengths)
    return span_id % 2 == 1


def _sentinel_spans(tokens: np.ndarray, drop: np.ndarray, vocab_size: int) -> np.ndarray:
    """Each run of dropped tokens replaced by one sentinel (counted down from the top), the rest kept."""
    starts = drop & ~np.concatenate([[False], drop[:-1]])
    sentinel = vocab_size - np.cumsum(starts)  # first span: vocab_size - 1
    out = np.where(starts, sentinel, tokens)
    return out[~drop | starts]


def span_corruption(windows: np.ndarray, seed: int, step: int, specials: Specials, first_row: int = 0) -> dict:
    """T5 span corruption of raw windows (B, raw) -> encoder inputs, decoder inputs, targets (+ EOS each)."""
    rows = []
    for r, tokens in enumerate(np.asarray(windows)):
        mask = random_spans_noise_mask(_row_rng(seed, step, first_row + r), len(tokens))
        inputs = np.append(_sentinel_spans(tokens, mask, specials.vocab_size), specials.eos_id)
        targets = np.append(_sentinel_spans(tokens, ~mask, specials.vocab_size), specials.eos_id)
        rows.append((inputs, targets))
    inputs = np.stack([a for a, _ in rows]).astype(np.int32)
    targets = np.stack([b for _, b in rows]).astype(np.int32)
    decoder_inputs = np.concatenate([np.full((len(rows), 1), PAD_ID, np.int32), targets[:, :-1]], axis=1)
    return {"inputs": inputs, "decoder_inputs": decoder_inputs, "targets": targets,
            "weights": np.ones(targets.shape, np.float32)}


# -- BERT masking ------------------------------------------------------------------------------------------------
def mlm(windows: np.ndarray, seed: int, step: int, specials: Specials, first_row: int = 0) -> dict:
    """BERT's masked LM: 15% of positions chosen; of those 80% -> [MASK], 10% -> a random ordinary token,
    10% unchanged. Targets are the original tokens; the loss weights are 1 on the chosen positions only."""
    windows = np.asarray(windows, np.int32)
    inputs, weights = windows.copy(), np.zeros(windows.shape, np.float32)
    for r, tokens in enumerate(windows):
        rng = _row_rng(seed, step, first_row + r)
        chosen = rng.random(len(tokens)) < MASK_RATE
        action = rng.random(len(tokens))
        random_ids = rng.integers(0, specials.ordinary, len(tokens))
        row = np.where(chosen & (action < MASK_TOKEN_SHARE), specials.mask_id, tokens)
        use_random = chosen & (action >= MASK_TOKEN_SHARE) & (action < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE)
        inputs[r] = np.where(use_random, random_ids, row)
        weights[r] = chosen
    return {"inputs": inputs, "targets": windows, "weights": weights}


# -- causal and prefix LM ----------------------------------------------------------------------------------------
def causal(windows: np.ndarray, seed: int, step: int, specials: Specials, first_row: int = 0) -> dict:
    """Next-token prediction on every position."""
    windows = np.asarray(windows, np.int32)
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
            "weights": np.ones((windows.shape[0], windows.shape[1] - 1), np.float32)}


def prefix_lm(windows: np.ndarray, seed: int, step: int, specials: Specials, first_row: int = 0) -> dict:
    """A random split point per row: the prefix [0, p) is read bidirectionally, the loss covers predictions of
    the suffix tokens (input position i predicts token i + 1, counted when i + 1 >= p)."""
    out = causal(windows, seed, step, specials, first_row)
    T = out["inputs"].shape[1]
    prefix = np.array([_row_rng(seed, step, first_row + r).integers(1, T) for r in range(len(out["inputs"]))],
                      np.int32)
    out["weights"] = (np.arange(T)[None, :] + 1 >= prefix[:, None]).astype(np.float32)
    out["prefix"] = prefix
    return out


APPLY = {"causal": causal, "mlm": mlm, "span_corruption": span_corruption, "prefix_lm": prefix_lm}


def raw_length(objective: str, seq_len: int) -> int:
    """Raw tokens one example consumes: seq_len + 1 (causal, prefix LM), seq_len (mlm), or T5's length that
    corrupts to exactly seq_len input tokens (span corruption)."""
    if objective == "mlm":
        return seq_len
    if objective == "span_corruption":
        return span_corruption_lengths(seq_len)[0]
    return seq_len + 1


def target_length(objective: str, seq_len: int) -> int:
    """Positions of the loss: the decoder length for span corruption, seq_len otherwise."""
    return span_corruption_lengths(seq_len)[1] if objective == "span_corruption" else seq_len


def make_batch(objective: str, windows: np.ndarray, seed: int, step: int, specials: Specials,
               first_row: int = 0) -> dict:
    """The named arrays of one batch (see the module docstring)."""
    return APPLY[objective](windows, seed, step, specials, first_row)

"""Using encoder and encoder-decoder runs: text with special tokens ([MASK], <extra_id_N>) <-> ids, BERT-style
mask filling, and encoder-decoder generation with a KV cache (cross-attention K/V computed once).

The special tokens, their ids and the framing of an input (BERT's [CLS] text [SEP], T5's text </s>) come from
train/data/special_tokens.py, which the exported Hugging Face tokenizer is built from too.
"""

from __future__ import annotations

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from meshtron.configs.errors import UserError
from meshtron.train.data import special_tokens
from meshtron.train.data.special_tokens import MASK_TEXT
from meshtron.train.generate import sample_logits

SPACE = "\u2581"  # SentencePiece's visible space


class SpecialText:
    """encode / decode of a run's tokenizer plus its special tokens, as the exported Hugging Face tokenizer does:
    the objective's reserved tokens ([MASK], <extra_id_N>) and the tokenizer's own special tokens (SentencePiece's
    <unk>, <s>, </s>; a tokenizer.json's [CLS], [SEP], ...) are read in text as their ids (leftmost, longest
    first); `frame` adds [CLS]/[SEP] or EOS."""

    def __init__(self, tokenizer, vocab_size: int, objective: str):
        self.tokenizer, self.vocab_size, self.objective = tokenizer, vocab_size, objective
        reserved = special_tokens.reserved_tokens(objective, vocab_size)
        # a tokenizer's own token with a reserved text ([MASK], <extra_id_0>) is renamed <unused_ID>, as exported
        shadowed = set(reserved.values())
        self.names = {**{i: special_tokens.unused_text(i) if t in shadowed else t
                         for t, i in tokenizer.control_tokens().items()}, **reserved}  # id -> text
        self.ids = {t: i for i, t in self.names.items()}
        longest_first = sorted(self.ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if self.ids else None

    def encode(self, text: str) -> list[int]:
        """Ids of `text`: special tokens become their ids, the text between is encoded piece by piece."""
        ids: list[int] = []
        for n, part in enumerate(self._split.split(text) if self._split else [text]):
            if n % 2:
                ids.append(self.ids[part])
            elif part:
                ids.extend(self.tokenizer.encode(part))
        return ids

    def frame(self, text: str) -> list[int]:
        """What the model reads for `text`: BERT's [CLS] ids [SEP], T5's ids </s> (special_tokens.frame)."""
        return special_tokens.frame(self.encode(text), self.objective, self.tokenizer.bos_id, self.tokenizer.eos_id)

    def piece(self, token_id: int) -> str:
        """The text of one id (special tokens by name)."""
        if token_id in self.names:
            return self.names[token_id]
        if token_id >= self.tokenizer.vocab_size:
            return special_tokens.unused_text(token_id)
        return self.tokenizer.decode([token_id])

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, special tokens written by name: the exported tokenizer's decode(ids) (special tokens
        kept), whose only stripped space is the one SentencePiece put before the first word."""
        out, run = [], []

        def flush():
            if run:
                text = self.tokenizer.decode(run)
                if out and self.tokenizer.kind == "sentencepiece" and self.tokenizer.token(run[0]).startswith(SPACE):
                    text = " " + text
                out.append(text)
                run.clear()

        for t in ids:
            if t in self.names or t >= self.tokenizer.vocab_size:
                flush()
                out.append(self.piece(t))
            else:
                run.append(t)
        flush()
        return "".join(out)


def fill(model, ids: list[int], mask_id: int, top_k: int) -> list[dict]:
    """Per mask position: the top-k ids and probabilities of the encoder's MLM head."""
    if mask_id not in ids:
        raise UserError(f"--text has no {MASK_TEXT} to fill")
    if len(ids) > model.cfg.seq_len:
        raise UserError(f"--text is {len(ids)} tokens; the model reads at most {model.cfg.seq_len}")
    graphdef, params = nnx.split(model)
    logits = _mlm_logits(graphdef, params, jnp.asarray([ids], jnp.int32))[0, :, :model.cfg.vocab_size]
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    out = []
    for pos in [i for i, t in enumerate(ids) if t == mask_id]:
        best = np.argsort(-probs[pos])[:top_k]
        out.append({"position": pos, "ids": [int(i) for i in best], "probs": [float(probs[pos, i]) for i in best]})
    return out


@partial(jax.jit, static_argnames=("graphdef",))
def _mlm_logits(graphdef, params, ids):
    return nnx.merge(graphdef, params)(ids)


@partial(jax.jit, static_argnames=("graphdef", "steps", "temperature", "top_k", "top_p"))
def _seq_generate(graphdef, params, inputs, key, start_id, *, steps, temperature, top_k, top_p):
    model = nnx.merge(graphdef, params)
    vocab = model.cfg.vocab_size
    cross = model.cross_kv(model.encode(inputs))  # once per input: every decoder layer's K/V
    cache = model.init_cache(inputs.shape[0], steps)

    def step(carry, i):
        params, token, cache, key = carry
        m = nnx.merge(graphdef, params)  # merged inside each trace level
        x, cache = m.decode(token[:, None], cross=cross, cache=cache, cache_index=i)
        key, sub = jax.random.split(key)
        nxt = sample_logits(m.logits(x)[:, -1, :vocab], sub, temperature, top_k, top_p)
        return (params, nxt, cache, key), nxt

    first = jnp.full((inputs.shape[0],), start_id, jnp.int32)
    _, tokens = jax.lax.scan(step, (params, first, cache, key), jnp.arange(steps))
    return tokens.T


def generate_seq(model, input_ids: list[int], max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, eos_id: int | None = None, start_id: int = 0) -> list[int]:
    """Decoder ids for the encoder input `input_ids` (cut at EOS): greedy or sampled, KV-cached."""
    if not 1 <= max_new_tokens <= model.cfg.seq_len:
        raise UserError(f"--max-new-tokens must be in [1, {model.cfg.seq_len}], got {max_new_tokens}")
    if len(input_ids) > model.cfg.seq_len:
        raise UserError(f"--input is {len(input_ids)} tokens; the encoder reads at most {model.cfg.seq_len}")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise UserError("sampling needs --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1")
    graphdef, params = nnx.split(model)
    out = _seq_generate(graphdef, params, jnp.asarray([input_ids], jnp.int32), jax.random.PRNGKey(seed),
                        start_id, steps=max_new_tokens, temperature=float(temperature), top_k=int(top_k),
                        top_p=float(top_p))
    tokens = [int(t) for t in np.asarray(out[0])]
    return tokens[:tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens

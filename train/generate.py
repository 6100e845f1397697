"""Sampling with a KV cache: greedy (temperature 0), or temperature with top-k / top-p."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from meshtron.configs.errors import UserError
from meshtron.model.transformer import Transformer


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Next token ids (B,) from logits (B, V) of the true vocabulary."""
    if temperature <= 0.0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if 0.0 < top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop_sorted = jnp.cumsum(probs, axis=-1) - probs > top_p
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1)


@partial(jax.jit, static_argnames=("graphdef", "steps", "temperature", "top_k", "top_p"))
def _generate(graphdef, params, prompt, key, *, steps, temperature, top_k, top_p):
    def forward(params, tokens, cache, index):
        # merged inside each trace level: NNX modules may not cross into the scan below
        return nnx.merge(graphdef, params)(tokens, cache=cache, cache_index=index)

    model: Transformer = nnx.merge(graphdef, params)
    vocab = model.cfg.vocab_size
    batch, length = prompt.shape
    logits, cache = forward(params, prompt, model.init_cache(batch, length + steps), 0)  # prefill: (B, P, V)
    logits = logits[:, -1:]

    def step(carry, i):
        params, logits, cache, key = carry
        key, sub = jax.random.split(key)
        token = sample_logits(logits[:, -1, :vocab], sub, temperature, top_k, top_p)
        logits, cache = forward(params, token[:, None], cache, length + i)
        return (params, logits, cache, key), token

    _, tokens = jax.lax.scan(step, (params, logits, cache, key), jnp.arange(steps))
    return tokens.T  # (B, steps)


def generate(model: Transformer, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, eos_id: int | None = None) -> list[int]:
    """New token ids after `prompt_ids` (cut at EOS), decoded one at a time with a KV cache."""
    seq_len = model.cfg.seq_len
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if max_new_tokens >= seq_len:
        raise UserError(f"--max-new-tokens {max_new_tokens} must be below the model's context of {seq_len} tokens")
    if temperature < 0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise UserError("sampling needs --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1")
    # a prompt starts a new document, as after an EOS in training
    ids = ([eos_id] if eos_id is not None else []) + list(prompt_ids)
    ids = ids[-(seq_len - max_new_tokens):] or [0]
    graphdef, params = nnx.split(model)
    out = _generate(graphdef, params, jnp.asarray([ids], jnp.int32), jax.random.PRNGKey(seed),
                    steps=max_new_tokens, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    tokens = [int(t) for t in np.asarray(out[0])]
    if eos_id is not None and eos_id in tokens:
        tokens = tokens[:tokens.index(eos_id)]
    return tokens


def load_run(run_dir, step: int | None = None):
    """(model on one device, tokenizer, config, step) from a run directory's latest (or given) checkpoint."""
    from meshtron.train.run.weights import load_run_params
    from meshtron.train.data.tokenizer import Tokenizer

    run = load_run_params(run_dir, step)
    return run.model(), Tokenizer.from_run_dir(run_dir), run.config, run.step

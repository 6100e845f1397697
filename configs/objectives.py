"""Which objective trains which architecture, and T5's span-corruption lengths (Raffel et al. 2020).

Pure arithmetic shared by config checks (configs/), FLOP counts (model/) and the data pipeline (train/).
"""

from __future__ import annotations

from meshtron.configs.errors import ConfigError

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


def reserved_ids(objective: str) -> int:
    """Ids at the top of the vocabulary the objective reserves above the tokenizer's pieces: [MASK] for mlm,
    the sentinels for span corruption."""
    return {"mlm": 1, "span_corruption": SENTINELS}.get(objective, 0)


def check_architecture(config) -> None:
    """model.arch, train.objective and the switches only some architectures have: one-line ConfigErrors naming
    the key, before anything is built or compiled."""
    m, t = config.model, config.train
    from meshtron.configs.schema import FAMILY_DEFAULTS

    family_arch = FAMILY_DEFAULTS[m.family].get("arch", "decoder")
    if m.arch != family_arch:
        family = {"encoder": "bert", "encoder_decoder": "t5 or transformer", "decoder": "gpt2, llama or palm"}[m.arch]
        raise ConfigError(f"config key 'model.arch': model.family={m.family} is a {family_arch} family; use "
                          f"model.family={family} for model.arch={m.arch}")
    fits = ARCH_OBJECTIVES[m.arch]
    if t.objective not in fits:
        other = next(a for a, objs in ARCH_OBJECTIVES.items() if t.objective in objs)
        raise ConfigError(f"config key 'train.objective': {t.objective} does not train a model.arch={m.arch}; use "
                          f"{' or '.join(fits)}, or model.arch={other}")
    if m.arch == "decoder":
        extra = [k for k in ("post_norm", "embed_norm") if getattr(m, k)]
        extra += ["type_vocab_size"] * bool(m.type_vocab_size) + ["n_decoder_layers"] * (m.n_decoder_layers is not None)
        extra += ["max_positions"] * (m.max_positions is not None)
        if m.position == "relative":
            extra.append("position")
        if extra:
            raise ConfigError(f"config key 'model.{extra[0]}': an encoder / encoder_decoder switch; a decoder does not "
                              "use it (set model.arch or remove the key)")
        return
    if m.parallel_block:
        raise ConfigError(f"config key 'model.parallel_block': PaLM's parallel block is decoder-only; set it false "
                          f"for model.arch={m.arch}")
    if m.logits_chunk:
        raise ConfigError(f"config key 'model.logits_chunk': chunked logits are decoder-only; set 0 for "
                          f"model.arch={m.arch}")
    if m.position == "learned" and m.max_positions is not None and m.max_positions < m.seq_len:
        raise ConfigError(f"config key 'model.max_positions': {m.max_positions} rows cannot hold model.seq_len="
                          f"{m.seq_len} positions; raise it to >= {m.seq_len}")
    reserved = reserved_ids(t.objective)
    if m.vocab_size - reserved < 260:
        raise ConfigError(f"config key 'model.vocab_size': {m.vocab_size} leaves {m.vocab_size - reserved} ids "
                          f"besides {t.objective}'s {reserved} special ones (the tokenizer needs 260); use at least "
                          f"{260 + reserved}")
    if t.objective == "span_corruption" and m.seq_len < MIN_SPAN_INPUT:
        raise ConfigError(f"config key 'model.seq_len': {m.seq_len} input tokens are too short for span corruption "
                          f"(a kept span, a noise span and EOS); use at least {MIN_SPAN_INPUT}")

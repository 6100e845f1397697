"""The special tokens of encoder and encoder-decoder runs as text and ids, and how an input is framed by them.

One source for Meshtron's own input handling (`meshtron fill`, `meshtron generate --input`, via
train/seq_generate.py) and for the Hugging Face tokenizer `meshtron export --format hf` writes
(train/hf/tokenizer.py builds its post-processor template from `framing`), so both give the same ids.

- Reserved tokens: the ids an objective keeps above the tokenizer's pieces (configs/objectives.py's
  `reserved_ids`): [MASK] = vocab_size - 1 (mlm); T5's sentinels <extra_id_i> = vocab_size - 1 - i
  (span_corruption, as train/data/objectives.py writes them: extra_id_0 at the highest id, as in T5).
  Ids between the tokenizer's pieces and the reserved ones (a tokenizer trained to fewer pieces) are
  named <unused_ID>.
- Framing: the control tokens around one input: BERT's [CLS] text [SEP] (Meshtron's <s> text </s>),
  T5's text </s>; decoders add none.
"""

from __future__ import annotations

from meshtron.configs.errors import UserError
from meshtron.configs.objectives import reserved_ids

MASK_TEXT = "[MASK]"
BOS, EOS = "bos", "eos"
# objective -> (roles before the text, roles after it)
FRAMING = {"mlm": ((BOS,), (EOS,)), "span_corruption": ((), (EOS,))}


def mask_id(vocab_size: int) -> int:
    """The [MASK] id of an mlm run with `vocab_size` ids."""
    return vocab_size - 1


def sentinel_id(i: int, vocab_size: int) -> int:
    """The id of <extra_id_i> in a span-corruption run with `vocab_size` ids."""
    return vocab_size - 1 - i


def sentinel_text(i: int) -> str:
    return f"<extra_id_{i}>"


def unused_text(token_id: int) -> str:
    """The name of an id that is neither a tokenizer piece nor reserved by the objective."""
    return f"<unused_{token_id}>"


def reserved_tokens(objective: str, vocab_size: int) -> dict[int, str]:
    """id -> text of the ids `objective` reserves at the top of the vocabulary (none for decoders)."""
    if objective == "mlm":
        return {mask_id(vocab_size): MASK_TEXT}
    if objective == "span_corruption":
        return {sentinel_id(i, vocab_size): sentinel_text(i) for i in range(reserved_ids(objective))}
    return {}


def reserved_above(objective: str, vocab_size: int, tokenizer_size: int) -> dict[int, str]:
    """id -> text of every id from the tokenizer's last to `vocab_size`: the objective's reserved tokens and
    <unused_ID> between them and the tokenizer's pieces ({} for an objective that reserves none)."""
    reserved = reserved_tokens(objective, vocab_size)
    if not reserved:
        return {}
    if tokenizer_size + len(reserved) > vocab_size:
        raise UserError(f"the tokenizer has {tokenizer_size} ids; with {objective}'s {len(reserved)} special ids "
                        f"they do not fit model.vocab_size={vocab_size}")
    return {i: reserved.get(i, unused_text(i)) for i in range(tokenizer_size, vocab_size)}


def framing(objective: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The roles ("bos", "eos") of the control tokens before and after one input of `objective`."""
    return FRAMING.get(objective, ((), ()))


def frame(ids: list[int], objective: str, bos_id: int | None, eos_id: int | None) -> list[int]:
    """`ids` with the objective's control tokens around them: [bos] ids [eos] (mlm), ids [eos] (span_corruption)."""
    role = {BOS: bos_id, EOS: eos_id}
    before, after = framing(objective)
    missing = [r for r in before + after if role[r] is None]
    if missing:
        raise UserError(f"the tokenizer has no {missing[0].upper()} token, which a {objective} input is framed with")
    return [role[r] for r in before] + list(ids) + [role[r] for r in after]

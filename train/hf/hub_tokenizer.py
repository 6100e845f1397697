"""A run's Hugging Face tokenizer.json (a hub tokenizer: BERT's WordPiece, T5's Unigram, a byte-level BPE)
exported for an encoder (mlm) or encoder-decoder (span_corruption) run, with the run's special tokens.

A run reserves the objective's ids above the tokenizer's own (train/data/special_tokens.py): [MASK] =
model.vocab_size - 1, <extra_id_i> = model.vocab_size - 1 - i, and names the ids between <unused_ID>; it
reads those texts in text as those ids, and the tokenizer's own special tokens ([CLS], [SEP], </s>, ...)
as theirs (train/seq_generate.py's SpecialText, for `meshtron fill` and `meshtron generate --input`). The
export does the same: the reserved tokens become special tokens at the run's ids, the post-processor frames
an input as the run does (BERT's [CLS] text [SEP] with the run's BOS and EOS, T5's text </s>), and
tokenizer_config.json names the mask, cls, sep and pad tokens and the sentinels.

A hub tokenizer with a reserved text of its own at another id (BERT's [MASK] is 103, T5's <extra_id_0>
32099): one text cannot be two ids, and the run reads that text as its own id, so the tokenizer's entry is
renamed <unused_ID> in the export (as in the run: SpecialText names it so). A piece BPE merges build cannot
be renamed without changing how text is split: that export is refused in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from meshtron.configs.errors import UserError
from meshtron.train.data import special_tokens
from meshtron.train.data.objectives import PAD_ID
from meshtron.train.data.special_tokens import MASK_TEXT


def hub_tokenizer_json(path: Path, objective: str, vocab_size: int, bos_id: int | None, eos_id: int | None):
    """The `tokenizers.Tokenizer` of `path` with the run's reserved tokens at its ids and its framing."""
    from tokenizers import AddedToken, Tokenizer

    from meshtron.train.hf.tokenizer import post_processor

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    hub = Tokenizer.from_str(json.dumps(data))
    size = hub.get_vocab_size(with_added_tokens=True)
    reserved = special_tokens.reserved_above(objective, vocab_size, size)
    for token_id, text in reserved.items():
        own = hub.token_to_id(text)
        if own is not None and own != token_id:
            _rename(data, own, text, special_tokens.unused_text(own), path)
    tokenizer = Tokenizer.from_str(json.dumps(data))
    tokenizer.add_special_tokens([AddedToken(reserved[i], normalized=False, special=True) for i in sorted(reserved)])
    for token_id, text in reserved.items():
        if tokenizer.token_to_id(text) != token_id:
            raise UserError(f"{path}: its ids are not 0..{size - 1} without gaps, so {text} cannot be given the run's "
                            f"id {token_id}; export with a tokenizer whose ids are contiguous")
    roles = {special_tokens.BOS: bos_id, special_tokens.EOS: eos_id}
    before, after = special_tokens.framing(objective)
    missing = [role for role in before + after if roles[role] is None]
    if missing:
        raise UserError(f"{path} has no {missing[0].upper()} token, which frames a {objective} input; name it as "
                        f"{missing[0]}_token in tokenizer_config.json beside it (BERT: [CLS] and [SEP])")
    tokenizer.post_processor = post_processor(
        objective, {role: (tokenizer.id_to_token(roles[role]), roles[role]) for role in before + after})
    return tokenizer


def _rename(data: dict, token_id: int, old: str, new: str, path: Path) -> None:
    """Rename token `token_id` of a tokenizer.json's model vocabulary and added tokens from `old` to `new`."""
    model = data.get("model") or {}
    vocab = model.get("vocab")
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in model.get("merges") or []]
    if any(old in (*pair, "".join(pair)) for pair in pairs):
        raise UserError(f"{path}: its BPE merges build {old!r} (id {token_id}), which this run reads as its own id; "
                        "train with a tokenizer.json that has no such piece, or Meshtron's own (data.tokenizer='')")
    if isinstance(vocab, list) and token_id < len(vocab):  # Unigram: [piece, score] per id
        vocab[token_id][0] = new
    elif isinstance(vocab, dict) and vocab.get(old) == token_id:  # WordPiece, WordLevel, BPE: piece -> id
        vocab[new] = vocab.pop(old)
    for added in data.get("added_tokens") or []:
        if added.get("id") == token_id:
            added["content"] = new


def special_names(tokenizer, exported, objective: str, vocab_size: int) -> dict:
    """tokenizer_config.json's tokens: BOS / EOS / UNK / PAD (id 0, as the exported models pad), and for mlm
    [MASK] with BERT's cls / sep as the run's BOS / EOS; for span_corruption the sentinels, extra_id_0 first."""
    names = {**tokenizer.special_tokens(), "unk_token": unk_token(exported), "pad_token": exported.id_to_token(PAD_ID)}
    if objective == "mlm":
        names.update(cls_token=names.get("bos_token"), sep_token=names["eos_token"], mask_token=MASK_TEXT)
    if objective == "span_corruption":
        sentinels = special_tokens.reserved_tokens(objective, vocab_size)
        names["additional_special_tokens"] = [sentinels[i] for i in sorted(sentinels, reverse=True)]
    return names


def unk_token(exported) -> str | None:
    """The unknown token of an exported `tokenizers.Tokenizer` (WordPiece / BPE name it, Unigram gives its id)."""
    model = json.loads(exported.to_str()).get("model") or {}
    if model.get("unk_token"):
        return model["unk_token"]
    unk_id = model.get("unk_id")
    return exported.id_to_token(unk_id) if isinstance(unk_id, int) else None


def write_hub_tokenizer(tokenizer, out_dir: Path, model_max_length: int, objective: str,
                        vocab_size: int) -> list[Path]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json of an mlm or span_corruption run whose
    tokenizer is a Hugging Face tokenizer.json (`tokenizer`: train/data/tokenizer.py's Tokenizer)."""
    from meshtron.train.hf.tokenizer import write_tokenizer_config

    exported = hub_tokenizer_json(tokenizer.path, objective, vocab_size, tokenizer.bos_id, tokenizer.eos_id)
    path = Path(out_dir) / "tokenizer.json"
    exported.save(str(path))
    names = special_names(tokenizer, exported, objective, vocab_size)
    return [path, *write_tokenizer_config(out_dir, names, model_max_length, objective)]

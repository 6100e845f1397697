"""SentencePiece BPE tokenizer, trained by Meshtron on the run's own text, lossless.

Lossless means `decode(encode(text)) == text` for any text, code indentation included:
identity normalisation (no whitespace rewriting), whitespace-only pieces allowed, and
byte fallback for characters the vocabulary lacks. Ids: 0 <unk>, 1 <s>, 2 </s> (EOS,
which separates documents).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from meshtron.configs.loader import UserError

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
TRAINER_OPTIONS = dict(
    model_type="bpe",
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_digits=True,
    character_coverage=0.9995,
    unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
    max_sentence_length=16384,
    hard_vocab_limit=False,  # a small corpus may not support the requested size; the model is checked against it
    shuffle_input_sentence=True,
    minloglevel=2,
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: Path, max_chars: int) -> "Tokenizer":
    """Train a BPE vocabulary of at most `vocab_size` pieces on up to `max_chars` characters of `texts`."""
    if vocab_size < 260:
        raise UserError(f"config key 'model.vocab_size': {vocab_size} is too small for a byte-fallback "
                        "tokenizer (256 bytes + specials); use at least 260")

    def lines():
        budget = max_chars
        for text in texts:
            for line in text.split("\n"):
                if line:
                    yield line
                    budget -= len(line) + 1
            if budget <= 0:
                return

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=lines(), model_writer=model, vocab_size=vocab_size,
                                       num_threads=2, **TRAINER_OPTIONS)
    except RuntimeError as e:
        raise UserError(f"could not train a tokenizer on data.source: {str(e).splitlines()[-1]}") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(path)
    return Tokenizer(path)


class Tokenizer:
    """A trained SentencePiece model: encode, decode, special ids."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.path.read_bytes())
        except OSError as e:
            raise UserError(f"cannot read tokenizer {self.path}: {e.strerror or e}") from None
        except RuntimeError:
            raise UserError(f"{self.path} is not a SentencePiece model (corrupt or wrong file)") from None

    @property
    def vocab_size(self) -> int:
        """Number of pieces (ids are 0 .. vocab_size-1)."""
        return self.sp.get_piece_size()

    eos_id = EOS_ID
    bos_id = BOS_ID

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no BOS/EOS added)."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once (multi-threaded)."""
        return self.sp.encode(texts, num_threads=2)

    def decode(self, ids) -> str:
        """Ids -> text; exact inverse of encode."""
        return self.sp.decode([int(i) for i in ids])

    def model_bytes(self) -> bytes:
        """The serialized model (what is saved beside checkpoints)."""
        return self.path.read_bytes()

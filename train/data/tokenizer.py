"""Tokenizers: a SentencePiece BPE model trained by Meshtron on the run's own text (lossless),
or a Hugging Face `tokenizer.json` of an imported model, behind one interface.

Lossless means `decode(encode(text)) == text` for any text, code indentation included:
identity normalisation (no whitespace rewriting), whitespace-only pieces allowed, and
byte fallback for characters the vocabulary lacks. Ids: 0 <unk>, 1 <s>, 2 </s> (EOS,
which separates documents).

A run directory holds its tokenizer as `tokenizer.model` (SentencePiece) or `tokenizer.json`
(Hugging Face, with `tokenizer_config.json` beside it naming the EOS and BOS tokens).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from meshtron.configs.errors import UserError

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SENTENCEPIECE_FILE, HF_FILE = "tokenizer.model", "tokenizer.json"
HF_SPECIALS_FILE = "tokenizer_config.json"  # beside tokenizer.json: {"eos_token": ..., "bos_token": ...}
# Used when no tokenizer_config.json names them: GPT-2, Llama 1/2, Llama 3, Gemma
KNOWN_EOS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
KNOWN_BOS = ("<|endoftext|>", "<s>", "<|begin_of_text|>", "<bos>")
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


LINE_PIECE_CHARS = 4096


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: Path, max_chars: int) -> "Tokenizer":
    """Train a BPE vocabulary of at most `vocab_size` pieces on up to `max_chars` characters of `texts`."""
    if vocab_size < 260:
        raise UserError(f"config key 'model.vocab_size': {vocab_size} is too small for a byte-fallback "
                        "tokenizer (256 bytes + specials); use at least 260")

    def lines():
        budget = max_chars
        for text in texts:
            for line in text.split("\n"):
                # SentencePiece skips sentences over max_sentence_length: cut giant lines (minified files,
                # one-line corpora) into pieces, or they would teach it nothing
                for start in range(0, len(line), LINE_PIECE_CHARS):
                    piece = line[start:start + LINE_PIECE_CHARS]
                    yield piece
                    budget -= len(piece) + 1
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


class _SentencePiece:
    """A SentencePiece model (Meshtron's own, or one shipped with a Hugging Face model)."""

    file_name = SENTENCEPIECE_FILE

    def __init__(self, path: Path, data: bytes):
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError:
            raise UserError(f"{path} is not a SentencePiece model (corrupt or wrong file)") from None
        self.vocab_size = self.sp.get_piece_size()
        self.eos_id, self.bos_id = _id_or_none(self.sp.eos_id()), _id_or_none(self.sp.bos_id())

    def encode(self, texts):
        return self.sp.encode(texts, num_threads=2)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def token(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)

    def control_tokens(self) -> dict[str, int]:
        return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)
                if self.sp.is_control(i) or self.sp.is_unknown(i)}


class _HuggingFace:
    """A `tokenizers` tokenizer from tokenizer.json (data only: nothing in it is executed)."""

    file_name = HF_FILE

    def __init__(self, path: Path, data: bytes):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.hf = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # the Rust parser's errors carry no useful class
            raise UserError(f"{path} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:120]})") from None
        # documents are encoded whole (no truncation or padding); text never turns into special tokens,
        # as with SentencePiece: EOS comes only from the data pipeline
        self.hf.no_truncation()
        self.hf.no_padding()
        self.hf.encode_special_tokens = True
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        specials = _read_specials(path.with_name(HF_SPECIALS_FILE))
        self.eos_id = self._special_id(specials.get("eos_token"), KNOWN_EOS)
        self.bos_id = self._special_id(specials.get("bos_token"), KNOWN_BOS)

    def _special_id(self, named: str | None, known: tuple[str, ...]) -> int | None:
        for token in ([named] if named else []) + list(known):
            token_id = self.hf.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    def encode(self, texts):
        if isinstance(texts, str):
            return self.hf.encode(texts, add_special_tokens=False).ids
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)  # SentencePiece drops control tokens too

    def token(self, token_id: int) -> str:
        return self.hf.id_to_token(token_id)

    def control_tokens(self) -> dict[str, int]:
        # its special tokens ([CLS], [SEP], [PAD], </s>, ...): what an encoder run's exported copy reads in text
        return {t.content: i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}


def _id_or_none(token_id: int) -> int | None:
    return token_id if token_id >= 0 else None


def _read_specials(path: Path) -> dict[str, str]:
    """{"eos_token": "</s>", ...} from a Hugging Face tokenizer_config.json (a token may be {"content": ...})."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not readable JSON; fix or remove it") from None
    out = {}
    for key in ("eos_token", "bos_token"):
        value = raw.get(key) if isinstance(raw, dict) else None
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


class Tokenizer:
    """A SentencePiece model or a Hugging Face tokenizer.json (told apart by content): encode, decode, special ids."""

    def __init__(self, path: str | Path, eos_id: int | None = None, bos_id: int | None = None):
        """Load `path`; `eos_id` / `bos_id` override the special ids the file itself gives."""
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read tokenizer {self.path}: {e.strerror or e}") from None
        # a tokenizer.json is a JSON object; a SentencePiece model is a protobuf, which never starts with "{"
        is_json = data.lstrip()[:1] == b"{"
        self._impl = _HuggingFace(self.path, data) if is_json else _SentencePiece(self.path, data)
        self.eos_id = self._impl.eos_id if eos_id is None else eos_id
        self.bos_id = self._impl.bos_id if bos_id is None else bos_id
        for name, token_id in (("EOS", self.eos_id), ("BOS", self.bos_id)):
            if token_id is not None and not 0 <= token_id < self.vocab_size:
                raise UserError(f"tokenizer {self.path}: {name} id {token_id} is outside its {self.vocab_size} ids")
        if self.eos_id is None:
            raise UserError(f"tokenizer {self.path} has no end-of-text (EOS) token, which separates documents; for a "
                            f"tokenizer.json, name it as eos_token in {HF_SPECIALS_FILE} beside it")

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> "Tokenizer":
        """The tokenizer a run directory holds: tokenizer.model (SentencePiece) or tokenizer.json."""
        for name in (SENTENCEPIECE_FILE, HF_FILE):
            if (Path(run_dir) / name).is_file():
                return cls(Path(run_dir) / name)
        raise UserError(f"{run_dir} has no {SENTENCEPIECE_FILE} or {HF_FILE}; is it a Meshtron run directory?")

    @property
    def kind(self) -> str:
        """Which library reads it: sentencepiece, or huggingface (the `tokenizers` library)."""
        return "huggingface" if isinstance(self._impl, _HuggingFace) else "sentencepiece"

    @property
    def file_name(self) -> str:
        """Its name in a run directory: tokenizer.model or tokenizer.json."""
        return self._impl.file_name

    @property
    def vocab_size(self) -> int:
        """Number of ids (0 .. vocab_size-1)."""
        return self._impl.vocab_size

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no BOS/EOS added)."""
        return self._impl.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once (multi-threaded)."""
        return self._impl.encode(list(texts))

    def decode(self, ids) -> str:
        """Ids -> text; the inverse of encode (special tokens are dropped)."""
        return self._impl.decode([int(i) for i in ids])

    def token(self, token_id: int) -> str:
        """The piece of one id as the vocabulary writes it ("▁def", "<s>")."""
        return self._impl.token(int(token_id))

    def control_tokens(self) -> dict[str, int]:
        """text -> id of the SentencePiece control and unknown pieces (<unk>, <s>, </s>), or a tokenizer.json's
        special tokens ([CLS], [SEP], </s>, ...): the exported tokenizer of an encoder or encoder-decoder run reads
        them in text as those tokens, as BERT's and T5's do (a decoder run's reads them as text)."""
        return self._impl.control_tokens()

    def model_bytes(self) -> bytes:
        """The serialized tokenizer file (what is saved beside and inside checkpoints)."""
        return self.path.read_bytes()

    def save_to(self, directory: str | Path) -> list[Path]:
        """Write this tokenizer into a run directory as `file_name` (a tokenizer.json with its EOS/BOS
        tokens in tokenizer_config.json beside it); returns the paths written."""
        directory = Path(directory)
        written = [directory / self.file_name]
        written[0].write_bytes(self.model_bytes())
        if self.kind == "huggingface":
            written.append(directory / HF_SPECIALS_FILE)
            written[1].write_text(json.dumps(self.special_tokens(), indent=2, ensure_ascii=False) + "\n",
                                  encoding="utf-8")
        return written

    def special_tokens(self) -> dict[str, str]:
        """{"eos_token": text, "bos_token": text} as Hugging Face names them (BOS left out if there is none)."""
        ids = {"eos_token": self.eos_id, "bos_token": self.bos_id}
        return {k: self._impl.token(i) for k, i in ids.items() if i is not None}

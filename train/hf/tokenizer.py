"""A Meshtron SentencePiece model -> Hugging Face `tokenizer.json` with the same ids.

SentencePiece BPE encodes by repeatedly merging the adjacent pair whose concatenation is the
vocabulary piece of highest score. A `tokenizers` BPE model does the same when every split
(left, right) of a piece is a merge ranked by that piece's score, so the merges are derived
from the piece scores. The rest mirrors SentencePiece's pipeline: the normalizer adds the
dummy "▁" prefix and writes spaces as "▁", there is no pre-tokenizer (SentencePiece's BPE
encodes the whole string, so pieces may span spaces), and characters outside the vocabulary
become <0xNN> byte pieces. Control pieces (<s>, </s>) and <unk> are special tokens that the
tokenizer never matches in text (`split_special_tokens`), as SentencePiece does.

Encoder (mlm) and encoder-decoder (span_corruption) runs export the model's whole vocabulary: the
objective's reserved ids ([MASK]; the sentinels <extra_id_N>, extra_id_0 highest) are special tokens at
Meshtron's ids (any ids between the pieces and them are <unused_ID>, never produced from text), a
TemplateProcessing post-processor frames an input as train/data/special_tokens.py's `framing` says
(<s> text </s> as BERT's [CLS] text [SEP]; T5's text </s>), and special tokens in text are read as
such, as BERT's and T5's tokenizers and `meshtron fill` / `meshtron generate --input` do.

Known difference: when the same piece can be formed at two overlapping places by two
different splits (symbols "a", "aa", "a" with piece "aaa"), SentencePiece merges the leftmost
and `tokenizers` the split ranked first. tests/test_hf_tokenizer.py finds no difference on
held-out Python source (5 files, 3,000+ lines) and unicode/whitespace edge cases.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import sentencepiece as spm

from meshtron.configs.errors import UserError
from meshtron.train.data import special_tokens
from meshtron.train.data.objectives import PAD_ID
from meshtron.train.data.special_tokens import MASK_TEXT
from meshtron.train.data.tokenizer import Tokenizer

SPACE = "\u2581"  # "▁", SentencePiece's visible space


def _model_proto(sp_model_path: Path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # it needs protobuf
        raise UserError("reading a SentencePiece model's settings needs protobuf: pip install protobuf") from None
    try:
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(Path(sp_model_path).read_bytes())
        spm.SentencePieceProcessor(model_proto=proto.SerializeToString())  # rejects a non-model file
    except OSError as e:
        raise UserError(f"cannot read tokenizer {sp_model_path}: {e.strerror or e}") from None
    except Exception:
        raise UserError(f"{sp_model_path} is not a SentencePiece model (corrupt or wrong file)") from None
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != spec.BPE or not spec.byte_fallback:
        raise UserError(f"{sp_model_path}: only BPE SentencePiece models with byte fallback (as Meshtron trains) "
                        "convert to Hugging Face; retrain the tokenizer with meshtron")
    if norm.precompiled_charsmap or norm.remove_extra_whitespaces or spec.treat_whitespace_as_suffix:
        raise UserError(f"{sp_model_path}: only identity normalisation (as Meshtron trains) converts exactly "
                        "to Hugging Face; retrain the tokenizer with meshtron")
    return proto


def bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Merges in rank order for `(piece, score, type)` entries of a SentencePiece BPE model:
    every split of a normal piece into two normal pieces, ranked by the piece's score (high first)."""
    normal = {p: i for i, (p, _, kind) in enumerate(pieces) if kind == 1}
    ranked = []
    for piece, piece_id in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-pieces[piece_id][1], piece_id, normal[left], normal[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_hf_tokenizer(sp_model_path: Path, objective: str = "causal", vocab_size: int | None = None):
    """The `tokenizers.Tokenizer` that reproduces the SentencePiece model's ids and decoding. For an mlm or
    span_corruption run (`vocab_size` ids in all), the objective's reserved tokens ([MASK], <extra_id_N>) are
    special tokens at Meshtron's ids and the post-processor frames an input as Meshtron does."""
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    except ImportError:
        raise UserError("exporting a tokenizer needs the `tokenizers` package: pip install tokenizers") from None
    proto = _model_proto(sp_model_path)
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    unk = pieces[proto.trainer_spec.unk_id][0]
    vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
    reserved = _reserved(objective, vocab_size, vocab)
    vocab.update({text: i for i, text in reserved.items()})
    model = models.BPE(vocab=vocab, merges=bpe_merges(pieces), unk_token=unk, fuse_unk=True, byte_fallback=True)
    tokenizer = Tokenizer(model)
    norm = proto.normalizer_spec
    steps = []
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    tokenizer.normalizer = normalizers.Sequence(steps)
    decode_steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode_steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    # SentencePiece types: 2 unknown, 3 control; then the objective's tokens (not the <unused_ID> fillers)
    specials = [p for p, _, kind in pieces if kind in (2, 3)]
    if reserved:
        specials += [text for _, text in sorted(special_tokens.reserved_tokens(objective, vocab_size).items())]
    tokenizer.add_special_tokens([AddedToken(p, normalized=False, special=True) for p in specials])
    if reserved:
        tokenizer.post_processor = post_processor(objective, {role: _role_token(proto, role)
                                                              for role in (special_tokens.BOS, special_tokens.EOS)})
    return tokenizer


def _reserved(objective: str, vocab_size: int | None, vocab: dict[str, int]) -> dict[int, str]:
    """id -> text of every id above the tokenizer's pieces: the objective's tokens and <unused_ID> fillers."""
    if vocab_size is None:
        return {}
    out = special_tokens.reserved_above(objective, vocab_size, len(vocab))
    taken = [text for text in out.values() if text in vocab]
    if taken:
        raise UserError(f"the tokenizer has a piece {taken[0]!r}, the text of a {objective} special token; "
                        "retrain the tokenizer")
    return out


def post_processor(objective: str, tokens: dict[str, tuple[str, int]]):
    """The TemplateProcessing that frames one input as special_tokens.framing says (BERT: <s> $A </s>, T5:
    $A </s>) and a pair as BERT and T5 do (the first framed, the second followed by the closing tokens);
    `tokens`: role -> (text, id)."""
    from tokenizers import processors

    before, after = special_tokens.framing(objective)
    single = [f"{tokens[r][0]}:0" for r in before] + ["$A:0"] + [f"{tokens[r][0]}:0" for r in after]
    pair = single + ["$B:1"] + [f"{tokens[r][0]}:1" for r in after]
    used = dict(tokens[r] for r in before + after)
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(used.items()))


def _role_token(proto, role: str) -> tuple[str, int]:
    token_id = getattr(proto.trainer_spec, f"{role}_id")
    if not 0 <= token_id < len(proto.pieces):
        raise UserError(f"the tokenizer has no {role.upper()} piece, which frames the model's input")
    return proto.pieces[token_id].piece, token_id


def _special(proto, which: str) -> str | None:
    token_id = getattr(proto.trainer_spec, f"{which}_id")
    return proto.pieces[token_id].piece if 0 <= token_id < len(proto.pieces) else None


def write_hf_tokenizer(sp_model_path: Path, out_dir: Path, model_max_length: int, objective: str = "causal",
                       vocab_size: int | None = None) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`
    (loads with AutoTokenizer as a PreTrainedTokenizerFast); returns the paths written. An mlm run's tokenizer
    names [MASK] its mask_token and <s> / </s> its cls / sep tokens; a span_corruption run's lists the
    sentinels as additional special tokens; both pad with id 0, as the exported models do."""
    proto = _model_proto(sp_model_path)
    tokenizer_path = Path(out_dir) / "tokenizer.json"
    build_hf_tokenizer(sp_model_path, objective, vocab_size).save(str(tokenizer_path))
    special = {f"{w}_token": _special(proto, w) for w in ("bos", "eos", "unk", "pad")}
    framed = vocab_size is not None and objective in special_tokens.FRAMING
    if framed:
        special["pad_token"] = proto.pieces[PAD_ID].piece
    if framed and objective == "mlm":
        special.update(cls_token=special["bos_token"], sep_token=special["eos_token"], mask_token=MASK_TEXT)
    if framed and objective == "span_corruption":
        sentinels = special_tokens.reserved_tokens(objective, vocab_size)
        special["additional_special_tokens"] = [sentinels[i] for i in sorted(sentinels, reverse=True)]
    written = write_tokenizer_config(out_dir, special, model_max_length, objective if framed else None)
    return [tokenizer_path, *written]


def write_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int, objective: str = "causal",
                    vocab_size: int | None = None) -> list[Path]:
    """The Hugging Face tokenizer files of a run's tokenizer: converted from SentencePiece (whose model is
    copied too, as tokenizer.model, for a lossless import), or a tokenizer.json copied as it is. The tokenizer
    of an mlm or span_corruption run with `vocab_size` ids gains the objective's special tokens and framing
    (a tokenizer.json through train/hf/hub_tokenizer.py)."""
    out_dir = Path(out_dir)
    if tokenizer.kind != "sentencepiece" and vocab_size is not None and objective in special_tokens.FRAMING:
        from meshtron.train.hf.hub_tokenizer import write_hub_tokenizer

        return write_hub_tokenizer(tokenizer, out_dir, model_max_length, objective, vocab_size)
    if tokenizer.kind == "sentencepiece":
        written = write_hf_tokenizer(tokenizer.path, out_dir, model_max_length, objective, vocab_size)
        shutil.copyfile(tokenizer.path, out_dir / "tokenizer.model")
        return [*written, out_dir / "tokenizer.model"]
    shutil.copyfile(tokenizer.path, out_dir / "tokenizer.json")
    return [out_dir / "tokenizer.json", *write_tokenizer_config(out_dir, tokenizer.special_tokens(),
                                                                model_max_length)]


def write_tokenizer_config(out_dir: Path, special: dict, model_max_length: int,
                           framed_objective: str | None = None) -> list[Path]:
    """tokenizer_config.json and special_tokens_map.json naming `special`'s tokens (for a framed objective, with
    its special-token behaviour); used by the SentencePiece and the hub tokenizer.json exports alike."""
    special = {k: v for k, v in special.items() if v is not None}
    if framed_objective is None:
        behaviour = {
            # Meshtron trains without BOS (documents are separated by EOS), so prompts get none either
            "add_bos_token": False,
            "add_eos_token": False,
            # Meshtron never reads "<s>" or "<|endoftext|>" in text as the control token; neither does this tokenizer
            "split_special_tokens": True,
        }
    else:
        # BERT / T5: tokenizer.json's post-processor frames the input (transformers would replace it if
        # add_bos_token / add_eos_token were set), and special tokens in text are read as such, [MASK] included
        behaviour = {"split_special_tokens": False}
        if framed_objective == "span_corruption":
            behaviour["model_input_names"] = ["input_ids", "attention_mask"]  # T5 takes no token_type_ids
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        **behaviour,
        "clean_up_tokenization_spaces": False,  # decoding is exact: keep " ." and " 's" as written
        **special,
    }
    written = [Path(out_dir) / "tokenizer_config.json", Path(out_dir) / "special_tokens_map.json"]
    written[0].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written[1].write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return written

"""SentencePiece -> Hugging Face tokenizer.json: the same ids and the same text back."""

import sysconfig
from pathlib import Path

import pytest

from meshtron.configs.errors import UserError
from meshtron.train.hf.tokenizer import bpe_merges, build_hf_tokenizer, write_hf_tokenizer
from meshtron.train.data.tokenizer import Tokenizer

pytest.importorskip("tokenizers")

from hf_helpers import HELD_OUT  # noqa: E402

# Text the tokenizer never saw: unicode, tabs, blank lines, leading spaces, literal special tokens.
EDGE_CASES = [
    "", " ", "  ", "\t", "\n", " \n \n", "\tx = 1", "    return x", "   leading", "trailing   ", "a\n\n\nb",
    "a  b   c    d", "héllo wörld — ünïcödé 日本語 😀", "<s> </s> <unk> x</s>", "\u00a0nbsp\u2003em",
    "\r\nline\r\n", "12345 67.89e-10 0x1F", "\x00\x01\x7f", "def f(a,\tb):\n\tif a:\n\t\treturn 'λ → ∞'\n\n\n", "x" * 500,
]


@pytest.fixture(scope="module")
def held_out() -> list[str]:
    """Held-out Python source, as whole files and as lines, plus the edge cases."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [(root / name).read_text(encoding="utf-8") for name in HELD_OUT]
    return files + [line for f in files for line in f.split("\n")] + EDGE_CASES


@pytest.fixture(scope="module")
def auto_tokenizer(sp_model, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("hf_tok")
    write_hf_tokenizer(sp_model, out, model_max_length=32)
    return transformers.AutoTokenizer.from_pretrained(out)


def test_ids_equal_sentencepiece_on_held_out_text(sp_model, held_out, auto_tokenizer):
    sp = Tokenizer(sp_model)
    mismatched = [t for t in held_out if auto_tokenizer.encode(t, add_special_tokens=False) != sp.encode(t)]
    assert not mismatched, f"{len(mismatched)} of {len(held_out)} texts differ, first: {mismatched[0][:80]!r}"


def test_decode_gives_the_text_back(sp_model, held_out, auto_tokenizer):
    sp = Tokenizer(sp_model)
    for text in held_out:
        ids = sp.encode(text)
        assert auto_tokenizer.decode(ids) == sp.decode(ids) == text


def test_auto_tokenizer_adds_no_bos_and_knows_specials(sp_model, auto_tokenizer):
    assert type(auto_tokenizer).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")
    assert auto_tokenizer.encode("def f():", add_special_tokens=True) == auto_tokenizer.encode(
        "def f():", add_special_tokens=False)
    assert (auto_tokenizer.bos_token_id, auto_tokenizer.eos_token_id, auto_tokenizer.unk_token_id) == (1, 2, 0)
    assert len(auto_tokenizer) == Tokenizer(sp_model).vocab_size


def test_merges_are_every_split_ranked_by_piece_score():
    # (piece, score, type): 1 normal, 3 control; "ab" outranks "abc", which has two splits
    pieces = [("<s>", 0.0, 3), ("ab", -1.0, 1), ("bc", -2.0, 1), ("abc", -3.0, 1),
              ("a", -4.0, 1), ("b", -5.0, 1), ("c", -6.0, 1)]
    assert bpe_merges(pieces) == [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]


def test_tokenizer_json_round_trips_through_the_tokenizers_library(sp_model, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    build_hf_tokenizer(sp_model).save(str(tmp_path / "tokenizer.json"))
    reloaded = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert reloaded.encode("  if x:\n\treturn 1").ids == Tokenizer(sp_model).encode("  if x:\n\treturn 1")


def test_a_file_that_is_not_sentencepiece_is_refused(tmp_path):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        write_hf_tokenizer(bogus, tmp_path, model_max_length=32)


@pytest.mark.parametrize("objective", ["mlm", "span_corruption"])
def test_encoder_tokenizers_carry_special_tokens_and_frame_as_meshtron(objective, sp_model, held_out, tmp_path):
    transformers = pytest.importorskip("transformers")
    from meshtron.configs.objectives import reserved_ids
    from meshtron.train.data import special_tokens
    from meshtron.train.seq_generate import SpecialText

    sp = Tokenizer(sp_model)
    vocab_size = sp.vocab_size + 3 + reserved_ids(objective)  # 3 ids are neither pieces nor reserved
    write_hf_tokenizer(sp_model, tmp_path, model_max_length=32, objective=objective, vocab_size=vocab_size)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = SpecialText(sp, vocab_size, objective)
    reserved = special_tokens.reserved_tokens(objective, vocab_size)
    assert len(tok) == vocab_size and tok.pad_token_id == 0
    assert tok.convert_ids_to_tokens(sorted(reserved)) == [reserved[i] for i in sorted(reserved)]
    assert tok.convert_ids_to_tokens(sp.vocab_size) == f"<unused_{sp.vocab_size}>"
    if objective == "mlm":
        assert (tok.mask_token_id, tok.cls_token_id, tok.sep_token_id) == (vocab_size - 1, sp.bos_id, sp.eos_id)
        specials = ["def [MASK](x): [MASK]", "[MASK]", "a[MASK]b <s> </s>x<unk>"]
    else:
        assert tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [vocab_size - 1, vocab_size - 100]
        specials = ["def f(<extra_id_0>): <extra_id_1>", "<extra_id_99><extra_id_100>", "x </s> y"]
    texts = held_out[:5] + held_out[5:400] + EDGE_CASES
    for text in texts + specials:
        assert tok(text)["input_ids"] == ours.frame(text), text[:80]
    for text in specials:
        ids = ours.frame(text)
        assert tok.decode(ids) == ours.decode(ids)
    for text in [t for t in texts if not any(s in t for s in ours.ids)]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text)

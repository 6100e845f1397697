"""SentencePiece tokenizer trained by Meshtron: lossless on code, tabs, unicode, blank lines."""

import pytest

from meshtron.configs import UserError
from meshtron.train.data.tokenizer import EOS_ID, Tokenizer, train_tokenizer

SAMPLES = [
    "def f(x):\n\tif x:\n\t\treturn  x  \n\n\n    pass\n",
    "class A:\n    def __init__(self):\n        self.x = {'k': [1, 2, 3]}  # comment\n",
    "unicode: héllo wörld — 日本語 🚀 ∑ λ\n",
    "\n\n\nblank lines\n\n\n",
    "  leading spaces and trailing spaces   ",
    "\t\ttabs\tinside\t",
    "mixed\r\nline\rendings\n",
    "",
    " ",
    "x" * 5000,
]


@pytest.fixture(scope="module")
def tokenizer(text_corpus, tmp_path_factory):
    texts = [p.read_text() for p in sorted(text_corpus.iterdir())]
    return train_tokenizer(texts, 512, tmp_path_factory.mktemp("tok") / "t.model", 300_000)


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_of_encode_is_the_original_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_indentation_is_kept_as_tokens(tokenizer):
    ids = tokenizer.encode("if x:\n        y = 1\n")
    assert "        " in tokenizer.decode(ids)
    assert len(ids) < len("if x:\n        y = 1\n")  # pieces, not characters


def test_special_ids_and_vocabulary(tokenizer):
    assert tokenizer.eos_id == EOS_ID == 2
    assert tokenizer.vocab_size <= 512
    assert EOS_ID not in tokenizer.encode("a normal line of text")


def test_reloaded_tokenizer_gives_the_same_ids(tokenizer):
    again = Tokenizer(tokenizer.path)
    assert again.encode(SAMPLES[1]) == tokenizer.encode(SAMPLES[1])


def test_a_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        Tokenizer(bad)


def test_too_small_a_vocabulary_is_refused(tmp_path):
    with pytest.raises(UserError, match="model.vocab_size"):
        train_tokenizer(["some text"], 100, tmp_path / "t.model", 1000)

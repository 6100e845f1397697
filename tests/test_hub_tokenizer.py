"""Encoder and encoder-decoder runs whose tokenizer is a Hugging Face hub tokenizer.json (data.tokenizer, or an
imported model's): the exported tokenizer carries [MASK], cls / sep / pad and the sentinels at the run's ids and
reads text as `meshtron fill` / `generate --input` do."""

import json

import pytest

from meshtron.configs.errors import UserError
from meshtron.train.data import special_tokens
from meshtron.train.data.tokenizer import Tokenizer
from meshtron.train.hf.tokenizer import write_tokenizer
from meshtron.train.seq_generate import SpecialText

from conftest import TINY
from hf_helpers import hub_tokenizer_dir

transformers = pytest.importorskip("transformers")

OBJECTIVE = {"bert": "mlm", "t5": "span_corruption"}
VOCAB = {"bert": 420, "t5": 612}  # 400 pieces (+ T5's own 100 sentinels), the run's reserved ids, unused ids between
TEXTS = {
    "bert": ["def [MASK](x): return [MASK]", "[CLS] a [SEP] b [PAD] [UNK] c", "a[MASK]b", "Hello  World\t!", ""],
    "t5": ["def f(<extra_id_0>): <extra_id_1> x </s> y", "<pad> <unk> z", "<extra_id_99><extra_id_100>", "a  b", ""],
}


@pytest.fixture(scope="module", params=["bert", "t5"])
def hub(request, text_corpus, tmp_path_factory):
    texts = [p.read_text(encoding="utf-8") for p in sorted(text_corpus.glob("*.py"))]
    return request.param, hub_tokenizer_dir(request.param, texts, tmp_path_factory.mktemp(request.param))


def test_export_gives_the_run_s_ids_for_special_tokens(hub, tmp_path):
    kind, path = hub
    objective, vocab = OBJECTIVE[kind], VOCAB[kind]
    tokenizer = Tokenizer(path)
    write_tokenizer(tokenizer, tmp_path, 64, objective, vocab)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = SpecialText(tokenizer, vocab, objective)
    for text in TEXTS[kind]:
        assert hf(text)["input_ids"] == ours.frame(text), text
    assert len(hf) == vocab and hf.pad_token_id == 0
    reserved = special_tokens.reserved_tokens(objective, vocab)
    assert hf.convert_tokens_to_ids([reserved[i] for i in sorted(reserved)]) == sorted(reserved)
    if kind == "bert":
        assert (hf.mask_token_id, hf.cls_token_id, hf.sep_token_id) == (vocab - 1, tokenizer.bos_id, tokenizer.eos_id)
        assert hf.convert_ids_to_tokens(4) == "<unused_4>"  # the hub's own [MASK]: the run reads [MASK] as 419
    else:
        assert set(reserved.values()) <= set(hf.all_special_tokens) and "token_type_ids" not in hf("x")
        assert hf.convert_ids_to_tokens(499) == "<unused_499>"  # the hub's own <extra_id_0>
        assert hf("x")["input_ids"][-1] == hf.eos_token_id == tokenizer.eos_id


def test_unrepresentable_specials_are_refused_in_one_line(hub, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models

    kind, path = hub
    if kind == "t5":  # no BOS: an mlm input cannot be framed [CLS] text [SEP]
        with pytest.raises(UserError, match="no BOS token.*bos_token in tokenizer_config.json") as err:
            write_tokenizer(Tokenizer(path), tmp_path, 64, "mlm", VOCAB["t5"])
        assert "\n" not in str(err.value)
        return
    # a BPE whose merges build "[MASK]": renaming it would change how text is split
    pieces = ["</s>", "<s>", "[", "M", "A", "S", "K", "]", "[M", "AS", "[MAS", "K]", "[MASK]"]
    merges = [("[", "M"), ("A", "S"), ("[M", "AS"), ("K", "]"), ("[MAS", "K]")]
    bpe = HFTokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges))
    bpe.add_special_tokens(["</s>", "<s>"])
    bpe.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(UserError, match="merges build '\\[MASK\\]'.*data.tokenizer") as err:
        write_tokenizer(Tokenizer(tmp_path / "tokenizer.json"), tmp_path / "out", 64, "mlm", 20)
    assert "\n" not in str(err.value)


def test_a_run_on_a_hub_tokenizer_exports_what_fill_reads(hub, text_corpus, tmp_path, meshtron_cli):
    from meshtron.configs import load_config
    from meshtron.train.run.loop import train

    kind, path = hub
    if kind == "t5":
        pytest.skip("one end-to-end run is enough: the BERT one")
    config = load_config("tiny", [*TINY, f"data.source={text_corpus}", f"data.tokenizer={path}", "model.n_layers=1",
                                  "train.steps=2", f"model.vocab_size={VOCAB[kind]}", "model.family=bert"])
    train(config, tmp_path / "run", log=lambda *a, **k: None)
    code, _, err = meshtron_cli("export", tmp_path / "run", "--format", "hf", "--out", tmp_path / "hf")
    assert code == 0, err
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = TEXTS[kind][0]
    ours = SpecialText(Tokenizer.from_run_dir(tmp_path / "run"), VOCAB[kind], "mlm")
    assert hf(text)["input_ids"] == ours.frame(text) and hf.mask_token_id == VOCAB[kind] - 1
    code, out, _ = meshtron_cli("fill", tmp_path / "run", "--text", text, "--json")
    positions = [i for i, t in enumerate(hf(text)["input_ids"]) if t == hf.mask_token_id]
    assert code == 0 and [m["position"] for m in json.loads(out)] == positions and len(positions) == 2

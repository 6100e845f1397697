"""Encoder and encoder-decoder runs end to end: train on text, `meshtron fill`, `meshtron generate --input`,
`meshtron export --format hf` loading in transformers with the run's logits, `meshtron import` back."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY
from meshtron.configs import load_config
from meshtron.train.generate import load_run
from meshtron.train.run.loop import train

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = ["model.n_layers=1", "train.steps=2", "model.vocab_size=612"]


@pytest.fixture(scope="module", params=["bert", "t5"])
def run(request, text_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    config = load_config("tiny", [*TINY, f"data.source={text_corpus}", *SMALL, f"model.family={request.param}"])
    result = train(config, root / "run", log=lambda *a, **k: None)
    return request.param, root, result


def test_training_runs_on_text(run):
    _, _, result = run
    assert len(result.losses) and all(np.isfinite(loss) for _, loss in result.losses)
    assert np.isfinite(result.eval_loss)


def test_fill_and_generate_print_json(run, meshtron_cli):
    kind, root, _ = run
    if kind == "bert":
        code, out, _ = meshtron_cli("fill", root / "run", "--text", "def [MASK](x): return [MASK]", "--top-k", "3",
                                    "--json")
        masks = json.loads(out)
        assert code == 0 and len(masks) == 2 and all(len(m["ids"]) == len(m["pieces"]) == 3 for m in masks)
        assert all(abs(sum(m["probs"]) - 1) < 1 and m["probs"] == sorted(m["probs"], reverse=True) for m in masks)
        code, _, err = meshtron_cli("fill", root / "run", "--text", "no mask here")
        assert code == 2 and "[MASK]" in err and "\n" not in err.strip()
    else:
        code, out, _ = meshtron_cli("generate", root / "run", "--input", "def f(x): <extra_id_0> x", "--temperature",
                                    "0", "--max-new-tokens", "6", "--json")
        result = json.loads(out)
        assert code == 0 and set(result) == {"text", "tokens"} and len(result["tokens"]) <= 6


def test_export_matches_transformers_and_imports_back(run, meshtron_cli):
    kind, root, _ = run
    code, _, err = meshtron_cli("export", root / "run", "--format", "hf", "--out", root / "hf")
    assert code == 0, err
    model, _, config, _ = load_run(root / "run")
    tokens = np.random.default_rng(0).integers(3, 500, (2, 20))
    with torch.no_grad():
        if kind == "bert":
            hf = transformers.BertForMaskedLM.from_pretrained(root / "hf").eval()
            theirs = hf(input_ids=torch.tensor(tokens)).logits.numpy()
            ours = np.asarray(model(jnp.asarray(tokens)))[..., :config.model.vocab_size]
        else:
            hf = transformers.T5ForConditionalGeneration.from_pretrained(root / "hf").eval()
            theirs = hf(input_ids=torch.tensor(tokens), decoder_input_ids=torch.tensor(tokens[:, :7])).logits.numpy()
            ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(tokens[:, :7])))[..., :config.model.vocab_size]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    code, _, err = meshtron_cli("import", root / "hf", "--run-dir", root / "imported")
    assert code == 0, err
    back, _, imported, _ = load_run(root / "imported")
    assert imported.model.arch == config.model.arch and imported.train.objective == config.train.objective
    again = (back(jnp.asarray(tokens)) if kind == "bert" else back(jnp.asarray(tokens), jnp.asarray(tokens[:, :7])))
    np.testing.assert_allclose(np.asarray(again)[..., :config.model.vocab_size], ours, atol=1e-5)


def test_exported_tokenizer_reads_text_as_fill_and_generate_do(run, meshtron_cli):
    from meshtron.train.data import special_tokens
    from meshtron.train.data.tokenizer import Tokenizer
    from meshtron.train.seq_generate import SpecialText

    kind, root, _ = run
    code, _, err = meshtron_cli("export", root / "run", "--format", "hf", "--out", root / "hf_tokenizer")
    assert code == 0, err
    hf = transformers.AutoTokenizer.from_pretrained(root / "hf_tokenizer")
    tokenizer, vocab = Tokenizer.from_run_dir(root / "run"), 612
    objective = "mlm" if kind == "bert" else "span_corruption"
    ours = SpecialText(tokenizer, vocab, objective)
    special = "def [MASK](x): return [MASK]" if kind == "bert" else "def f(<extra_id_0>): <extra_id_1> x </s> y"
    ordinary = ["def f(x):\n    return x + 1", "  héllo 日本語\t", ""]
    for text in [*ordinary, special]:
        assert hf(text)["input_ids"] == ours.frame(text), text
        ids = ours.frame(text)
        assert hf.decode(ids) == ours.decode(ids)  # what generate prints
    for text in ordinary:
        assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text
        assert hf(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    if kind == "bert":
        assert hf.mask_token_id == special_tokens.mask_id(vocab) and hf.mask_token == "[MASK]"
        assert (hf.cls_token_id, hf.sep_token_id, hf.pad_token_id) == (tokenizer.bos_id, tokenizer.eos_id, 0)
        ids = hf("x")["input_ids"]
        assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
        # fill's probabilities are the exported model's at the exported tokenizer's mask positions
        code, out, _ = meshtron_cli("fill", root / "run", "--text", special, "--top-k", "3", "--json")
        masks = json.loads(out)
        ids = hf(special, return_tensors="pt")
        model = transformers.BertForMaskedLM.from_pretrained(root / "hf_tokenizer").eval()
        with torch.no_grad():
            probs = torch.softmax(model(**ids).logits[0], -1).numpy()
        positions = [i for i, t in enumerate(ids["input_ids"][0].tolist()) if t == hf.mask_token_id]
        assert code == 0 and [m["position"] for m in masks] == positions
        for m in masks:
            np.testing.assert_allclose(probs[m["position"], m["ids"]], m["probs"], atol=1e-4)
    else:
        sentinels = [special_tokens.sentinel_text(i) for i in range(100)]
        assert hf.convert_tokens_to_ids(sentinels) == [vocab - 1 - i for i in range(100)]
        assert set(sentinels) <= set(hf.all_special_tokens)
        assert hf("x")["input_ids"][-1] == hf.eos_token_id == tokenizer.eos_id and hf.pad_token_id == 0
        assert "token_type_ids" not in hf("x")
        code, out, _ = meshtron_cli("generate", root / "run", "--input", special, "--temperature", "0",
                                    "--max-new-tokens", "6", "--json")
        result = json.loads(out)
        assert code == 0 and result["text"] == hf.decode(result["tokens"])

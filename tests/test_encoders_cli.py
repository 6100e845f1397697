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

"""Hugging Face -> Meshtron: models created by transformers import with the same logits;
checkpoints Meshtron cannot read safely or exactly are refused with one line."""

import json

import numpy as np
import pytest

from meshtron.configs.errors import UserError
from meshtron.train.hf.export import export_hf, flatten_params
from meshtron.train.hf.importer import import_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_helpers import (HF_CONFIGS, TOLERANCE, VOCAB, hf_logits, logits_fn, meshtron_model,  # noqa: E402,F401
                        perturbed, random_tokens, save_hf_model, tiny_cfg)


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
def test_transformers_models_import_with_the_same_logits(kind, tmp_path):
    hf = save_hf_model(kind, tmp_path)
    cfg, params, _ = import_hf(tmp_path)
    tokens = random_tokens(cfg)
    assert np.abs(logits_fn(meshtron_model(cfg, params))(tokens) - hf_logits(hf, tokens)).max() < TOLERANCE


def test_imported_config_and_padding(tmp_path):
    save_hf_model("llama_gqa", tmp_path)
    cfg, params, tokenizer = import_hf(tmp_path)
    assert (cfg.family, cfg.n_kv_heads, cfg.vocab_size, cfg.rope_theta) == ("llama", 2, VOCAB, 500.0)
    assert not cfg.tie_embeddings
    assert params["embed"]["tokens"].shape == (cfg.padded_vocab(), cfg.d_model)
    assert not params["embed"]["tokens"][VOCAB:].any() and not params["head"][:, VOCAB:].any()
    assert tokenizer is None


def test_export_then_import_gives_the_same_config_and_params(sp_model, tmp_path):
    cfg = tiny_cfg("model.family=llama", "model.n_kv_heads=2", "model.bias=true")
    params = perturbed(meshtron_model(cfg))
    params["embed"]["tokens"][cfg.vocab_size:] = 0  # padding is not exported
    params["head"][:, cfg.vocab_size:] = 0
    imported_cfg, imported, tokenizer = import_hf(export_hf(cfg, params, sp_model, tmp_path / "hf"))
    assert imported_cfg == cfg
    imported = flatten_params(imported)
    for key, value in flatten_params(params).items():
        np.testing.assert_array_equal(imported[key], value, err_msg=key)
    assert tokenizer == tmp_path / "hf" / "tokenizer.model"


def test_a_llama_with_biases_imports_and_a_nonzero_gate_bias_is_refused(tmp_path):
    hf = save_hf_model("llama_gqa", tmp_path / "ok", attention_bias=True, mlp_bias=False)
    cfg, params, _ = import_hf(tmp_path / "ok")
    tokens = random_tokens(cfg)
    assert cfg.bias and not params["blocks"]["mlp"]["up_bias"].any()  # absent biases are zero
    assert np.abs(logits_fn(meshtron_model(cfg, params))(tokens) - hf_logits(hf, tokens)).max() < TOLERANCE
    save_hf_model("llama_gqa", tmp_path / "gate", mlp_bias=True)
    with pytest.raises(UserError, match=r"model.layers.\*.mlp.gate_proj.bias is nonzero"):
        import_hf(tmp_path / "gate")


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIGS["gpt2"]().to_dict()))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that must never be opened")
    with pytest.raises(UserError, match="only safetensors checkpoints are supported"):
        import_hf(tmp_path)


def test_truncated_safetensors_is_refused_in_one_line(tmp_path):
    save_hf_model("gpt2", tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="is not a readable safetensors file") as error:
        import_hf(tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mamba"}, "model_type 'mamba' is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, r"scaled RoPE"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
])
def test_configs_meshtron_cannot_compute_are_refused(change, message, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIGS["llama_gqa"]().to_dict(), **change}))
    with pytest.raises(UserError, match=message):
        import_hf(tmp_path)


def test_a_tokenizer_json_without_sentencepiece_is_returned_for_the_caller(tmp_path):
    save_hf_model("gpt2", tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert import_hf(tmp_path)[2] == tmp_path / "tokenizer.json"

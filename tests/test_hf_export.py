"""Meshtron -> Hugging Face: transformers loads the exported directory offline and computes
the same logits and greedy generations; unrepresentable configs are refused before writing."""

import json

import jax
import numpy as np
import pytest

from meshtron.configs.errors import UserError
from meshtron.configs.schema import ModelConfig
from meshtron.train.hf import export as hf_export
from meshtron.train.hf import tokenizer as hf_tokenizer
from meshtron.train.hf.export import export_hf, export_safetensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_helpers import (TOLERANCE, hf_logits, load_hf, logits_fn, meshtron_model, params_of,  # noqa: E402,F401
                        perturbed, random_tokens, tiny_cfg)

CASES = {
    "gpt2_tied": ["model.family=gpt2"],
    "llama_gqa_untied": ["model.family=llama", "model.n_kv_heads=2", "model.rope_theta=500"],
    "llama_tied": ["model.family=llama", "model.tie_embeddings=true"],
    "llama_mup": ["model.family=llama", "model.parametrization=mup", "model.mup_base_width=32"],
}


# -- export ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=list(CASES))
def exported(request, sp_model, tmp_path_factory):
    """(cfg, Meshtron logits function, transformers model, export dir) per case."""
    cfg = tiny_cfg(*CASES[request.param])
    params = perturbed(meshtron_model(cfg))
    out = export_hf(cfg, params, sp_model, tmp_path_factory.mktemp(request.param) / "hf")
    return cfg, logits_fn(meshtron_model(cfg, params)), load_hf(out), out


def test_transformers_logits_match(exported):
    cfg, ours, hf, _ = exported
    tokens = random_tokens(cfg)
    assert np.abs(ours(tokens) - hf_logits(hf, tokens)).max() < TOLERANCE


def test_greedy_generations_match_token_for_token(exported):
    cfg, ours, hf, _ = exported
    prompt_len, new_tokens, eos, pad = 8, 8, 2, 0
    buffer = random_tokens(cfg, seed=2)  # (B, T): positions after the prompt are overwritten, causal
    done = np.zeros(len(buffer), bool)
    end = prompt_len
    while end < prompt_len + new_tokens and not done.all():  # transformers' greedy search: a finished row pads
        buffer[:, end] = np.where(done, pad, ours(buffer)[:, end - 1].argmax(-1))
        done |= buffer[:, end] == eos
        end += 1
    theirs = hf.generate(torch.as_tensor(buffer[:, :prompt_len]), do_sample=False, max_new_tokens=new_tokens,
                         pad_token_id=pad)
    np.testing.assert_array_equal(theirs.numpy(), buffer[:, :end])


def test_directory_has_true_vocab_tokenizer_and_special_ids(exported, sp_model):
    cfg, _, hf, out = exported
    assert hf.get_input_embeddings().weight.shape[0] == cfg.vocab_size  # padding rows dropped
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.encode("def f(x):\n\treturn x", add_special_tokens=False) == hf_tokenizer.build_hf_tokenizer(
        sp_model).encode("def f(x):\n\treturn x").ids
    assert (hf.generation_config.bos_token_id, hf.generation_config.eos_token_id) == (1, 2)


def test_sharded_export_writes_an_index_and_loads(sp_model, tmp_path):
    cfg = tiny_cfg("model.family=gpt2")
    params = perturbed(meshtron_model(cfg))
    out = export_hf(cfg, params, None, tmp_path / "hf", max_shard_bytes=64 * 1024)
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    tokens = random_tokens(cfg)
    assert np.abs(logits_fn(meshtron_model(cfg, params))(tokens) - hf_logits(load_hf(out), tokens)).max() < TOLERANCE


def test_unscanned_params_export_as_scanned(tmp_path):
    from safetensors.numpy import load_file

    cfg = tiny_cfg("model.family=llama")
    params = params_of(meshtron_model(cfg))
    per_layer = {**params, "blocks": {i: jax.tree.map(lambda x: x[i], params["blocks"]) for i in range(cfg.n_layers)}}
    scanned = load_file(export_hf(cfg, params, None, tmp_path / "a") / "model.safetensors")
    unscanned_cfg = tiny_cfg("model.family=llama", "model.scan_layers=false")
    unscanned = load_file(export_hf(unscanned_cfg, per_layer, None, tmp_path / "b") / "model.safetensors")
    assert scanned.keys() == unscanned.keys()
    assert all(np.array_equal(scanned[k], unscanned[k]) for k in scanned)


@pytest.mark.parametrize("overrides, message", [
    (["model.family=palm"], r"model.parallel_block=true \(PaLM's parallel block\) has no Hugging Face"),
    (["model.family=gpt2", "model.position=sinusoidal"], "model.position=sinusoidal has no Hugging Face"),
    (["model.family=gpt2", "model.position=rope"], "model.norm=layernorm, model.mlp=gelu with model.position=rope"),
    (["model.family=llama", "model.position=learned"],
     "model.norm=rmsnorm, model.mlp=swiglu with model.position=learned"),
    (["model.family=gpt2", "model.n_kv_heads=2"], r"grouped-query attention\) has no Hugging Face GPT-2"),
    (["model.family=gpt2", "model.parametrization=mup", "model.mup_base_width=32"],
     "model.parametrization=mup with tied embeddings"),
])
def test_unrepresentable_configs_are_refused_before_writing(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message):
        export_hf(tiny_cfg(*overrides), {}, None, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_directory(sp_model, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf_export, "_write_json", fail)  # the last step: tokenizer and weights are written by then
    cfg = tiny_cfg("model.family=llama")
    with pytest.raises(OSError, match="disk full"):
        export_hf(cfg, params_of(meshtron_model(cfg)), sp_model, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_and_mismatched_params_are_refused(tmp_path):
    cfg = tiny_cfg("model.family=llama")
    params = params_of(meshtron_model(cfg))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty"):
        export_hf(cfg, params, None, tmp_path / "hf")
    with pytest.raises(UserError, match="do not match the model config"):
        export_hf(tiny_cfg("model.family=llama", "model.n_layers=3"), params, None, tmp_path / "other")


def test_export_safetensors_keeps_our_names_and_the_config(tmp_path):
    from safetensors.numpy import load_file

    cfg = tiny_cfg("model.family=gpt2")
    params = params_of(meshtron_model(cfg))
    out = export_safetensors(cfg, params, tmp_path / "weights")
    weights = load_file(out / "model.safetensors")
    np.testing.assert_array_equal(weights["blocks.attn.q"], params["blocks"]["attn"]["q"])
    assert weights["embed.tokens"].shape == (cfg.padded_vocab(), cfg.d_model)
    assert ModelConfig(**json.loads((out / "model_config.json").read_text())) == cfg


def test_bfloat16_export_loads(tmp_path):
    cfg = tiny_cfg("model.family=llama")
    out = export_hf(cfg, params_of(meshtron_model(cfg)), None, tmp_path / "hf", dtype="bfloat16")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.bfloat16

"""`meshtron export`: a trained run becomes a Hugging Face directory that transformers loads with the
run's logits, greedy generations and token ids; a run trained with tensor parallelism and ZeRO-3
exports exactly the weights it holds; configs Hugging Face cannot represent are refused first."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from conftest import TINY, console_script
from meshtron.configs import load_config
from meshtron.configs.loader import config_to_dict
from meshtron.parallel.mesh import mesh_for
from meshtron.train.run.checkpoint import Checkpointer
from meshtron.train.generate import generate, load_run
from meshtron.train.hf.export import flatten_params
from meshtron.train.run.loop import train
from meshtron.train.run.rundir import read_run_config
from meshtron.train.run.weights import load_run_params
from meshtron.train.run.step import build_training
from meshtron.tools.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_helpers import TOLERANCE, hf_logits, held_out_text, load_hf, logits_fn, random_tokens  # noqa: E402

RUNS = {
    "gpt2": ["model.family=gpt2"],
    # GQA with an untied head, trained on 8 devices: data 4 x tensor 2, ZeRO-3. Vocabulary 384 is padded to
    # 512 rows for tensor 2 but to 384 on one device, so the export also crosses a re-padding.
    "llama_gqa_zero3_tensor2": ["model.family=llama", "model.n_kv_heads=2", "model.vocab_size=384",
                                "parallel.data=4", "parallel.tensor=2", "parallel.zero_stage=3"],
}


class Exported:
    """A trained run, its `meshtron export --format hf` directory, and both models."""

    def __init__(self, run_dir, hf_dir):
        self.run_dir, self.hf_dir = run_dir, hf_dir
        self.model, self.tokenizer, self.config, self.step = load_run(run_dir)
        self.hf = load_hf(hf_dir)


@pytest.fixture(scope="module", params=list(RUNS))
def exported(request, text_corpus, tmp_path_factory) -> Exported:
    """A 3-step run trained in-process on 8 simulated devices, exported with the CLI (in-process)."""
    root = tmp_path_factory.mktemp(request.param)
    config = load_config("tiny", [*TINY, f"data.source={text_corpus}", "train.steps=3", *RUNS[request.param]])
    train(config, root / "run", log=lambda *a, **k: None)
    assert main(["export", str(root / "run"), "--format", "hf", "--out", str(root / "hf")]) == 0
    return Exported(root / "run", root / "hf")


def test_transformers_logits_match_the_runs_model(exported):
    tokens = random_tokens(exported.config.model)
    assert np.abs(logits_fn(exported.model)(tokens) - hf_logits(exported.hf, tokens)).max() < TOLERANCE


def test_greedy_generations_match_token_for_token(exported):
    eos = exported.tokenizer.eos_id
    prompt = exported.tokenizer.encode("def main(argv):\n    ")
    ours = generate(exported.model, prompt, 12, temperature=0.0, eos_id=eos)
    ids = torch.tensor([[eos, *prompt]])  # Meshtron starts a prompt as a new document, after an EOS
    out = exported.hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                               pad_token_id=eos)
    theirs = out[0, ids.shape[1]:].tolist()
    assert ours == (theirs[:theirs.index(eos)] if eos in theirs else theirs)


def test_auto_tokenizer_ids_equal_the_runs_sentencepiece_ids(exported):
    auto = transformers.AutoTokenizer.from_pretrained(exported.hf_dir)
    text = held_out_text()
    for sample in [text, *text.split("\n")]:
        assert auto.encode(sample, add_special_tokens=False) == exported.tokenizer.encode(sample), repr(sample)
    assert auto.eos_token_id == exported.tokenizer.eos_id == exported.hf.generation_config.eos_token_id


def test_safetensors_format_reads_back_equal_to_the_runs_params(exported, meshtron_cli, tmp_path):
    from safetensors.numpy import load_file

    code, out, _ = meshtron_cli("export", exported.run_dir, "--format", "safetensors", "--out", tmp_path / "st",
                                "--json")
    summary = json.loads(out)
    weights = load_file(tmp_path / "st" / "model.safetensors")
    ours = flatten_params(nnx.to_pure_dict(nnx.state(exported.model)))
    assert code == 0 and (summary["format"], summary["step"], summary["tensors"]) == ("safetensors", 3, len(ours))
    assert weights.keys() == ours.keys()
    for key, value in ours.items():
        np.testing.assert_array_equal(weights[key], np.asarray(value), err_msg=key)


def test_sharded_run_exports_the_params_it_holds_gathered(exported, meshtron_cli, tmp_path):
    from safetensors.numpy import load_file

    config = read_run_config(exported.run_dir)
    if config.parallel.tensor == 1:
        pytest.skip("the unsharded run")
    shape, mesh = mesh_for(config)  # the 8-device mesh it was trained on
    training = build_training(config, mesh, shape)
    ckpt = Checkpointer(exported.run_dir, async_save=False)
    params, _, _ = ckpt.restore(exported.step, *training.abstract_state())
    ckpt.close()
    assert len(jax.tree.leaves(params)[0].sharding.device_set) == 8
    gathered = flatten_params(jax.tree.map(np.asarray, nnx.to_pure_dict(params)))
    assert meshtron_cli("export", exported.run_dir, "--format", "safetensors", "--out", tmp_path / "st")[0] == 0
    weights = load_file(tmp_path / "st" / "model.safetensors")
    assert weights.keys() == gathered.keys()
    for key, value in weights.items():
        held = gathered[key]
        rows = tuple(slice(0, n) for n in value.shape)  # one device pads the vocabulary to fewer rows
        np.testing.assert_array_equal(value, held[rows], err_msg=key)
        padding = held.copy()
        padding[rows] = 0
        assert not padding.any(), key


def test_an_exported_directory_imports_back_to_the_same_params(exported, meshtron_cli, tmp_path):
    code, _, err = meshtron_cli("import", exported.hf_dir, "--run-dir", tmp_path / "again")
    assert code == 0, err
    again = flatten_params(load_run_params(tmp_path / "again").pure_params())
    ours = flatten_params(nnx.to_pure_dict(nnx.state(exported.model)))
    assert again.keys() == ours.keys()
    for key, value in ours.items():
        np.testing.assert_array_equal(again[key], np.asarray(value), err_msg=key)
    assert (tmp_path / "again" / "tokenizer.model").read_bytes() == exported.tokenizer.model_bytes()


def test_console_script_exports_bfloat16_in_several_files(exported, tmp_path):
    if exported.config.model.family != "gpt2":
        pytest.skip("one subprocess call is enough")
    out = tmp_path / "bf16"
    proc = subprocess.run([console_script(), "export", str(exported.run_dir), "--format", "hf", "--out", str(out),
                           "--dtype", "bfloat16", "--max-shard-size", "100KB", "--json"],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["format"], summary["dtype"]) == ("hf", "bfloat16") and len(summary["weight_files"]) > 1
    assert "model.safetensors.index.json" in summary["files"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.bfloat16
    tokens = random_tokens(exported.config.model)
    assert np.abs(hf_logits(hf, tokens) - hf_logits(exported.hf, tokens)).max() < 0.1  # bfloat16 rounding only


def test_step_out_and_overwrite_options(exported, meshtron_cli, tmp_path):
    code, _, err = meshtron_cli("export", exported.run_dir, "--format", "hf", "--out", tmp_path / "x", "--step", 99)
    assert code == 2 and "has checkpoints at steps 3" in err and not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    code, _, err = meshtron_cli("export", exported.run_dir, "--format", "hf", "--out", tmp_path / "taken")
    assert code == 2 and "already exists and is not empty" in err
    code, out, _ = meshtron_cli("export", exported.run_dir, "--format", "hf", "--out", tmp_path / "taken",
                                "--overwrite", "--step", 3)
    assert code == 0 and "(step 3)" in out and not (tmp_path / "taken" / "mine.txt").exists()


def test_a_palm_run_is_refused_in_one_line_and_nothing_is_written(meshtron_cli, tmp_path):
    run_dir = tmp_path / "palm"
    run_dir.mkdir()  # the refusal comes from config.yaml, before any checkpoint is read
    config = load_config("tiny", [*TINY, "model.family=palm"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    code, out, err = meshtron_cli("export", run_dir, "--format", "hf", "--out", tmp_path / "hf")
    assert code == 2 and "PaLM's parallel block" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["palm"]


def test_a_directory_that_is_not_a_run_is_refused(meshtron_cli, tmp_path):
    code, _, err = meshtron_cli("export", tmp_path, "--format", "safetensors", "--out", tmp_path / "out")
    assert code == 2 and "not a Meshtron run directory" in err

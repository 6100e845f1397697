"""`meshtron import`: a transformers GPT-2 or Llama directory with only a tokenizer.json becomes a run
directory with transformers' logits and token ids, which `meshtron train` continues and `meshtron
generate` samples from; directories Meshtron cannot read safely are refused in one line."""

import dataclasses
import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import console_script
from meshtron.configs import load_config
from meshtron.train.hf.tokenizer import write_hf_tokenizer
from meshtron.train.run.rundir import read_run_config
from meshtron.train.run.weights import load_run_params
from meshtron.train.data.tokenizer import Tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_helpers import (HF_CONFIGS, TOLERANCE, byte_level_tokenizer, held_out_text, hf_logits,  # noqa: E402,F401
                        logits_fn, random_tokens, save_hf_model)


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa"])
def imported(request, text_corpus, sp_model, tmp_path_factory):
    """(kind, HF directory with a tokenizer.json and no tokenizer.model, transformers model, imported run)."""
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = root / "hf"
    if request.param == "gpt2":
        tokenizer = byte_level_tokenizer([p.read_text(encoding="utf-8") for p in text_corpus.glob("*.py")], 300)
        eos = tokenizer.token_to_id("<|endoftext|>")  # config.json names it, as GPT-2's does
        hf = save_hf_model("gpt2", hf_dir, vocab_size=tokenizer.get_vocab_size(), bos_token_id=eos, eos_token_id=eos)
        tokenizer.save(str(hf_dir / "tokenizer.json"))
    else:  # a Llama tokenizer.json (BPE with byte fallback), as the hub has for Llama 2
        hf = save_hf_model("llama_gqa", hf_dir, vocab_size=512)  # config.json: bos 1, eos 2
        write_hf_tokenizer(sp_model, hf_dir, model_max_length=32)
    from meshtron.tools.cli import main

    assert main(["import", str(hf_dir), "--run-dir", str(root / "run")]) == 0
    return request.param, hf_dir, hf, root / "run"


def test_imported_run_computes_transformers_logits(imported):
    _, _, hf, run_dir = imported
    run = load_run_params(run_dir)
    tokens = random_tokens(run.config.model)
    assert run.step == 0
    assert np.abs(logits_fn(run.model())(tokens) - hf_logits(hf, tokens)).max() < TOLERANCE


def test_run_directory_holds_the_tokenizer_json_with_transformers_ids(imported):
    kind, hf_dir, hf, run_dir = imported
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "tokenizer.json",
                                                         "tokenizer_config.json"]
    tokenizer = Tokenizer.from_run_dir(run_dir)
    auto = transformers.AutoTokenizer.from_pretrained(hf_dir)
    text = held_out_text()
    for sample in [text, *text.split("\n")[:50]]:
        assert tokenizer.encode(sample) == auto.encode(sample, add_special_tokens=False), repr(sample)
        assert tokenizer.decode(tokenizer.encode(sample)) == sample
    end = "<|endoftext|>" if kind == "gpt2" else "</s>"
    assert tokenizer.eos_id == hf.config.eos_token_id == auto.convert_tokens_to_ids(end)
    config = read_run_config(run_dir)
    assert config.data.tokenizer == ""  # no path to break if the run moves: a run keeps the tokenizer it holds
    assert config.train == dataclasses.replace(load_config("tiny").train, sample_tokens=16)  # 64 > seq_len / 2


def test_training_continues_from_step_0_and_generate_samples(imported, text_corpus, meshtron_cli, tmp_path):
    kind, _, _, imported_run = imported
    if kind != "gpt2":
        pytest.skip("one continued run is enough (the llama run's params load in the tests above)")
    run_dir = tmp_path / "run"
    shutil.copytree(imported_run, run_dir)  # a moved run directory still works
    tokenizer_bytes = (run_dir / "tokenizer.json").read_bytes()
    code, out, err = meshtron_cli("generate", run_dir, "--prompt", "def ", "--max-new-tokens", "8", "--json")
    assert code == 0, err
    assert len(json.loads(out)["tokens"]) <= 8
    code, out, err = meshtron_cli("train", "--run-dir", run_dir, "train.steps=3", f"data.source={text_corpus}",
                                  "train.batch_size=8", "train.eval_batches=2", "train.sample_tokens=0", "--json")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["resumed"], summary["start_step"], summary["steps"]) == (True, 0, 3)
    assert math.isfinite(summary["final_loss"])
    assert (run_dir / "checkpoints" / "3").is_dir()
    # new text never trained a tokenizer: the imported one is still the run's, byte for byte
    assert (run_dir / "tokenizer.json").read_bytes() == tokenizer_bytes and not (run_dir / "tokenizer.model").exists()
    code, out, err = meshtron_cli("generate", run_dir, "--prompt", "def ", "--max-new-tokens", "8",
                                  "--temperature", "0", "--json")
    result = json.loads(out)
    assert code == 0 and len(result["tokens"]) <= 8 and isinstance(result["text"], str)


# -- refusals: one line on stderr, exit code 2, nothing written ----------------------------------------
def test_an_occupied_run_directory_is_refused(imported, meshtron_cli):
    _, hf_dir, _, run_dir = imported
    before = sorted(p.name for p in run_dir.iterdir())
    code, _, err = meshtron_cli("import", hf_dir, "--run-dir", run_dir)
    assert code == 2 and "holds a Meshtron run" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == before


def _gpt2_dir(path):
    """A GPT-2 directory with a valid config.json (weights and tokenizer added by each test)."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(HF_CONFIGS["gpt2"]().to_dict()))
    return path


@pytest.mark.parametrize("case, message", [
    ("pickle_only", "only safetensors checkpoints are supported"),
    ("truncated", "is not a readable safetensors file"),
    ("mamba", "model_type 'mamba' is not supported"),
    ("no_tokenizer", "has no tokenizer.model or tokenizer.json"),
])
def test_unreadable_directories_are_refused_in_one_line(case, message, meshtron_cli, capsys, tmp_path):
    hf_dir = tmp_path / "hf"
    if case == "pickle_only":
        _gpt2_dir(hf_dir)
        (hf_dir / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that must never be opened")
    else:
        save_hf_model("gpt2", hf_dir)
        (hf_dir / "tokenizer.json").write_text(byte_level_tokenizer(["def f(x): return x"], 300).to_str())
    if case == "truncated":
        weights = hf_dir / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif case == "mamba":
        (hf_dir / "config.json").write_text(json.dumps({**HF_CONFIGS["gpt2"]().to_dict(), "model_type": "mamba"}))
    elif case == "no_tokenizer":
        (hf_dir / "tokenizer.json").unlink()
    capsys.readouterr()  # forget what transformers printed while saving
    code, out, err = meshtron_cli("import", hf_dir, "--run-dir", tmp_path / "run")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out
    assert not (tmp_path / "run").exists()


def test_console_script_refuses_a_pickle_only_directory(tmp_path):
    hf_dir = _gpt2_dir(tmp_path / "hf")
    (hf_dir / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that must never be opened")
    proc = subprocess.run([console_script(), "import", str(hf_dir), "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 2 and "only safetensors checkpoints are supported" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()

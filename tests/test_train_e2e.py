"""`meshtron train` and `meshtron generate` end to end, as a user runs them."""

import json
import os
import subprocess

import pytest

from conftest import TINY, console_script


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, text_corpus):
    """One tiny run through the installed console command."""
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    overrides = TINY + [f"data.source={text_corpus}", "train.steps=30", "train.eval_every=10", "train.lr=3e-3",
                        "train.sample_tokens=16", "train.sample_prompt=def "]
    proc = subprocess.run([console_script(), "train", "--run-dir", str(run_dir), "--json", *overrides],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_writes_the_run_directory(trained_run):
    run_dir, _ = trained_run
    for name in ("config.yaml", "metrics.jsonl", "tokenizer.model", "checkpoints"):
        assert (run_dir / name).exists(), name
    assert any((run_dir / "tensorboard").iterdir())
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["30"]


def test_metrics_lines_carry_step_loss_and_throughput(trained_run):
    run_dir, _ = trained_run
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    eval_lines = [x for x in lines if "eval_loss" in x]
    assert [x["step"] for x in train_lines] == [5, 10, 15, 20, 25, 30]
    assert all(x["tokens_per_s"] > 0 for x in train_lines)
    assert [x["step"] for x in eval_lines] == [10, 20, 30]


def test_loss_falls(trained_run):
    _, summary = trained_run
    assert summary["steps"] == 30
    assert summary["final_loss"] < summary["first_loss"] - 1.0
    assert summary["eval_loss"] < 6.0  # ln(512) = 6.24 at random


def test_summary_ends_with_a_sample(trained_run):
    _, summary = trained_run
    assert summary["sample"].startswith("def ")


def test_generate_json_prints_text_and_tokens(trained_run, meshtron_cli):
    run_dir, _ = trained_run
    code, out, _ = meshtron_cli("generate", run_dir, "--prompt", "import ", "--max-new-tokens", "8",
                                "--temperature", "0", "--json")
    result = json.loads(out)
    assert code == 0 and len(result["tokens"]) <= 8 and isinstance(result["text"], str)
    code, again, _ = meshtron_cli("generate", run_dir, "--prompt", "import ", "--max-new-tokens", "8",
                                  "--temperature", "0", "--json")
    assert json.loads(again) == result  # greedy is deterministic


def test_generate_refuses_a_non_run_directory(tmp_path, meshtron_cli):
    code, _, err = meshtron_cli("generate", tmp_path, "--prompt", "x")
    assert code == 2 and "not a Meshtron run directory" in err

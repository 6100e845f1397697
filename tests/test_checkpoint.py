"""Checkpoints: exact resume, restore onto another layout, preemption, corruption (kill -9: test_faults.py)."""

import json
import signal
import subprocess
import time

import pytest

from meshtron.configs import UserError, load_config
from meshtron.train.run.loop import train

from conftest import TINY, console_script

STEPS = 12


def overrides(corpus, *extra):
    return TINY + [f"data.source={corpus}", f"train.steps={STEPS}", "train.log_every=1", "train.lr=3e-3",
                   "model.family=llama", "model.n_kv_heads=2", *extra]


def losses_of(run_dir) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines if "loss" in x and "bad_step" not in x}


def quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory, text_corpus):
    """An uninterrupted run: its loss at every step."""
    run_dir = tmp_path_factory.mktemp("ckpt") / "reference"
    train(load_config("tiny", overrides(text_corpus)), run_dir, log=quiet)
    losses = losses_of(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_resume_continues_the_same_loss_sequence(reference, tmp_path, text_corpus):
    config = load_config("tiny", overrides(text_corpus))
    first = train(config, tmp_path / "run", log=quiet, stop_after=5)
    assert first.interrupted and first.steps_done == 5
    second = train(config, tmp_path / "run", log=quiet)
    assert second.start_step == 5 and second.steps_done == STEPS
    assert losses_of(tmp_path / "run") == reference  # step for step, bit for bit


def test_checkpoint_holds_everything_to_continue(tmp_path, text_corpus):
    from meshtron.train.run.checkpoint import Checkpointer, tokenizer_from_meta

    train(load_config("tiny", overrides(text_corpus)), tmp_path / "run", log=quiet, stop_after=3)
    ckpt = Checkpointer(tmp_path / "run")
    meta = ckpt.read_meta(3)
    assert meta["step"] == 3 and meta["data_position"] == 3 and meta["seed"] == 0
    assert meta["config"]["model"]["n_kv_heads"] == 2
    assert tokenizer_from_meta(meta) == (tmp_path / "run" / "tokenizer.model").read_bytes()
    ckpt.close()


def test_keeps_only_the_last_checkpoints(tmp_path, text_corpus):
    train(load_config("tiny", overrides(text_corpus, "checkpoint.every=2", "checkpoint.keep=2")), tmp_path / "run",
          log=quiet)
    kept = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [10, 12]


def test_resume_refuses_a_different_model_before_loading(tmp_path, text_corpus):
    train(load_config("tiny", overrides(text_corpus)), tmp_path / "run", log=quiet, stop_after=2)
    with pytest.raises(UserError, match="model.n_layers=2 but the config asks for 3"):
        train(load_config("tiny", overrides(text_corpus, "model.n_layers=3")), tmp_path / "run", log=quiet)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path, text_corpus):
    config = load_config("tiny", overrides(text_corpus, "checkpoint.every=3"))
    train(config, tmp_path / "run", log=quiet, stop_after=7)  # checkpoints 3, 6 and 7
    latest = tmp_path / "run" / "checkpoints" / "7"
    for path in latest.rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncate every file
    messages = []
    result = train(config, tmp_path / "run", log=messages.append)
    assert result.start_step == 6
    assert any("checkpoint 7 is unreadable" in m for m in messages)
    assert any(p.name.startswith("unreadable-7-") for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert losses_of(tmp_path / "run") == reference


def test_a_second_live_run_on_the_same_directory_is_refused(tmp_path, text_corpus):
    from meshtron.train.run.rundir import run_lock

    with run_lock(tmp_path / "run"):
        with pytest.raises(UserError, match="in use by a live run"):
            train(load_config("tiny", overrides(text_corpus)), tmp_path / "run", log=quiet)


# Long enough that a signal sent after step 3 always lands before the end (about 50 ms a step).
LONG = ("train.steps=80", "model.d_model=128", "model.d_ff=256", "train.batch_size=16")


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory, text_corpus):
    run_dir = tmp_path_factory.mktemp("ckpt") / "long"
    train(load_config("tiny", overrides(text_corpus, *LONG)), run_dir, log=quiet)
    return losses_of(run_dir)


def cli_train(run_dir, corpus, *extra, devices=8):
    return [console_script(), "--cpu-devices", str(devices), "train", "--run-dir", str(run_dir),
            *overrides(corpus, *extra)]


def wait_for_step(run_dir, step, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and max(losses_of(run_dir), default=0) >= step:
            return
        time.sleep(0.2)
    raise AssertionError("training did not reach the step in time")


def test_restore_onto_another_mesh_and_device_count(reference, tmp_path, text_corpus):
    """Saved on 8 devices (data=4 x tensor=2, ZeRO-3), resumed on 2 devices with ZeRO-1."""
    run_dir = tmp_path / "run"
    train(load_config("tiny", overrides(text_corpus, "parallel.data=4", "parallel.tensor=2",
                                        "parallel.zero_stage=3")), run_dir, log=quiet, stop_after=6)
    proc = subprocess.run(cli_train(run_dir, text_corpus, "parallel.data=2", "parallel.tensor=1",
                                    "parallel.zero_stage=1", devices=2), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = losses_of(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in reference.items():
        assert loss == pytest.approx(losses[step], abs=2e-5), step


def test_sigterm_saves_and_exits_cleanly_then_resumes(long_reference, tmp_path, text_corpus):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(cli_train(run_dir, text_corpus, *LONG), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_step(run_dir, 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 80
    assert f"stopping (SIGTERM): saved step {saved[0]}" in out
    resumed = subprocess.run(cli_train(run_dir, text_corpus, *LONG), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses_of(run_dir) == long_reference


@pytest.mark.parametrize("change,refused", [
    ("model.d_model=128", True), ("model.n_kv_heads=4", True), ("model.scan_layers=false", True),
    ("model.seq_len=64", False),  # rope: no position table, so the length is free to change
    ("train.lr=1e-3", False), ("model.dropout=0.1", False), ("model.remat=full", False)])
def test_a_resume_is_refused_exactly_when_a_shape_key_changes(change, refused):
    from meshtron.configs import config_to_dict
    from meshtron.train.run.checkpoint import check_compatible

    saved = config_to_dict(load_config("tiny", ["model.n_kv_heads=2"]))
    config = load_config("tiny", ["model.n_kv_heads=2", change])
    if refused:
        with pytest.raises(UserError, match=f"cannot resume: the checkpoint has {change.split('=')[0]}="):
            check_compatible(saved, config)
    else:
        check_compatible(saved, config)


def test_with_learned_positions_the_sequence_length_is_a_shape_key():
    from meshtron.configs import config_to_dict
    from meshtron.train.run.checkpoint import check_compatible

    saved = config_to_dict(load_config("tiny", ["model.family=gpt2"]))
    with pytest.raises(UserError, match="model.seq_len=128 but the config asks for 64"):
        check_compatible(saved, load_config("tiny", ["model.family=gpt2", "model.seq_len=64"]))

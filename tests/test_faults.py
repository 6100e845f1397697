"""Faults: NaN/Inf steps, a full disk, kill -9 at any moment, a dead peer, unsafe files, hostile data."""

import ast
import errno
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from meshtron.configs import UserError, load_config
from meshtron.parallel.mesh import mesh_for
from meshtron.train.run.checkpoint import Checkpointer
from meshtron.train.run.loop import TrainingStopped, train
from meshtron.train.run.step import build_training

from conftest import TINY, console_script

PACKAGE = Path(__file__).resolve().parents[1]


def quiet(*args, **kwargs):
    pass


def losses_of(run_dir) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines if "loss" in x and "bad_step" not in x}


# -- numerical faults -----------------------------------------------------------------------------
def test_a_nan_step_leaves_parameters_and_optimizer_state_unchanged():
    config = load_config("tiny", TINY + ["parallel.data=4", "parallel.tensor=2", "parallel.zero_stage=1"])
    shape, mesh = mesh_for(config)
    training = build_training(config, mesh, shape)
    params = training.init_params()
    opt = training.init_opt_state(params)
    step = training.jit_train_step()
    tokens = np.random.default_rng(0).integers(0, 500, (8, 33))
    params, opt, _ = step(params, opt, training.shard_batch(tokens), 0)  # one good step: Adam moments non-zero
    # poison one weight of the first block's MLP: every loss and gradient becomes NaN
    up = np.array(params["blocks"]["mlp"]["up"][...])
    up[0, 0, 0] = np.nan
    params["blocks"]["mlp"]["up"][...] = jax.device_put(up, params["blocks"]["mlp"]["up"][...].sharding)
    before = jax.tree.map(np.asarray, (params, opt))
    params, opt, metrics = step(params, opt, training.shard_batch(tokens), 1)
    assert not bool(metrics["finite"]) and not np.isfinite(float(metrics["loss"]))
    after = jax.tree.map(np.asarray, (params, opt))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)  # NaN compares equal to NaN here


def poisoned_batches(monkeypatch, from_step: int):
    """From `from_step` on, every batch holds a token id outside the vocabulary (a NaN embedding)."""
    from meshtron.train.data.prepare import Dataset

    original = Dataset.train_batches

    def batches(self, batch_size, seed, start_step=0, *args, **kwargs):
        for i, batch in enumerate(original(self, batch_size, seed, start_step, *args, **kwargs)):
            if start_step + i >= from_step:
                batch = batch.copy()
                batch[:, 3] = 10**6
            yield batch

    monkeypatch.setattr(Dataset, "train_batches", batches)


def test_consecutive_bad_steps_stop_the_run_and_save_the_last_good_state(monkeypatch, tmp_path, text_corpus):
    poisoned_batches(monkeypatch, from_step=4)
    config = load_config("tiny", TINY + [f"data.source={text_corpus}", "train.steps=20", "train.log_every=1",
                                         "train.max_bad_steps=3"])
    with pytest.raises(TrainingStopped, match="3 consecutive steps had a NaN/Inf"):
        train(config, tmp_path / "run", log=quiet)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("bad_step")] == [5, 6, 7]  # batches 4, 5, 6 are steps 5, 6, 7
    assert max(losses_of(tmp_path / "run")) == 4
    ckpt = Checkpointer(tmp_path / "run")
    assert ckpt.latest_step() == 7
    # the saved parameters are those after step 4, the last good update
    shape, mesh = mesh_for(config)
    training = build_training(config, mesh, shape)
    saved, _, _ = ckpt.restore(7, *training.abstract_state())
    ckpt.close()
    monkeypatch.undo()
    train(load_config("tiny", TINY + [f"data.source={text_corpus}", "train.steps=20", "train.log_every=1"]),
          tmp_path / "good", log=quiet, stop_after=4)
    good = Checkpointer(tmp_path / "good")
    reference, _, _ = good.restore(4, *training.abstract_state())
    good.close()
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_isolated_bad_step_is_skipped_and_counted(monkeypatch, tmp_path, text_corpus):
    from meshtron.train.data.prepare import Dataset

    original = Dataset.train_batches

    def one_bad(self, batch_size, seed, start_step=0, *args, **kwargs):
        for i, batch in enumerate(original(self, batch_size, seed, start_step, *args, **kwargs)):
            if start_step + i == 2:
                batch = batch.copy()
                batch[0, 5] = 10**6  # a target outside the vocabulary
            yield batch

    monkeypatch.setattr(Dataset, "train_batches", one_bad)
    config = load_config("tiny", TINY + [f"data.source={text_corpus}", "train.steps=6", "train.log_every=1"])
    result = train(config, tmp_path / "run", log=quiet)
    assert result.steps_done == 6
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x.get("bad_step")] == [3]
    last_train_line = [x for x in lines if "tokens_per_s" in x][-1]
    assert last_train_line["bad_steps_total"] == 1 and sorted(losses_of(tmp_path / "run")) == [1, 2, 4, 5, 6]


# -- checkpoint faults ----------------------------------------------------------------------------
def test_a_full_disk_during_a_save_stops_cleanly_and_keeps_earlier_checkpoints(monkeypatch, tmp_path, text_corpus):
    original = Checkpointer.save
    calls = []

    def save(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / str(step)))
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", save)
    config = load_config("tiny", TINY + [f"data.source={text_corpus}", "checkpoint.every=2"])
    with pytest.raises(TrainingStopped, match="no space left on the device") as err:
        train(config, tmp_path / "run", log=quiet)
    assert "\n" not in str(err.value)
    monkeypatch.undo()
    assert Checkpointer(tmp_path / "run").steps() == [2]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_really_full_filesystem_keeps_earlier_checkpoints(tmp_path, text_corpus):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "3m"):
        pytest.skip("cannot mount a small tmpfs here (needs root); the monkeypatched test above covers the logic")
    try:
        proc = subprocess.run([console_script(), "train", "--run-dir", str(small / "run"), *TINY,
                               f"data.source={text_corpus}", "checkpoint.every=2", "train.steps=8"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "meshtron: error: no space left on the device" in proc.stderr
        assert Checkpointer(small / "run").steps() == [2]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_links_out_of_the_run_directory_are_refused(tmp_path, text_corpus):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(UserError, match="outside the run directory"):
        train(load_config("tiny", TINY + [f"data.source={text_corpus}"]), run_dir, log=quiet)
    assert victim.read_text() == "precious"


# -- process faults -------------------------------------------------------------------------------
LONG = TINY + ["train.steps=60", "model.d_model=128", "model.d_ff=256", "train.batch_size=16", "train.log_every=1",
               "checkpoint.every=5"]


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory, text_corpus):
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    train(load_config("tiny", LONG + [f"data.source={text_corpus}"]), run_dir, log=quiet)
    return losses_of(run_dir)


def _train_cmd(run_dir, corpus):
    return [console_script(), "train", "--config", "tiny", "--run-dir", str(run_dir), *LONG, f"data.source={corpus}"]


def _kill_when(run_dir: Path, proc, condition, timeout=300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill: {proc.stderr.read()[-2000:]}")
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return
        time.sleep(0.002)
    raise AssertionError("the kill point was never reached")


def _saving(run_dir: Path) -> bool:
    ckpts = run_dir / "checkpoints"
    return ckpts.exists() and any("orbax-checkpoint-tmp" in p.name for p in ckpts.iterdir())


def _reached(run_dir: Path, step: int) -> bool:
    metrics = run_dir / "metrics.jsonl"
    return metrics.exists() and max(losses_of(run_dir), default=0) >= step


def test_kill_9_at_random_moments_always_resumes_to_the_same_losses(long_reference, tmp_path, text_corpus):
    rng = random.Random(7)
    moments = [("step", s) for s in sorted(rng.sample(range(1, 50), 2))] + [("mid-save", None)]
    run_dir = tmp_path / "run"
    for kind, step in moments:
        proc = subprocess.Popen(_train_cmd(run_dir, text_corpus), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        if kind == "mid-save":
            _kill_when(run_dir, proc, lambda: _saving(run_dir))
            assert _saving(run_dir)  # killed while a checkpoint was being written
        else:
            _kill_when(run_dir, proc, lambda: _reached(run_dir, step))
    final = subprocess.run(_train_cmd(run_dir, text_corpus), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert losses_of(run_dir) == long_reference
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [x["step"] for x in lines if "tokens_per_s" in x]
    assert logged == sorted(set(logged)), "a step logged twice after a resume"


def test_killing_one_of_two_processes_stops_the_other_with_one_line_and_exit_75(tmp_path, text_corpus):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MESHTRON_HEARTBEAT_SECONDS="10")
    run_dir = tmp_path / "run"
    procs = [subprocess.Popen([console_script(), "--cpu-devices", "4", "train", "--run-dir", str(run_dir),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
                               *TINY, "train.steps=100000", "train.log_every=1", f"data.source={text_corpus}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) for i in (0, 1)]
    try:
        deadline = time.time() + 300
        while not _reached(run_dir, 2):
            assert time.time() < deadline and procs[0].poll() is None, "the job did not start"
            time.sleep(0.2)
        procs[1].kill()
        _, err = procs[0].communicate(timeout=120)  # JAX's heartbeat timeout is 10 s here
        assert procs[0].returncode == 75, err[-3000:]  # parallel/peers.py EXIT_PEER_LOST
        lines = [x for x in err.splitlines() if x.strip()]
        assert lines[-1].startswith("meshtron: error: process 0 of 2 stopped:"), err[-3000:]
        assert sum(x.startswith("meshtron: error:") for x in lines) == 1
        assert not any("Traceback" in x or "Check failure" in x or "@ 0x" in x for x in lines), err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


# -- security -------------------------------------------------------------------------------------
UNSAFE_CALLS = {"pickle", "cloudpickle", "dill", "marshal", "shelve"}


def test_no_pickle_and_no_remote_code_anywhere_in_meshtron():
    offenders = []
    for folder in ("model", "parallel", "train", "tools", "configs"):
        for path in (PACKAGE / folder).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module.split(".")[0]]
                if UNSAFE_CALLS & set(names):
                    offenders.append(f"{path}:{node.lineno} imports {names}")
                if isinstance(node, ast.keyword) and node.arg in ("allow_pickle", "trust_remote_code"):
                    if isinstance(node.value, ast.Constant) and node.value.value is True:
                        offenders.append(f"{path}:{node.lineno} {node.arg}=True")
                if isinstance(node, ast.Attribute) and node.attr in ("load", "unsafe_load") and \
                        isinstance(node.value, ast.Name) and node.value.id in ("torch", "yaml"):
                    offenders.append(f"{path}:{node.lineno} {node.value.id}.{node.attr}")
    assert not offenders, offenders


# -- hostile data ---------------------------------------------------------------------------------
def test_one_giant_line_and_documents_longer_than_a_window_train(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    (corpus / "giant.txt").write_text(" ".join(rng.choice(words) for _ in range(200_000)))  # ~1.2 MB, no newline
    (corpus / "normal.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000)))
    config = load_config("tiny", TINY + [f"data.source={corpus}", "model.vocab_size=300", "train.steps=4"])
    result = train(config, tmp_path / "run", log=quiet)
    assert result.steps_done == 4 and np.isfinite(result.losses[-1][1])

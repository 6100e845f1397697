"""Round two of reliability: what a new user hit, the memory check, clean resumes of the record, checksums."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from meshtron.configs import load_config

from conftest import TINY


def quiet(*args, **kwargs):
    pass


def one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("meshtron: error: "), (code, err)
    return lines[0]


# -- paths of the wrong kind --------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["file", "below_a_file"])
def test_a_run_dir_that_is_a_file_gets_one_line(meshtron_cli, tmp_path, text_corpus, where):
    (tmp_path / "some_file").write_text("x")
    run_dir = tmp_path / "some_file" if where == "file" else tmp_path / "some_file" / "run"
    code, _, err = meshtron_cli("train", "--run-dir", run_dir, *TINY, f"data.source={text_corpus}")
    assert "--run-dir" in one_line_error(code, err) and "file" in err
    assert (tmp_path / "some_file").read_text() == "x"


def test_a_config_that_is_a_folder_gets_one_line(meshtron_cli, tmp_path):
    code, _, err = meshtron_cli("train", "--config", tmp_path)
    assert "is a folder" in one_line_error(code, err)


# -- the same file reached by two paths is read once --------------------------------------------------------------
def test_files_reached_by_several_paths_are_read_once(tmp_path, text_corpus):
    from meshtron.train.data.corpus import local_files, text_splits

    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(text_corpus / "argparse.py", folder / "a.txt")
    shutil.copy(text_corpus / "textwrap.py", folder / "b.txt")
    (folder / "same_as_a.txt").symlink_to(folder / "a.txt")
    os.link(folder / "b.txt", folder / "hard_link_to_b.txt")
    (folder / "sub").mkdir()
    (folder / "sub" / "again.txt").symlink_to(folder / "a.txt")
    files, _ = local_files(str(folder))
    assert sorted(Path(f).name for f in files) == ["a.txt", "b.txt"]
    config = load_config("tiny", [f"data.source={folder}"])
    train, val, _ = text_splits(config.data, tmp_path / "cache")  # no "Two examples share the same hashed key"
    assert len(train) + len(val) == 2


# -- memory check before allocation -------------------------------------------------------------------------------
def test_a_config_larger_than_this_machine_is_refused_before_anything_is_allocated(meshtron_cli, monkeypatch):
    import meshtron.train.run.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("training started"))
    code, _, err = meshtron_cli("train", "--config", "llama-7b", "data.source=stdlib")
    line = one_line_error(code, err)
    assert "not enough memory" in line and "GiB" in line and "train.skip_memory_check=true" in line


def test_the_suggested_layout_fits_by_the_planners_own_figures(monkeypatch):
    from meshtron.configs.loader import config_to_dict, config_from_dict
    from meshtron.train.planner import memory_check
    from meshtron.train.planner.plan import make_plan

    config = load_config("gpt2-124m", ["train.batch_size=8"])
    need = make_plan(config, 8).total_bytes
    monkeypatch.setattr(memory_check, "device_memory", lambda devices: (need * 0.6, "test memory", 1))
    with pytest.raises(memory_check.UserError) as refused:
        memory_check.check_memory(config, 8, [None])
    message = str(refused.value)
    overrides = message.split("add ", 1)[1].split(",")[0].split()
    assert overrides and all("=" in o for o in overrides), message
    fixed = config_from_dict(config_to_dict(config), overrides)
    assert make_plan(fixed, 8).total_bytes <= need * 0.6
    memory_check.check_memory(fixed, 8, [None])  # the suggestion passes the check it came from
    skip = config_from_dict(config_to_dict(config), ["train.skip_memory_check=true"])
    memory_check.check_memory(skip, 8, [None])


# -- the record resumes as cleanly as the state; corruption cannot hide --------------------------------------------
def _steps_in_metrics(run_dir: Path) -> list[int]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["step"] for x in lines if "loss" in x and "tokens_per_s" in x]


def _steps_in_events(run_dir: Path) -> list[int]:
    from tensorboardX.proto.event_pb2 import Event

    from meshtron.train.run.record import read_records

    steps = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        for record in read_records(path):
            event = Event.FromString(record)
            steps += [event.step for v in event.summary.value if v.tag == "loss"]
    return steps


def _flip_one_byte_of_array_data(checkpoint: Path) -> None:
    """Flip a byte in the middle of the largest array data file (not a structural file) of a checkpoint."""
    arrays = [p for p in checkpoint.rglob("*") if p.is_file() and p.parent.name == "d"]
    data = max(arrays, key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))


def test_a_resume_cuts_the_record_back_and_a_flipped_byte_is_caught_by_its_checksum(meshtron_cli, tmp_path,
                                                                                      text_corpus):
    from meshtron.train.run.loop import train

    run_dir = tmp_path / "run"
    base = TINY + [f"data.source={text_corpus}", "train.log_every=1", "checkpoint.every=3",
                   "checkpoint.async_save=false"]
    # the default sample (64 tokens) is longer than half the context of 32: clamped before training, exit 0
    with_sample = [x for x in base if not x.startswith("train.sample_tokens")]
    code, out, err = meshtron_cli("train", "--run-dir", run_dir, *with_sample, "train.steps=6")
    assert code == 0, err
    assert "train.sample_tokens=64 is more than half the model's context of 32 tokens: the sample has 16" in out
    assert "sample:" in out
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    before = _steps_in_metrics(run_dir)
    _flip_one_byte_of_array_data(run_dir / "checkpoints" / "6")
    said = []
    result = train(load_config("tiny", base + ["train.steps=8"]), run_dir, log=said.append)
    assert any("checkpoint 6 is unreadable" in s and "checksum" in s for s in said), said
    assert result.start_step == 3
    assert any(p.name.startswith("unreadable-6") for p in (run_dir / "checkpoints").iterdir())
    assert before == [1, 2, 3, 4, 5, 6]
    assert _steps_in_metrics(run_dir) == [1, 2, 3, 4, 5, 6, 7, 8]  # steps 4-6 once, from the resumed run
    assert sorted(_steps_in_events(run_dir)) == [1, 2, 3, 4, 5, 6, 7, 8]
    cut = [json.loads(x) for x in (run_dir / "metrics.cut.jsonl").read_text().splitlines()]
    assert [x["step"] for x in cut if "tokens_per_s" in x] == [4, 5, 6]  # kept, never deleted
    assert any((run_dir / "tensorboard.cut").rglob("events.out.tfevents.*"))


def test_checksums_do_not_depend_on_the_layout():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from meshtron.train.run.checksums import checksums

    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("a", "b"))
    layouts = [jax.device_put(x, NamedSharding(mesh, spec)) for spec in (P(), P("a"), P("a", "b"), P(None, "b"))]
    sums = [checksums({"x": v}) for v in layouts]
    words = x.view(np.uint32).reshape(-1).astype(np.uint64)
    expected = [int(words.sum() % 2**32), int((words * np.arange(1, words.size + 1, dtype=np.uint64)).sum() % 2**32)]
    assert all(s == {"['x']": expected} for s in sums)


# -- the supervisors' liveness channel ----------------------------------------------------------------------------
def _liveness_pair():
    import socket

    from meshtron.tools.liveness import Liveness

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1] - 1  # the channel listens on the coordinator's port + 1
    logs = []
    zero = Liveness(f"127.0.0.1:{port}", 0, 2, logs.append)
    one = Liveness(f"127.0.0.1:{port}", 1, 2, logs.append)
    for _ in range(20):  # one connects, zero accepts
        one.poll(0.05), zero.poll(0.05)
        if one.peers and zero.peers:
            break
    assert one.peers and zero.peers and not any(" off" in line for line in logs)
    return zero, one


def test_a_supervisor_that_disappears_is_noticed_by_the_others_and_a_finished_one_is_not():
    zero, one = _liveness_pair()
    one.close(finished=True)  # process 1's work ended on its own
    assert all(zero.poll(0.05) is None for _ in range(5))
    zero.close(finished=True)

    zero, one = _liveness_pair()
    one.close(finished=False)  # process 1 is gone
    assert any(zero.poll(0.05) == "another process of the job is gone" for _ in range(5))
    zero.close(finished=False)

    zero, one = _liveness_pair()
    zero.close(finished=False)  # process 0 is gone
    assert any(one.poll(0.05) for _ in range(5)) and "process 0" in one.lost
    one.close(finished=False)

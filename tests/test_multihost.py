"""Two processes x 4 CPU devices (jax.distributed on localhost) train like one process with 8 devices."""

import json
import socket
import subprocess

import pytest

from conftest import TINY, console_script

LAYOUT = ["parallel.data=4", "parallel.tensor=2", "parallel.zero_stage=3", "train.batch_size=16", "train.steps=6",
          "train.log_every=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines if "loss" in x}


def train_cmd(run_dir, corpus, devices, *extra):
    return [console_script(), "--cpu-devices", str(devices), "train", "--run-dir", str(run_dir), *TINY, *LAYOUT,
            f"data.source={corpus}", *extra]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, text_corpus):
    run_dir = tmp_path_factory.mktemp("mh") / "one"
    proc = subprocess.run(train_cmd(run_dir, text_corpus, 8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return losses(run_dir)


def test_two_processes_match_one_process_with_eight_devices(one_process, tmp_path, text_corpus):
    run_dir, port = tmp_path / "two", free_port()
    procs = [subprocess.Popen(train_cmd(run_dir, text_corpus, 4, "--coordinator", f"127.0.0.1:{port}",
                                        "--num-processes", "2", "--process-id", str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    two = losses(run_dir)
    assert sorted(two) == sorted(one_process) == list(range(1, 7))
    for step, loss in one_process.items():
        assert two[step] == pytest.approx(loss, abs=1e-5)
    # logged once: only process 0 prints the summary and writes metrics
    assert "run directory" in outputs[0][0] and "run directory" not in outputs[1][0]
    assert len([1 for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]) == 6


def test_incomplete_multiprocess_flags_are_a_one_line_error(meshtron_cli):
    code, _, err = meshtron_cli("train", "--coordinator", "127.0.0.1:1234")
    assert code == 2 and "--num-processes" in err and "\n" not in err.strip()

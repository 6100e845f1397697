"""A checkpoint written by earlier Meshtron code (tests/data/resume_run, made by make_resume_fixture.py)
still resumes, and continues the loss curve of the uninterrupted run it was cut from."""

import json
import shutil
from pathlib import Path

import pytest

from meshtron.configs import load_config
from meshtron.train.run.loop import train

DATA = Path(__file__).parent / "data"


def test_checkpoint_from_earlier_code_resumes_the_same_loss_curve(tmp_path):
    expected = json.loads((DATA / "resume_run_expected.json").read_text())
    run_dir = tmp_path / "run"
    shutil.copytree(DATA / "resume_run", run_dir)
    config = load_config("tiny", expected["overrides"] + [f"data.source={DATA / 'resume_corpus'}"])
    result = train(config, run_dir, log=lambda *a, **k: None)
    assert result.start_step == 3 and result.steps_done == 5
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {str(x["step"]): x["loss"] for x in lines if "loss" in x}
    assert sorted(losses, key=int) == ["1", "2", "3", "4", "5"]
    for step in ("4", "5"):  # steps 1-3 were written by the old code; 4 and 5 by this code, from its checkpoint
        assert losses[step] == pytest.approx(expected["losses"][step], abs=1e-4)

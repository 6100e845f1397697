"""Writes tests/data/resume_run/: a small run directory interrupted after 3 of 5 steps, plus the losses of
steps 4 and 5 from an uninterrupted run. Written once by Meshtron before the 2026-11-30 restructure, so
test_resume_fixture.py proves that checkpoints written by older code still resume. Do not regenerate it
casually: its point is that it was written by earlier code.

Regenerated on 2026-12-01 from commit f634d6f with one line changed in train/corpus.py: documents keyed by
their path inside the corpus instead of their absolute path, so the data order (and so this loss curve)
no longer depends on where the checkout sits.

    python tests/data/make_resume_fixture.py   (from the repository root, on 8 simulated CPU devices)
"""

import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"  # as the tests run: data=8
HERE = Path(__file__).resolve().parent
OVERRIDES = ["model.family=llama", "model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1",
             "model.d_ff=64", "model.vocab_size=512", "model.seq_len=16", "train.batch_size=8", "train.steps=5",
             "train.warmup_steps=1", "train.log_every=1", "train.lr=3e-3", "train.eval_batches=1",
             "train.sample_tokens=0", "checkpoint.async_save=false"]


def main() -> None:
    from meshtron.configs import load_config
    from meshtron.train.loop import train

    corpus = HERE / "resume_corpus"
    if not corpus.is_dir():
        corpus.mkdir()
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        for name in ("heapq.py", "shlex.py", "textwrap.py", "string.py"):
            shutil.copy(stdlib / name, corpus / name)
    config = load_config("tiny", OVERRIDES + [f"data.source={corpus}", "data.tokenizer_chars=100000"])
    out, reference = HERE / "resume_run", HERE / "_reference_run"
    for d in (out, reference):
        shutil.rmtree(d, ignore_errors=True)
    quiet = lambda *a, **k: None  # noqa: E731
    train(config, reference, log=quiet)
    train(config, out, log=quiet, stop_after=3)
    lines = [json.loads(x) for x in (reference / "metrics.jsonl").read_text().splitlines()]
    losses = {str(x["step"]): x["loss"] for x in lines if "loss" in x}
    (HERE / "resume_run_expected.json").write_text(json.dumps({"overrides": OVERRIDES, "losses": losses}, indent=1))
    shutil.rmtree(reference)
    for lock in out.glob(".lock*"):
        lock.unlink()


if __name__ == "__main__":
    sys.exit(main())

"""Shared test setup: 8 simulated CPU devices, a private cache, tiny configs."""

import os

# Before anything imports jax: every test can build meshes of up to 8 devices. The tests check what is
# computed, not how fast: XLA:CPU's backend optimisation (LLVM) is turned off, which cuts compile time,
# most of the suite's time, by about 4x. Set --xla_backend_optimization_level yourself to test with it on.
_flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import shutil  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY = ["model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.d_ff=128", "model.vocab_size=512",
        "model.seq_len=32", "train.batch_size=8", "train.steps=10", "train.warmup_steps=2", "train.log_every=5",
        "train.eval_batches=2", "train.sample_tokens=0"]


@pytest.fixture(scope="session", autouse=True)
def meshtron_cache(tmp_path_factory):
    """Prepared datasets and tokenizers are shared by the whole session, never by the user's cache."""
    path = tmp_path_factory.mktemp("meshtron-cache")
    os.environ["MESHTRON_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A small folder of real Python source (about 300 KB) to train on quickly."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("corpus")
    names = ["argparse.py", "textwrap.py", "string.py", "shlex.py", "fractions.py", "difflib.py", "heapq.py",
             "bisect.py", "functools.py", "dataclasses.py"]
    for name in names:
        shutil.copy(root / name, out / name)
    return out


@pytest.fixture(scope="session")
def sp_model(text_corpus, tmp_path_factory) -> Path:
    """A 512-piece SentencePiece model trained by Meshtron on the test corpus (~200 KB of Python source)."""
    from meshtron.train.data.tokenizer import train_tokenizer

    texts = (p.read_text(encoding="utf-8") for p in sorted(text_corpus.glob("*.py")))
    return train_tokenizer(texts, 512, tmp_path_factory.mktemp("sp") / "tokenizer.model", max_chars=200_000).path


@pytest.fixture()
def meshtron_cli(capsys):
    """Run `meshtron ...` in-process; returns (exit code, stdout, stderr)."""
    from meshtron.tools.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def console_script() -> str:
    """Path of the installed `meshtron` console command next to this Python."""
    return str(Path(sys.executable).parent / "meshtron")

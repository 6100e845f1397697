"""Run-directory policy, in one place: what Meshtron writes there, one live writer at a time, nothing
written through links that leave it, full disks reported as such, directories that appear whole or not at all.

RUN_DIR/config.yaml        the resolved config (write_config)
RUN_DIR/metrics.jsonl      one JSON object per line (run/metrics.py), TensorBoard events beside it
RUN_DIR/checkpoints/       Orbax checkpoints (run/checkpoint.py)
RUN_DIR/tokenizer.*        the tokenizer the run trains with
RUN_DIR/.lock.N            one lock per process of a live run
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from pathlib import Path

import jax
import yaml

from meshtron.configs.errors import UserError
from meshtron.configs.loader import config_from_dict, config_to_dict
from meshtron.configs.schema import Config

# What Meshtron writes in a run directory (the lock files aside)
RUN_FILES = ("config.yaml", "metrics.jsonl", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
             "checkpoints", "tensorboard", "metrics.cut.jsonl", "tensorboard.cut")


def write_config(run_dir: Path, config: Config) -> None:
    """RUN_DIR/config.yaml: the resolved config, every key spelled out."""
    (Path(run_dir) / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def read_run_config(run_dir: Path) -> Config:
    """The resolved config a run directory was trained with (its config.yaml)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a Meshtron run directory (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text()))


def check_run_dir(run_dir: Path) -> None:
    """A --run-dir must be a folder, or a path where one can be made: anything else is one line."""
    run_dir = Path(run_dir)
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "is a file" if parent == run_dir else f"is below {parent}, which is not a folder"
                raise UserError(f"--run-dir {run_dir} {what}; give a folder (new, or a run to resume)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"--run-dir {run_dir}: {parent} is not writable; give a folder you can write to")
            return


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse a --run-dir that holds a run (or anything else): import never writes over a user's files."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file; give a new directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        what = "holds a Meshtron run" if any((run_dir / n).exists() for n in RUN_FILES) else "is not empty"
        raise UserError(f"--run-dir {run_dir} {what}; give a new or empty directory")


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Refuse a second live writer on the same run directory (the lock dies with its process)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f".lock.{jax.process_index()}"  # one per process of a multi-process job
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"run directory {run_dir} is in use by a live run ({owner}); wait for it or use another "
                        "--run-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def refuse_links_outside(run_dir: Path) -> None:
    """Meshtron writes only inside the run directory: a file or folder there that links elsewhere is refused."""
    root = run_dir.resolve()
    candidates = [run_dir / name for name in RUN_FILES] + list(run_dir.glob(".lock*"))
    for path in candidates:
        if path.is_symlink():
            target = path.resolve()
            if root not in target.parents and target != root:
                raise UserError(f"{path} links to {target}, outside the run directory; Meshtron only writes inside "
                                "it: remove the link or use another --run-dir")


def is_disk_full(error: BaseException) -> bool:
    """True if `error` (or what caused it) is a full disk or quota; Orbax/TensorStore wrap the OSError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def atomic_dir(out_dir: Path, overwrite: bool = False):
    """Yield a fresh sibling temp dir that becomes `out_dir` only when the block succeeds."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise UserError(f"{out_dir} already exists and is not empty; choose a new directory or remove it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

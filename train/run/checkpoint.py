"""Orbax checkpoints in RUN_DIR/checkpoints/: atomic, asynchronous, restorable onto another mesh.

Each checkpoint holds the parameters and optimizer state (sharded arrays, written by every
process for its own shards) and a JSON `meta` item: the step, the seed (every random
stream is a function of seed and step), the data position (batches consumed), the
resolved config, the tokenizer and a checksum of every saved array (train/run/checksums.py),
verified when the checkpoint is restored. Orbax writes into a temporary directory and renames
it when complete, so a half-written checkpoint is never picked up.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from meshtron.configs.errors import UserError
from meshtron.configs.loader import config_from_dict, config_to_dict
from meshtron.configs.schema import Config, shape_keys
from meshtron.parallel.zero import logical_names
from meshtron.train.run.checksums import checksums, verify

CHECKPOINT_DIR = "checkpoints"
VOCAB = "vocab"  # the logical axis whose padded length may differ between meshes


def checkpoint_meta(config: Config, step: int, tokenizer_bytes: bytes, vocab_rows: int) -> dict:
    """What a checkpoint needs besides arrays to continue exactly."""
    return {
        "step": int(step),
        "seed": config.train.seed,
        "data_position": int(step),  # global batches consumed; the data order is a function of (seed, position)
        "vocab_rows": int(vocab_rows),
        "config": config_to_dict(config),
        "tokenizer_sha256": hashlib.sha256(tokenizer_bytes).hexdigest(),
        "tokenizer": base64.b64encode(tokenizer_bytes).decode("ascii"),
    }


class Checkpointer:
    """Saves and restores (params, opt_state, meta) under RUN_DIR/checkpoints."""

    def __init__(self, run_dir: Path, keep: int = 3, async_save: bool = True):
        self.directory = (Path(run_dir) / CHECKPOINT_DIR).resolve()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, params, opt_state, meta: dict, force: bool = False) -> None:
        """Start writing a checkpoint (returns before it is on disk when async)."""
        state = {"params": params, "opt_state": opt_state}
        meta = {**meta, "checksums": checksums(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=force)

    def read_meta(self, step: int) -> dict:
        """The JSON meta of a checkpoint."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_params, abstract_opt) -> tuple:
        """(params, opt_state, meta) restored onto the shardings of the abstract targets.

        The embedding and output layer may have a different number of padded vocabulary rows
        than when saved (another tensor degree): those are restored as saved and re-padded
        (padded rows are always zero).
        """
        meta = self.read_meta(step)
        full = {"params": abstract_params, "opt_state": abstract_opt}
        target, repad = _as_saved(full, _vocab_rows(abstract_params), int(meta.get("vocab_rows", 0)))
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        verify(meta.get("checksums"), restored["state"], f"checkpoint {step}")
        state = repad(restored["state"])
        return state["params"], state["opt_state"], meta

    def quarantine(self, step: int) -> Path:
        """Move an unreadable checkpoint aside (kept for inspection, never deleted) so the step can be redone."""
        source = self.directory / str(step)
        target = self.directory / f"unreadable-{step}-{int(time.time())}"
        source.rename(target)
        self.manager.reload()
        return target

    def restore_params(self, step: int, abstract_params):
        """Only the params of checkpoint `step` (the optimizer state is never read), onto the shardings of
        `abstract_params`, re-padding vocabulary rows as restore() does. Orbax binds one restore kind per
        manager: use a fresh Checkpointer for this."""
        meta = self.read_meta(step)
        saved_rows = int(meta.get("vocab_rows", 0))
        target, repad = _as_saved(abstract_params, _vocab_rows(abstract_params), saved_rows)
        target = {"params": target}
        args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                      partial_restore=True)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        verify(meta.get("checksums"), restored, f"checkpoint {step}")
        return repad(restored["params"])

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def check_compatible(saved: dict, config: Config) -> None:
    """Refuse, before loading anything, a resume whose model differs from the checkpoint's in a key that
    defines the parameters' shapes (marked `shape` in configs/schema.py)."""
    before = config_from_dict(saved).model
    for key in shape_keys(config.model):
        old, new = getattr(before, key), getattr(config.model, key)
        if old != new:
            raise UserError(f"cannot resume: the checkpoint has model.{key}={old} but the config asks for {new}; "
                            f"drop the override or start a new --run-dir")


def _vocab_rows(abstract_params) -> int:
    return int(jax.tree.leaves(abstract_params["embed"]["tokens"])[0].shape[0])


def _as_saved(abstract, want_rows: int, saved_rows: int):
    """(`abstract` with the checkpoint's vocabulary rows, a function re-padding restored arrays to `abstract`)."""
    if not saved_rows or saved_rows == want_rows:
        return abstract, lambda restored: restored
    axes = _vocab_axes(abstract)
    target = jax.tree.map(lambda x, axis: _with_rows(x, axis, saved_rows), abstract, axes)
    return target, lambda restored: jax.tree.map(lambda x, want, axis: _resize_rows(x, want, axis, saved_rows),
                                                 restored, abstract, axes)


def _vocab_axes(abstract):
    """`abstract` with each leaf replaced by the axis its parameter names `vocab` (-1: none), read from the
    logical names the model gave it (never guessed from lengths: d_model may equal the padded rows)."""
    def axis_of(x):
        if not isinstance(x, nnx.Variable):
            return -1
        names = logical_names(x)
        return x.replace(names.index(VOCAB) if VOCAB in names else -1)
    return jax.tree.map(axis_of, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _with_rows(x, axis: int, saved_rows: int):
    """An abstract target with the saved row count on the vocabulary axis (replicated along it)."""
    if not isinstance(x, jax.ShapeDtypeStruct) or axis < 0:
        return x
    shape = x.shape[:axis] + (saved_rows,) + x.shape[axis + 1:]
    spec = list(x.sharding.spec) + [None] * (len(shape) - len(x.sharding.spec))
    spec[axis] = None
    sharding = jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec(*spec))
    return jax.ShapeDtypeStruct(shape, x.dtype, sharding=sharding)


def _resize_rows(x, want, axis: int, saved_rows: int):
    if not isinstance(want, jax.ShapeDtypeStruct) or axis < 0 or x.shape == want.shape:
        return x
    keep = min(saved_rows, want.shape[axis])
    host = np.asarray(jax.device_get(x))
    trimmed = np.take(host, np.arange(keep), axis=axis)
    pad = [(0, 0)] * host.ndim
    pad[axis] = (0, want.shape[axis] - keep)
    return jax.device_put(np.pad(trimmed, pad), want.sharding)


def tokenizer_from_meta(meta: dict) -> bytes:
    """The tokenizer model saved in a checkpoint's meta (verified against its hash)."""
    data = base64.b64decode(meta.get("tokenizer", ""))
    if hashlib.sha256(data).hexdigest() != meta.get("tokenizer_sha256"):
        raise UserError("the checkpoint's tokenizer does not match its recorded hash (corrupt checkpoint)")
    return data

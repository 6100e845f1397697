"""A run directory's parameters, in and out: read a checkpoint's params onto one device (for
generate and export), or write a new run directory from imported params (for import).

Whatever mesh a run was trained on (data x tensor x ZeRO-3 on 8 devices, say), its params are
restored onto a 1-device mesh with the 1-device layout, so every reader sees the same
consolidated weights. Only the params are read: the optimizer state (twice their size under
Adam) is skipped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from meshtron.configs.errors import UserError
from meshtron.configs.loader import config_from_dict, config_to_dict, load_config, validate
from meshtron.configs.objectives import ARCH_OBJECTIVES
from meshtron.configs.schema import Config, ModelConfig
from meshtron.train.run.checkpoint import Checkpointer, checkpoint_meta
from meshtron.train.run.rundir import atomic_dir, read_run_config, write_config
from meshtron.train.run.step import Training, build_training
from meshtron.train.data.tokenizer import Tokenizer

def single_device_training(config: Config) -> Training:
    """`config`'s model and optimizer on a mesh of the first device, unsharded (ZeRO stage 0)."""
    from meshtron.parallel.mesh import mesh_for

    single = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, replica=1, data=1, tensor=1,
                                                                      zero_stage=0))
    shape, mesh = mesh_for(single, jax.devices()[:1])
    return build_training(single, mesh, shape)


@dataclass
class RunParams:
    """A run's config, checkpoint step, and params on one device (an nnx.State)."""

    config: Config
    step: int
    training: Training
    params: object

    def model(self):
        """The Transformer holding these params."""
        return nnx.merge(self.training.graphdef, self.params)

    def pure_params(self) -> dict:
        """The params as a nested dict of host arrays (what export_hf / export_safetensors take)."""
        return jax.tree.map(np.asarray, nnx.to_pure_dict(self.params))


def load_run_params(run_dir: Path, step: int | None = None) -> RunParams:
    """The params of a run directory's latest (or given) checkpoint on one device, whatever mesh trained them."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir} has no checkpoint yet; train it first")
    ckpt = Checkpointer(run_dir, async_save=False)
    try:
        steps = ckpt.steps()
        if not steps:
            raise UserError(f"{run_dir} has no checkpoint yet; train it first")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise UserError(f"--step {step}: {run_dir} has checkpoints at steps {', '.join(map(str, steps))}")
        training = single_device_training(config)
        abstract_params, _ = training.abstract_state()
        params = ckpt.restore_params(step, abstract_params)
    finally:
        ckpt.close()
    return RunParams(config=config, step=step, training=training, params=params)


def imported_config(model_cfg: ModelConfig) -> Config:
    """An imported model with the tiny preset's train, data and checkpoint settings. Training it keeps the
    tokenizer saved in the run directory (a run always does), never one trained on new text."""
    base = load_config("tiny")
    config = dataclasses.replace(
        base, name=f"imported-{model_cfg.family}", model=model_cfg,
        # the end-of-training sample must fit the context (tiny's 64 tokens assume seq_len 128)
        train=dataclasses.replace(base.train, sample_tokens=min(base.train.sample_tokens, model_cfg.seq_len // 2),
                                  objective=ARCH_OBJECTIVES[model_cfg.arch][0]))
    validate(config)
    return config_from_dict(config_to_dict(config))  # exactly what config.yaml will give back


def write_run(run_dir: Path, config: Config, params: dict, tokenizer: Tokenizer) -> None:
    """Write a new run directory: config.yaml, the tokenizer and a step-0 checkpoint of `params` (a pure dict,
    vocabulary padded for one device) with a fresh optimizer state."""
    training = single_device_training(config)
    abstract_params, _ = training.abstract_state()
    state = jax.tree.map(lambda x: x, abstract_params)  # a copy to fill in
    nnx.replace_by_pure_dict(state, params)
    state = jax.tree.map(lambda x, want: jax.device_put(np.asarray(x, want.dtype), want.sharding), state,
                         abstract_params)
    opt_state = training.init_opt_state(state)
    with atomic_dir(run_dir) as tmp:  # a failed import leaves no half-written run behind
        write_config(tmp, config)
        tokenizer.save_to(tmp)
        ckpt = Checkpointer(tmp, async_save=False)
        ckpt.save(0, state, opt_state, checkpoint_meta(config, 0, tokenizer.model_bytes(), training.vocab_rows),
                  force=True)
        ckpt.close()

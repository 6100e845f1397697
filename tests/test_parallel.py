"""Sharded training equals one device: every layout of the parallel issue, every ZeRO stage."""

import jax
import numpy as np
import pytest

from meshtron.configs import ConfigError, load_config
from meshtron.parallel.mesh import mesh_for, resolve_mesh_shape
from meshtron.train.run.step import build_training

from conftest import TINY

LAYOUTS = {
    "data8": ["parallel.data=8"],
    "data4_tensor2": ["parallel.data=4", "parallel.tensor=2"],
    "data2_tensor4": ["parallel.data=2", "parallel.tensor=4"],
    "replica2_data2_tensor2": ["parallel.replica=2", "parallel.data=2", "parallel.tensor=2"],
}
STEPS = 10
BASE = TINY + ["model.family=llama", "model.n_kv_heads=4", "model.vocab_size=500", "train.batch_size=16",
               "train.lr=1e-2", "train.warmup_steps=2"]


def run_steps(overrides, n_devices):
    """Losses of STEPS steps on fixed random batches, and the final parameters (true vocabulary rows)."""
    config = load_config("tiny", BASE + overrides)
    shape, mesh = mesh_for(config, jax.devices()[:n_devices])
    training = build_training(config, mesh, shape)
    params = training.init_params()
    opt_state = training.init_opt_state(params)
    step = training.jit_train_step()
    rng = np.random.default_rng(0)
    # two fixed batches in turn: random tokens, but memorisable, so the loss must fall
    batches = [rng.integers(0, 500, (config.train.batch_size, config.model.seq_len + 1)) for _ in range(2)]
    losses = []
    for i in range(STEPS):
        tokens = batches[i % 2]
        params, opt_state, metrics = step(params, opt_state, training.shard_batch(tokens), i)
        losses.append(float(metrics["loss"]))
    final = {"/".join(map(str, path)): np.asarray(v[...]) for path, v in
             __import__("flax").nnx.to_flat_state(params)}
    final["embed/tokens"] = final["embed/tokens"][:500]
    final["head"] = final["head"][:, :500]
    return np.array(losses), final


@pytest.fixture(scope="module")
def single_device():
    return run_steps(["parallel.data=1"], 1)


def test_training_makes_progress_on_one_device(single_device):
    losses, _ = single_device
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sharded_training_matches_one_device(single_device, layout, stage):
    ref_losses, ref_params = single_device
    losses, params = run_steps(LAYOUTS[layout] + [f"parallel.zero_stage={stage}"], 8)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=2e-5)
    for name, ref in ref_params.items():
        np.testing.assert_allclose(params[name], ref, rtol=1e-4, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_accumulation_matches_one_big_batch(stage):
    whole, _ = run_steps(["parallel.data=4", "parallel.tensor=2", f"parallel.zero_stage={stage}"], 8)
    accumulated, _ = run_steps(["parallel.data=4", "parallel.tensor=2", f"parallel.zero_stage={stage}",
                                "train.grad_accum=2"], 8)
    np.testing.assert_allclose(accumulated, whole, rtol=2e-5, atol=2e-5)


def test_data_degree_minus_one_takes_the_remaining_devices():
    shape = resolve_mesh_shape(load_config("tiny", BASE + ["parallel.tensor=2"]), 8)
    assert (shape.replica, shape.data, shape.tensor) == (1, 4, 2)


@pytest.mark.parametrize("overrides,key", [
    (["parallel.data=3"], "parallel.data"),  # 3 x 1 != 8 devices
    (["parallel.tensor=3"], "parallel.tensor"),  # does not divide the 4 heads
    (["parallel.data=8", "train.batch_size=12"], "train.batch_size"),  # 12 rows over 8 shards
    (["parallel.data=8", "parallel.zero_stage=1", "model.d_model=68", "model.n_heads=2", "model.n_kv_heads=2"],
     "parallel.zero_stage"),  # 68 does not split over 8
])
def test_impossible_meshes_are_one_line_errors(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve_mesh_shape(load_config("tiny", BASE + overrides), 8)
    assert key in str(err.value) and "\n" not in str(err.value)

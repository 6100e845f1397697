"""Speed switches change speed, not results: bf16 compute, attention kernels, donation, prefetch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meshtron.configs import load_config
from meshtron.parallel.mesh import mesh_for
from meshtron.train.run.step import build_training

from conftest import TINY


def losses_and_params(*overrides, steps=4):
    config = load_config("tiny", TINY + ["parallel.data=1", *overrides])
    shape, mesh = mesh_for(config, jax.devices()[:1])
    training = build_training(config, mesh, shape)
    params = training.init_params()
    opt = training.init_opt_state(params)
    step = training.jit_train_step()
    batch = training.shard_batch(np.random.default_rng(0).integers(0, 500, (8, config.model.seq_len + 1)))
    losses = []
    for i in range(steps):
        params, opt, metrics = step(params, opt, batch, i)
        losses.append(float(metrics["loss"]))
    return np.array(losses), params


def test_bfloat16_compute_keeps_float32_master_weights_and_tracks_float32():
    f32, _ = losses_and_params("model.compute_dtype=float32")
    bf16, params = losses_and_params("model.compute_dtype=bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    np.testing.assert_allclose(bf16, f32, rtol=2e-2)  # bf16 keeps ~3 significant digits


ON_GPU = jax.default_backend() == "gpu"


@pytest.mark.parametrize("attention", ["xla", pytest.param("cudnn", marks=pytest.mark.skipif(
    not ON_GPU, reason="off a GPU model.attention=cudnn runs XLA attention: comparing it with XLA tests nothing"))])
def test_attention_kernels_give_the_same_results(attention):
    """On a GPU, `cudnn` is cuDNN's flash attention and must match XLA's; its speed is in BENCHMARKS.md."""
    auto, _ = losses_and_params("model.attention=auto")
    chosen, _ = losses_and_params(f"model.attention={attention}")
    np.testing.assert_allclose(chosen, auto, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_blocked_causal_attention_on_cpu_trains_as_the_whole_causal_kernel(family):
    # at seq 128 the CPU's `auto` attention runs two query blocks (the upper triangle never computed);
    # `xla` runs jax.nn.dot_product_attention over the whole square: same losses, same weights
    shape = ["model.seq_len=128", f"model.family={family}", "model.n_kv_heads=2"]
    auto, auto_params = losses_and_params("model.attention=auto", *shape, steps=3)
    whole, whole_params = losses_and_params("model.attention=xla", *shape, steps=3)
    np.testing.assert_allclose(auto, whole, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(auto_params), jax.tree.leaves(whole_params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # Adam magnifies float reassociation


def test_the_step_donates_parameter_and_optimizer_buffers():
    config = load_config("tiny", TINY + ["parallel.data=1"])
    shape, mesh = mesh_for(config, jax.devices()[:1])
    training = build_training(config, mesh, shape)
    params = training.init_params()
    opt = training.init_opt_state(params)
    leaf = jax.tree.leaves(params)[0]
    training.jit_train_step()(params, opt, training.shard_batch(np.zeros((8, 33), np.int32)), 0)
    assert leaf.is_deleted()  # updated in place: no second copy of the model per step


def test_prefetch_depth_does_not_change_the_batches(text_corpus):
    from meshtron.train.data.prepare import prepare_data

    ds = prepare_data(load_config("tiny", TINY + [f"data.source={text_corpus}"]), log=lambda *a: None)
    a = ds.train_batches(8, seed=0, prefetch=0)
    b = ds.train_batches(8, seed=0, prefetch=4)
    for _ in range(5):
        np.testing.assert_array_equal(next(a), next(b))

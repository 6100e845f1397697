"""The SPMD pipeline executor on a tiny residual-MLP language model against plain autodiff on one device,
and the compiled memory of 1F1B against GPipe."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from meshtron.parallel.pipeline.executor import run_schedule
from meshtron.parallel.pipeline.schedule import build_schedule

VOCAB, D, SEQ = 13, 32, 8


def layer(x, w):
    return x + jnp.tanh(x @ w), None


def stage_fn(w, x, mb, k):
    return jax.lax.scan(layer, x, w)[0]  # this stage's layers, in order


def first_fn(shared, ids):
    return shared["embed"][ids[:, :-1]]  # (b, s, d)


def last_fn(shared, y, ids, total_tokens):
    logp = jax.nn.log_softmax(y @ shared["head"])
    return -jnp.sum(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)) / total_tokens


def toy(layers: int, batch: int):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    weights = jax.random.normal(k1, (layers, D, D)) * 0.2
    shared = {"embed": jax.random.normal(k2, (VOCAB, D)), "head": jax.random.normal(k3, (D, VOCAB)) * 0.2}
    tokens = jax.random.randint(k4, (batch, SEQ + 1), 0, VOCAB)
    return weights, shared, tokens


def reference(weights, shared, tokens):
    """Loss and gradients by plain autodiff on one device."""
    def loss(w, sh):
        y = jax.lax.scan(layer, first_fn(sh, tokens), w)[0]
        return last_fn(sh, y, tokens, tokens.shape[0] * SEQ)
    return jax.value_and_grad(loss, argnums=(0, 1))(weights, shared)


def pipelined(kind, stages, micro, virtual, data, weights, shared, tokens):
    """jit of the executor on a (stage, data) mesh; weights arranged (v, P, layers per chunk, ...)."""
    mesh = jax.make_mesh((stages, data), ("stage", "data"), axis_types=(AxisType.Auto,) * 2,
                         devices=jax.devices()[:stages * data])
    schedule = build_schedule(kind, stages, micro, virtual)
    v = schedule.virtual
    per_chunk = weights.shape[0] // (v * stages)
    last = functools.partial(last_fn, total_tokens=tokens.shape[0] * SEQ)

    def local(w, sh, toks):
        vary = lambda a: jax.lax.pcast(a, ("data",), to="varying")  # noqa: E731  gradients stay per device
        w, sh = vary(w.reshape((v, per_chunk) + w.shape[3:])), jax.tree.map(vary, sh)
        micro_batches = toks.reshape(micro, -1, toks.shape[-1])
        loss, gw, gs = run_schedule(schedule, first_fn, stage_fn, last, w, sh, micro_batches, micro_batches)
        psum = lambda a: jax.lax.psum(a, "data")  # noqa: E731
        return psum(loss), psum(gw).reshape((v, 1) + gw.shape[1:]), jax.tree.map(psum, gs)

    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(None, "stage"), P(), P("data")),
                               out_specs=(P(), P(None, "stage"), P()), check_vma=True))
    arranged = weights.reshape((v, stages, per_chunk) + weights.shape[1:])
    return fn, (arranged, shared, tokens)


@pytest.mark.parametrize("kind,stages,micro,virtual,data", [
    ("gpipe", 2, 4, 1, 4), ("1f1b", 4, 8, 1, 2), ("interleaved", 2, 4, 2, 2), ("1f1b", 1, 2, 1, 8)])
def test_pipelined_gradients_equal_autodiff_on_one_device(kind, stages, micro, virtual, data):
    weights, shared, tokens = toy(layers=8, batch=micro * data * 2)
    ref_loss, (ref_w, ref_shared) = reference(weights, shared, tokens)
    fn, args = pipelined(kind, stages, micro, virtual, data, weights, shared, tokens)
    loss, grad_w, grad_shared = fn(*args)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(grad_w).reshape(ref_w.shape), ref_w, rtol=1e-4, atol=1e-5)
    for name in ref_shared:
        np.testing.assert_allclose(grad_shared[name], ref_shared[name], rtol=1e-4, atol=1e-5, err_msg=name)


def compiled_temp_bytes(kind: str) -> int:
    weights, shared, tokens = toy(layers=8, batch=16 * 2 * 4)
    fn, args = pipelined(kind, 4, 16, 1, 2, weights, shared, tokens)
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_1f1b_compiled_temporaries_are_at_most_40_percent_of_gpipe():
    # P=4, M=16: GPipe stashes 16 micro-batches' activations per stage, 1F1B at most 4
    gpipe, one_f_one_b = compiled_temp_bytes("gpipe"), compiled_temp_bytes("1f1b")
    assert one_f_one_b <= 0.4 * gpipe, (one_f_one_b, gpipe)

"""The transformer itself: causality, KV cache, GQA, RoPE, counts, switches, overfitting."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from meshtron.configs import load_config
from meshtron.model import build_model
from meshtron.model.counting import count_params
from meshtron.model.families import FAMILIES as REGISTERED
from meshtron.model.layers import apply_rope
from meshtron.model.transformer import Transformer

from conftest import TINY


def tiny(*overrides):
    return load_config("tiny", TINY + list(overrides)).model


def logits_of(model, tokens):
    return np.asarray(model(jnp.asarray(tokens))[0])


# every registered decoder family (model/families.py; encoders: tests/test_encoders.py), and the one switch
# no family sets by default
FAMILIES = ([(f"model.family={name}",) for name in sorted(REGISTERED) if REGISTERED[name].module is Transformer]
            + [("model.family=gpt2", "model.position=sinusoidal")])


@pytest.mark.parametrize("switches", FAMILIES)
def test_changing_a_future_token_leaves_earlier_logits_unchanged(switches):
    model = build_model(tiny(*switches), seed=0)
    tokens = np.random.default_rng(0).integers(0, 500, (2, 32))
    changed = tokens.copy()
    changed[:, 20] = (changed[:, 20] + 7) % 500
    a, b = logits_of(model, tokens), logits_of(model, changed)
    np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-6)
    assert np.abs(a[:, 20:] - b[:, 20:]).max() > 1e-4  # the change does reach later positions


@pytest.mark.parametrize("switches", FAMILIES + [("model.family=llama", "model.n_kv_heads=1")])
def test_kv_cache_decoding_equals_the_full_forward_pass(switches):
    model = build_model(tiny(*switches), seed=1)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 500, (2, 24)))
    full = np.asarray(model(tokens)[0])
    cache = model.init_cache(2, 32)
    prefix = 10
    logits, cache = model(tokens[:, :prefix], cache=cache, cache_index=0)
    steps = [np.asarray(logits)]
    for i in range(prefix, 24):
        logits, cache = model(tokens[:, i:i + 1], cache=cache, cache_index=i)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5)


def reference_attention(x, q, k, v, o):
    """Plain numpy multi-head attention with kv heads repeated per group (no RoPE, no bias)."""
    Q = np.einsum("bte,ehd->bthd", x, q)
    K = np.einsum("bte,ehd->bthd", x, k)
    V = np.einsum("bte,ehd->bthd", x, v)
    groups = Q.shape[2] // K.shape[2]
    K, V = np.repeat(K, groups, axis=2), np.repeat(V, groups, axis=2)  # query head h reads kv head h // groups
    scores = np.einsum("bqhd,bkhd->bhqk", Q, K) / np.sqrt(Q.shape[-1])
    T = x.shape[1]
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd,hde->bqe", p, V, o)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_attention_matches_a_reference_for_mha_gqa_and_mqa(kv_heads):
    from meshtron.model.attention import Attention

    cfg = tiny("model.family=gpt2", "model.bias=false", f"model.n_kv_heads={kv_heads}")
    attn = Attention(cfg, nnx.Rngs(params=3))
    x = np.random.default_rng(3).normal(size=(2, 16, 64)).astype(np.float32)
    ours, _ = attn(jnp.asarray(x), jnp.broadcast_to(jnp.arange(16), (2, 16)))
    ref = reference_attention(x, *(np.asarray(getattr(attn, n)[...]) for n in "qkvo"))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5)


def test_gqa_with_as_many_kv_heads_as_heads_is_mha():
    """n_kv_heads == n_heads is the multi-head model: same parameters, same logits."""
    mha = build_model(tiny("model.family=llama"), seed=4)
    gqa = build_model(tiny("model.family=llama", "model.n_kv_heads=4"), seed=4)
    tokens = np.random.default_rng(4).integers(0, 500, (2, 16))
    np.testing.assert_array_equal(logits_of(mha, tokens), logits_of(gqa, tokens))


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(5)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)

    def score(pq, pk):
        rq = apply_rope(q, jnp.array([[pq]]), 10000.0)
        rk = apply_rope(k, jnp.array([[pk]]), 10000.0)
        return float(jnp.sum(rq * rk))

    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
    assert score(0, 0) == pytest.approx(float(jnp.sum(q * k)), abs=1e-5)  # position 0 is no rotation
    assert abs(score(7, 3) - score(7, 5)) > 1e-3


def test_rope_preserves_norms():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 3, 16)), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(8) * 13, (2, 8))
    np.testing.assert_allclose(jnp.linalg.norm(apply_rope(x, pos, 10000.0), axis=-1),
                               jnp.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("switches", [
    ("model.family=gpt2",), ("model.family=llama",), ("model.family=palm",),
    ("model.family=llama", "model.n_kv_heads=2", "model.bias=true"),
    ("model.family=gpt2", "model.head_dim=32", "model.tie_embeddings=false"),
    ("model.family=llama", "model.norm=layernorm", "model.mlp=gelu", "model.position=sinusoidal"),
])
def test_parameter_count_equals_the_arrays_the_model_holds(switches):
    cfg = tiny(*switches)
    model = build_model(cfg, vocab_rows=cfg.vocab_size)  # unpadded: the count uses the true vocabulary
    held = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model)))
    assert count_params(cfg).total == held


def test_every_parameter_carries_logical_axis_names():
    model = build_model(tiny("model.family=gpt2"))
    for path, var in nnx.to_flat_state(nnx.state(model)):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == var[...].ndim, path


def test_scan_and_unrolled_layers_give_the_same_logits():
    tokens = np.random.default_rng(7).integers(0, 500, (2, 16))
    scanned = build_model(tiny(), seed=7)
    unrolled = build_model(tiny("model.scan_layers=false"), seed=7)
    # copy the stacked weights into the per-layer modules
    stacked = nnx.state(scanned.blocks)
    for i, block in enumerate(unrolled.blocks):
        nnx.update(block, jax.tree.map(lambda x: x[i], stacked))
    nnx.update(unrolled.embed, nnx.state(scanned.embed))
    nnx.update(unrolled.final_norm, nnx.state(scanned.final_norm))
    unrolled.head[...] = scanned.head[...]
    np.testing.assert_allclose(logits_of(unrolled, tokens), logits_of(scanned, tokens), atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_the_same_loss_and_gradients(remat):
    tokens = jnp.asarray(np.random.default_rng(8).integers(0, 500, (2, 17)))

    def loss_and_grads(cfg):
        graphdef, params = nnx.split(build_model(cfg, seed=8))
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p).token_losses(tokens[:, :-1], tokens[:, 1:]))  # noqa: E731
        return jax.value_and_grad(loss)(params)

    base_loss, base_grads = loss_and_grads(tiny())
    loss, grads = loss_and_grads(tiny(f"model.remat={remat}"))
    assert float(loss) == pytest.approx(float(base_loss), abs=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_chunked_loss_equals_the_whole_sequence_loss():
    tokens = jnp.asarray(np.random.default_rng(9).integers(0, 500, (2, 33)))
    whole = build_model(tiny(), seed=9)
    chunked = build_model(tiny("model.logits_chunk=8"), seed=9)
    a = whole.token_losses(tokens[:, :-1], tokens[:, 1:])
    b = chunked.token_losses(tokens[:, :-1], tokens[:, 1:])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_loss_ignores_padded_vocabulary_rows():
    cfg = tiny("model.vocab_size=500")
    model = build_model(cfg, seed=10, vocab_rows=cfg.vocab_size)  # no padding at all
    padded = build_model(cfg, seed=10)  # 512 rows: 12 padded
    tokens = jnp.asarray(np.random.default_rng(10).integers(0, 500, (2, 17)))
    a = model.token_losses(tokens[:, :-1], tokens[:, 1:])
    b = padded.token_losses(tokens[:, :-1], tokens[:, 1:])
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert float(jnp.abs(padded.embed.tokens[...][cfg.vocab_size:]).max()) == 0.0


def test_dropout_is_active_only_with_a_key():
    model = build_model(tiny("model.dropout=0.5"), seed=11)
    tokens = jnp.asarray(np.random.default_rng(11).integers(0, 500, (2, 17)))
    eval_a = model.token_losses(tokens[:, :-1], tokens[:, 1:])
    eval_b = model.token_losses(tokens[:, :-1], tokens[:, 1:])
    train = model.token_losses(tokens[:, :-1], tokens[:, 1:], dropout_key=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert float(jnp.abs(train - eval_a).max()) > 1e-3


@pytest.mark.parametrize("init", ["gpt2", "xavier", "kaiming"])
def test_initialisations_have_the_expected_scale(init):
    cfg = tiny(f"model.init={init}", "model.n_layers=8")
    model = build_model(cfg, seed=12)
    q = np.asarray(model.blocks.attn.q[...])  # (L, E, H, D): fan_in 64, fan_out 64
    down = np.asarray(model.blocks.mlp.down[...])  # (L, F, E): fan_in 128, fan_out 64
    expected = {"gpt2": (0.02, 0.02 / np.sqrt(16)), "xavier": (np.sqrt(2 / 128), np.sqrt(2 / 192)),
                "kaiming": (np.sqrt(2 / 64), np.sqrt(2 / 128))}[init]
    assert q.std() == pytest.approx(expected[0], rel=0.05)
    assert down.std() == pytest.approx(expected[1], rel=0.05)


def test_a_small_model_overfits_a_fixed_batch():
    cfg = tiny("model.family=llama")
    graphdef, params = nnx.split(build_model(cfg, seed=13))
    tokens = jnp.asarray(np.random.default_rng(13).integers(0, 500, (4, 33)))
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        loss_fn = lambda p: jnp.mean(nnx.merge(graphdef, p).token_losses(tokens[:, :-1], tokens[:, 1:]))  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    first = None
    for _ in range(150):
        params, opt, loss = step(params, opt)
        first = float(loss) if first is None else first
    assert first > 5.5 and float(loss) < 0.1


@pytest.mark.parametrize("seq,heads,kv_heads", [(128, 4, 4), (256, 8, 2), (192, 4, 1)])
def test_blocked_causal_attention_equals_the_whole_causal_kernel(seq, heads, kv_heads):
    # the CPU's query blocks (2-4, the fully masked upper triangle skipped) against jax's causal kernel over
    # the whole T x T square, values and gradients, multi-head, grouped-query and multi-query
    from meshtron.model.attention import causal_attention, query_blocks

    assert query_blocks(seq, None) == {128: 2, 256: 4, 192: 3}[seq]
    keys = jax.random.split(jax.random.key(seq), 4)
    q = jax.random.normal(keys[0], (2, seq, heads, 16))
    k, v = (jax.random.normal(key, (2, seq, kv_heads, 16)) for key in keys[1:3])
    probe = jax.random.normal(keys[3], (2, seq, heads, 16))

    def loss(attend, q, k, v):
        return jnp.sum(attend(q, k, v) * probe)

    whole = partial(jax.nn.dot_product_attention, is_causal=True)
    blocked = partial(causal_attention, scale=None, implementation=None)
    np.testing.assert_allclose(jax.jit(blocked)(q, k, v), jax.jit(whole)(q, k, v), atol=1e-5)
    gradient = lambda attend: jax.jit(jax.grad(partial(loss, attend), argnums=(0, 1, 2)))  # noqa: E731
    for g_blocked, g_whole in zip(gradient(blocked)(q, k, v), gradient(whole)(q, k, v)):
        np.testing.assert_allclose(g_blocked, g_whole, atol=1e-4)


def test_query_blocks_only_for_the_cpu_auto_kernel():
    from meshtron.model.attention import query_blocks
    from meshtron.parallel import spmd

    assert query_blocks(64, None) == 1  # one block of 64 queries: nothing to skip
    assert query_blocks(2048, None) == 4
    assert query_blocks(2048, "xla") == 1  # a kernel asked for by name runs as asked
    with spmd.active_layout(spmd.Layout(platform="tpu")):  # a TPU step compiled on a CPU host
        assert query_blocks(2048, None) == 1


def test_layer_scan_unrolls_only_for_a_cpu_step():
    from meshtron.model.layers import scan_unroll
    from meshtron.parallel import spmd

    cfg = load_config("tiny", TINY).model  # 2 layers, scan_unroll auto
    assert scan_unroll(cfg) == cfg.n_layers
    with spmd.active_layout(spmd.Layout(platform="tpu")):  # a TPU step compiled on a CPU host keeps the loop
        assert scan_unroll(cfg) == 1

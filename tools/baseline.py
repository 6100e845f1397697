"""An independent baseline: a GPT-2 / LLaMA train step written the way a JAX user writes one.

Nothing here comes from Meshtron: its own parameter layout (GPT-2's fused `c_attn`,
LLaMA's separate q/k/v/o and gate/up/down matrices as plain 2-D arrays), its own
initialisation, einsum attention with an explicit causal mask and a float32 softmax, a
Python loop over the layers, optax's cross-entropy and AdamW (global-norm clipping,
weight decay on matrices), parameters and optimizer state donated, one `jax.jit`.
`meshtron bench --baseline` times it beside Meshtron's step; tests/test_bench.py feeds it
Meshtron's weights (converted) and checks both compute the same loss.

The only input is a `Dims` record, so the same code runs from `meshtron bench`, from
tools/peers.py and by hand: `python -m meshtron.tools.baseline --layers 4 --d-model 256`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax


@dataclass(frozen=True)
class Dims:
    """What the baseline needs to know about the model."""

    family: str = "gpt2"  # gpt2 (learned positions, LayerNorm, GELU, tied head) | llama (RoPE, RMSNorm, SwiGLU)
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int = 4
    d_ff: int = 1024
    vocab: int = 8192
    seq_len: int = 256
    eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def init_params(d: Dims, seed: int = 0) -> dict:
    """Normal(0.02) matrices, zero biases, unit norm scales."""
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 8 * d.n_layers + 4))
    normal = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
    zeros, ones = (lambda n: jnp.zeros((n,))), (lambda n: jnp.ones((n,)))
    E, F, KD = d.d_model, d.d_ff, d.n_kv_heads * d.head_dim
    layers = []
    for _ in range(d.n_layers):
        if d.family == "gpt2":
            layers.append({"ln_1": {"g": ones(E), "b": zeros(E)}, "ln_2": {"g": ones(E), "b": zeros(E)},
                           "c_attn": {"w": normal(E, 3 * E), "b": zeros(3 * E)},
                           "c_proj": {"w": normal(E, E), "b": zeros(E)},
                           "c_fc": {"w": normal(E, F), "b": zeros(F)}, "mlp_proj": {"w": normal(F, E), "b": zeros(E)}})
        else:
            layers.append({"attn_norm": ones(E), "mlp_norm": ones(E), "wq": normal(E, E), "wk": normal(E, KD),
                           "wv": normal(E, KD), "wo": normal(E, E), "w_gate": normal(E, F), "w_up": normal(E, F),
                           "w_down": normal(F, E)})
    params = {"wte": normal(d.vocab, E), "layers": layers}
    if d.family == "gpt2":
        params.update(wpe=normal(d.seq_len, E), ln_f={"g": ones(E), "b": zeros(E)})
    else:
        params.update(norm=ones(E), lm_head=normal(E, d.vocab))
    return params


def layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["g"] + p["b"]


def rms_norm(x, scale, eps):
    return x / jnp.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def attention(q, k, v):
    """q (B, T, H, D), k/v (B, T, K, D) -> (B, T, H, D); causal; softmax in float32."""
    if k.shape[2] != q.shape[2]:  # grouped-query: each kv head serves H/K query heads
        k, v = (jnp.repeat(a, q.shape[2] // k.shape[2], axis=2) for a in (k, v))
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    T = q.shape[1]
    causal = jnp.tril(jnp.ones((T, T), bool))
    scores = jnp.where(causal, scores.astype(jnp.float32), -1e30)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


def rope(x, theta):
    """Rotate-half rotary positions on x (B, T, H, D)."""
    T, D = x.shape[1], x.shape[3]
    inv = 1.0 / theta ** (jnp.arange(0, D, 2) / D)
    ang = jnp.arange(T)[:, None] * inv[None, :]
    cos, sin = (jnp.concatenate([f(ang)] * 2, -1)[None, :, None, :] for f in (jnp.cos, jnp.sin))
    rotated = jnp.concatenate([-x[..., D // 2:], x[..., : D // 2]], -1)
    return x * cos + rotated * sin


def gpt2_block(x, p, d: Dims):
    B, T, E = x.shape
    h = layer_norm(x, p["ln_1"], d.eps)
    qkv = h @ p["c_attn"]["w"] + p["c_attn"]["b"]
    q, k, v = (a.reshape(B, T, d.n_heads, d.head_dim) for a in jnp.split(qkv, 3, axis=-1))
    x = x + attention(q, k, v).reshape(B, T, E) @ p["c_proj"]["w"] + p["c_proj"]["b"]
    h = layer_norm(x, p["ln_2"], d.eps)
    h = jax.nn.gelu(h @ p["c_fc"]["w"] + p["c_fc"]["b"], approximate=True)
    return x + h @ p["mlp_proj"]["w"] + p["mlp_proj"]["b"]


def llama_block(x, p, d: Dims):
    B, T, E = x.shape
    h = rms_norm(x, p["attn_norm"], d.eps)
    q = rope((h @ p["wq"]).reshape(B, T, d.n_heads, d.head_dim), d.rope_theta)
    k = rope((h @ p["wk"]).reshape(B, T, d.n_kv_heads, d.head_dim), d.rope_theta)
    v = (h @ p["wv"]).reshape(B, T, d.n_kv_heads, d.head_dim)
    x = x + attention(q, k, v).reshape(B, T, E) @ p["wo"]
    h = rms_norm(x, p["mlp_norm"], d.eps)
    return x + (jax.nn.silu(h @ p["w_gate"]) * (h @ p["w_up"])) @ p["w_down"]


def loss_fn(params, tokens, d: Dims):
    """Mean next-token cross-entropy of tokens (B, T+1)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    x = params["wte"][inputs]
    if d.family == "gpt2":
        x = x + params["wpe"][: inputs.shape[1]]
    block = gpt2_block if d.family == "gpt2" else llama_block
    for p in params["layers"]:
        x = block(x, p, d)
    if d.family == "gpt2":
        logits = layer_norm(x, params["ln_f"], d.eps) @ params["wte"].T
    else:
        logits = rms_norm(x, params["norm"], d.eps) @ params["lm_head"]
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()


def make_step(d: Dims, lr: float = 3e-4, clip: float = 1.0, weight_decay: float = 0.1):
    """(optimizer init(params) -> opt_state, jitted step(params, opt_state, tokens) -> (params, opt_state, loss))."""
    tx = optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=weight_decay,
                                 mask=lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)))

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, d)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx.init, jax.jit(step, donate_argnums=(0, 1))


def main(argv=None) -> None:
    """Time the baseline alone: `python -m meshtron.tools.baseline --layers 8 --d-model 512 --seq 512 ...`."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="gpt2", choices=("gpt2", "llama"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args(argv)
    d = Dims(a.family, a.layers, a.d_model, a.heads, a.heads, 4 * a.d_model, a.vocab, a.seq)
    init, step = make_step(d)
    params = init_params(d)
    state = [params, init(params)]
    tokens = jax.random.randint(jax.random.PRNGKey(1), (a.batch, a.seq + 1), 0, a.vocab)
    for i in range(a.steps + 2):
        start = time.perf_counter()
        *state, loss = step(*state, tokens)
        loss.block_until_ready()
        if i >= 2:
            print(f"step {time.perf_counter() - start:.3f} s  {a.batch * a.seq / (time.perf_counter() - start):,.0f} "
                  f"tokens/s  loss {float(loss):.3f}")


if __name__ == "__main__":
    main()

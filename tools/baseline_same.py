"""A minimal hand-written train step of the same model: plain jax + optax, no Meshtron code.

`meshtron bench --baseline` times it in the same process as Meshtron's step, so Meshtron's
tokens/s can be reported as a ratio of what a few dozen lines of JAX achieve. It takes the
parameters as a plain nested dict in Meshtron's layout (stacked layers), so a test can feed
it Meshtron's own weights and check it computes the same loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _norm(x, p, kind, eps):
    x = x.astype(jnp.float32)
    if kind == "layernorm":
        x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * p["scale"]
    return x + p["bias"] if "bias" in p else x


def _rope(x, theta):  # x: (B, T, H, D), rotate-half layout
    d = x.shape[-1]
    freqs = jnp.arange(x.shape[1])[:, None] / theta ** (jnp.arange(0, d, 2) / d)  # (T, D/2)
    ang = jnp.concatenate([freqs, freqs], -1)[None, :, None, :]
    rot = jnp.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * jnp.cos(ang) + rot * jnp.sin(ang)


def loss_fn(p, tokens, cfg, dtype):
    """Mean next-token cross-entropy of tokens (B, T+1)."""
    x_ids, y = tokens[:, :-1], tokens[:, 1:]
    x = p["embed"]["tokens"][x_ids].astype(dtype)  # (B, T, E)
    if cfg.position == "learned":
        x = x + p["embed"]["positions"][: x.shape[1]].astype(dtype)

    def block(x, lp):
        a = lp["attn"]
        h = _norm(x, lp["attn_norm"], cfg.norm, cfg.norm_eps).astype(dtype)
        q, k, v = (jnp.einsum("bte,ehd->bthd", h, a[n].astype(dtype)) + a.get(f"{n}_bias", 0) for n in "qkv")
        if cfg.position == "rope":
            q, k = _rope(q, cfg.rope_theta), _rope(k, cfg.rope_theta)
        att = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        x = x + jnp.einsum("bthd,hde->bte", att, a["o"].astype(dtype)) + a.get("o_bias", 0)
        m = lp["mlp"]
        h = _norm(x, lp["mlp_norm"], cfg.norm, cfg.norm_eps).astype(dtype)
        up = h @ m["up"].astype(dtype) + m.get("up_bias", 0)
        act = jax.nn.silu(h @ m["gate"].astype(dtype)) * up if cfg.mlp == "swiglu" else jax.nn.gelu(up)
        return x + act @ m["down"].astype(dtype) + m.get("down_bias", 0), None

    x, _ = jax.lax.scan(block, x, p["blocks"])
    x = _norm(x, p["final_norm"], cfg.norm, cfg.norm_eps).astype(dtype)
    head = p["embed"]["tokens"].T if "head" not in p else p["head"]
    logits = jnp.einsum("bte,ev->btv", x, head.astype(dtype), preferred_element_type=jnp.float32)
    logits = jnp.where(jnp.arange(logits.shape[-1]) < cfg.vocab_size, logits, -jnp.inf)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_step(cfg, dtype, lr: float = 3e-4, clip: float = 1.0):
    """(init(params) -> opt_state, jitted step(params, opt_state, tokens) -> (params, opt_state, loss))."""
    if cfg.parallel_block:
        raise ValueError("the baseline implements sequential blocks only")
    tx = optax.chain(optax.clip_by_global_norm(clip),
                     optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=0.1,
                                 mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, cfg, dtype)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx.init, jax.jit(step, donate_argnums=(0, 1))

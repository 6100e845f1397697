"""muP (Tensor Programs V, Table 3 multiplier form): the coordinate check across widths 64..512,
the per-parameter learning rates, sharded training equal to one device, one-line config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from meshtron.configs import ConfigError, load_config
from meshtron.model import mup
from meshtron.model.transformer import build_model
from meshtron.train.run.optim import make_optimizer

from test_parallel import run_steps

WIDTHS = (64, 128, 256, 512)


def coordinates(parametrization: str, width: int, steps: int = 3) -> dict:
    """Mean |activation| of the embedding output, every block's output and the logits after `steps` Adam steps."""
    config = load_config("tiny", ["model.family=llama", "model.n_layers=2", f"model.d_model={width}", "model.n_heads=4",
                                  "model.d_ff=null", "model.vocab_size=256", "model.seq_len=32", "model.scan_layers=false",
                                  f"model.parametrization={parametrization}", "model.mup_base_width=64",
                                  "train.lr=1e-2", "train.warmup_steps=0", "train.schedule=constant",
                                  "train.weight_decay=0"])
    cfg = config.model
    model = build_model(cfg, seed=0)
    graphdef, params = nnx.split(model)
    tx = make_optimizer(config.train, cfg)
    opt_state = tx.init(params)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 33), 0, 256)

    def loss(p):
        return jnp.mean(nnx.merge(graphdef, p).token_losses(tokens[:, :-1], tokens[:, 1:]))

    @jax.jit
    def step(p, s):
        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    model = nnx.merge(graphdef, params)
    x = tokens[:, :-1]
    positions = jnp.broadcast_to(jnp.arange(32), x.shape)
    h = model.embed.tokens[...][x]
    out = {"embedding": float(jnp.mean(jnp.abs(h)))}
    for i, block in enumerate(model.blocks):
        h, _ = block(h, positions, None, None, None)
        out[f"block {i}"] = float(jnp.mean(jnp.abs(h)))
    out["logits"] = float(jnp.mean(jnp.abs(model(x)[0][..., :256])))
    return out


@pytest.fixture(scope="module")
def coordinate_check():
    return {kind: [coordinates(kind, w) for w in WIDTHS] for kind in ("mup", "standard")}


def test_coordinate_check_under_mup_every_layer_stays_within_2x_across_widths(coordinate_check):
    rows = coordinate_check["mup"]
    for layer in rows[0]:
        values = [r[layer] for r in rows]
        assert max(values) / min(values) <= 2.0, (layer, values)


def test_coordinate_check_under_standard_parametrization_the_logits_grow_with_width(coordinate_check):
    logits = [r["logits"] for r in coordinate_check["standard"]]
    assert all(b > a for a, b in zip(logits, logits[1:])), logits
    assert logits[-1] > 3 * logits[0], logits


def test_hidden_matrices_take_lr_times_base_over_width():
    cfg = load_config("tiny", ["model.family=llama", "model.d_model=256", "model.n_heads=4",
                               "model.parametrization=mup", "model.mup_base_width=64"]).model
    assert mup.width_mult(cfg) == 4 and mup.attention_scale(cfg) == 1 / 64 and mup.output_multiplier(cfg) == 0.25
    params = nnx.split(build_model(cfg))[1]
    ones = jax.tree.map(jnp.ones_like, params)
    scaled, _ = mup.scale_hidden_updates(cfg).update(ones, optax.EmptyState())
    flat = {"/".join(map(str, k)): float(np.asarray(v[...]).flat[0]) for k, v in nnx.to_flat_state(scaled)}
    assert flat["embed/tokens"] == 1 and flat["head"] == 1 and flat["final_norm/scale"] == 1
    hidden = [k for k in flat if k.startswith("blocks") and not k.endswith("scale")]
    assert hidden and all(flat[k] == 0.25 for k in hidden)
    head = np.asarray(nnx.split(build_model(cfg))[1]["head"][...])[:, :cfg.vocab_size]
    assert abs(head.std() / cfg.init_std - 1) < 0.05  # standard init; the 1/m multiplier makes Table 3's 1/fan_in^2


MUP = ["model.parametrization=mup", "model.mup_base_width=32"]


@pytest.fixture(scope="module")
def mup_one_device():
    return run_steps(MUP + ["parallel.data=1"], 1)


def test_mup_changes_training(mup_one_device):
    standard_losses, _ = run_steps(["parallel.data=1"], 1)
    assert not np.allclose(mup_one_device[0][1:], standard_losses[1:])


@pytest.mark.parametrize("layout", [["parallel.data=2", "parallel.tensor=4", "parallel.zero_stage=1"],
                                    ["parallel.replica=2", "parallel.data=2", "parallel.tensor=2",
                                     "parallel.zero_stage=3"]])
def test_mup_sharded_training_matches_one_device(mup_one_device, layout):
    ref_losses, ref_params = mup_one_device
    losses, params = run_steps(MUP + layout, 8)
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5, atol=2e-5)
    for name, ref in ref_params.items():
        np.testing.assert_allclose(params[name], ref, rtol=1e-4, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("override, message", [("model.parametrization=mu", "model.parametrization"),
                                               ("model.mup_base_width=0", "model.mup_base_width")])
def test_bad_mup_settings_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config("tiny", [override])
    assert "\n" not in str(error.value)

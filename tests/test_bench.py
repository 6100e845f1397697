"""`meshtron bench`: runs and reports every field (speed itself is measured by the benchmark, never by tests)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from meshtron.configs import load_config
from meshtron.model import build_model
from meshtron.tools import baseline, baseline_same
from meshtron.tools.bench import baseline_dims

from conftest import TINY

FIELDS = ["config", "platform", "devices", "mesh", "compile_seconds", "step_seconds_median", "tokens_per_s",
          "model_flops_per_token", "achieved_flops_per_s", "peak_flops_published", "mfu_vs_published",
          "peak_flops_measured", "mfu_vs_measured", "peak_memory_bytes", "peak_memory_source"]


def test_bench_json_reports_every_field(meshtron_cli):
    code, out, _ = meshtron_cli("bench", "--steps", "2", "--baseline", "--depths", "2,4", "--json", *TINY,
                                "parallel.data=1")
    assert code == 0
    report = json.loads(out)
    for field in FIELDS:
        assert field in report, field
    assert report["tokens_per_s"] > 0 and report["compile_seconds"] > 0 and 0 < report["mfu_vs_measured"] < 2
    for key in ("baseline", "baseline_same_choices"):
        assert report[key]["tokens_per_s"] > 0 and report[key]["meshtron_over_baseline"] > 0
    assert set(report["compile_seconds_by_depth"]) == {"2", "4"}


def to_baseline_layout(p: dict, d: baseline.Dims) -> dict:
    """Meshtron's weights (per-head q/k/v/o, stacked layers, padded vocabulary) in the independent baseline's layout."""
    E, V = d.d_model, d.vocab
    b, flat = p["blocks"], lambda w: w.reshape(w.shape[0], -1)  # noqa: E731
    layers = []
    for i in range(d.n_layers):
        a, m = jax.tree.map(lambda x: x[i], b["attn"]), jax.tree.map(lambda x: x[i], b["mlp"])
        if d.family == "gpt2":
            layers.append({"ln_1": {"g": b["attn_norm"]["scale"][i], "b": b["attn_norm"]["bias"][i]},
                           "ln_2": {"g": b["mlp_norm"]["scale"][i], "b": b["mlp_norm"]["bias"][i]},
                           "c_attn": {"w": np.concatenate([flat(a[n]) for n in "qkv"], 1),
                                      "b": np.concatenate([a[f"{n}_bias"].reshape(-1) for n in "qkv"])},
                           "c_proj": {"w": a["o"].reshape(E, E), "b": a["o_bias"]},
                           "c_fc": {"w": m["up"], "b": m["up_bias"]}, "mlp_proj": {"w": m["down"], "b": m["down_bias"]}})
        else:
            layers.append({"attn_norm": b["attn_norm"]["scale"][i], "mlp_norm": b["mlp_norm"]["scale"][i],
                           "wq": flat(a["q"]), "wk": flat(a["k"]), "wv": flat(a["v"]), "wo": a["o"].reshape(-1, E),
                           "w_gate": m["gate"], "w_up": m["up"], "w_down": m["down"]})
    out = {"wte": p["embed"]["tokens"][:V], "layers": layers}
    if d.family == "gpt2":
        out.update(wpe=p["embed"]["positions"], ln_f={"g": p["final_norm"]["scale"], "b": p["final_norm"]["bias"]})
    else:
        out.update(norm=p["final_norm"]["scale"], lm_head=p["head"][:, :V])
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_both_baselines_compute_the_same_loss_as_meshtron(family):
    """The independent step (its own layout, einsum attention) and the same-choices step are the same model:
    Meshtron's weights give the same loss in all three."""
    cfg = load_config("tiny", TINY + [f"model.family={family}", "model.vocab_size=500"]).model
    model = build_model(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, 500, (2, 33))
    ours = float(np.mean(model.token_losses(tokens[:, :-1], tokens[:, 1:])))
    weights = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    same = float(baseline_same.loss_fn(weights, tokens, cfg, jax.numpy.float32))
    dims = baseline_dims(cfg)
    independent = float(baseline.loss_fn(to_baseline_layout(weights, dims), tokens, dims))
    assert same == pytest.approx(ours, abs=1e-5)
    assert independent == pytest.approx(ours, abs=1e-5)


def test_strategies_time_every_layout_of_the_parallel_issue(meshtron_cli):
    code, out, _ = meshtron_cli("bench", "--steps", "1", "--strategies", "--stages", "3", "--json", *TINY)
    assert code == 0  # the suite runs with 8 simulated devices
    rows = json.loads(out)["strategies"]
    assert [r["layout"] for r in rows] == ["1 device", "data=8, ZeRO-3", "data=4 x tensor=2, ZeRO-3",
                                           "data=2 x tensor=4, ZeRO-3", "replica=2 x data=2 x tensor=2, ZeRO-3",
                                           "pipeline=2 x data=4, 1f1b, ZeRO-3",
                                           "pipeline=2 x data=2 x tensor=2, gpipe, ZeRO-3"]
    assert all(r["tokens_per_s"] > 0 for r in rows)

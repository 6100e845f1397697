"""`meshtron bench`: runs and reports every field (speed itself is measured by the benchmark, never by tests)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from meshtron.configs import load_config
from meshtron.model import build_model
from meshtron.tools.baseline import loss_fn

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
    assert report["baseline"]["tokens_per_s"] > 0 and report["baseline"]["meshtron_over_baseline"] > 0
    assert set(report["compile_seconds_by_depth"]) == {"2", "4"}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_baseline_computes_the_same_loss_as_meshtron(family):
    """The hand-written step really is the same model: same weights, same loss."""
    cfg = load_config("tiny", TINY + [f"model.family={family}"]).model
    model = build_model(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, 500, (2, 33))
    ours = float(np.mean(model.token_losses(tokens[:, :-1], tokens[:, 1:])))
    theirs = float(loss_fn(nnx.to_pure_dict(nnx.state(model)), tokens, cfg, jax.numpy.float32))
    assert theirs == pytest.approx(ours, abs=1e-5)


def test_strategies_time_every_layout_of_the_parallel_issue(meshtron_cli):
    code, out, _ = meshtron_cli("bench", "--steps", "1", "--strategies", "--stages", "3", "--json", *TINY)
    assert code == 0  # the suite runs with 8 simulated devices
    rows = json.loads(out)["strategies"]
    assert [r["layout"] for r in rows] == ["1 device", "data=8, ZeRO-3", "data=4 x tensor=2, ZeRO-3",
                                           "data=2 x tensor=4, ZeRO-3", "replica=2 x data=2 x tensor=2, ZeRO-3",
                                           "pipeline=2 x data=4, 1f1b, ZeRO-3",
                                           "pipeline=2 x data=2 x tensor=2, gpipe, ZeRO-3"]
    assert all(r["tokens_per_s"] > 0 for r in rows)

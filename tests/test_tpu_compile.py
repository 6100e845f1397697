"""`meshtron plan --topology`: TPU slice names, one-line errors, the real step compiled by libtpu
for a small slice (skipped without libtpu), and `--suggest`'s search."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from meshtron.configs import load_config
from meshtron.configs.errors import UserError
from meshtron.parallel.mesh import resolve_mesh_shape
from meshtron.train.planner.layouts import changed_overrides, search
from meshtron.train.planner.plan import make_plan
from meshtron.train.planner.topology import parse_topology
from meshtron.train.planner.tpu import require_libtpu, tpu_config

from conftest import TINY

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu not installed: pip install "meshtron[tpu-compile]"')


@pytest.mark.parametrize("name, chips, libtpu", [
    ("v5p-128", 64, "v5p:4x4x4"),  # v4/v5p names count TensorCores, two per chip
    ("v4-8", 4, "v4:2x2x1"),
    ("v5e-16", 16, "v5e:4x4"),  # v5e/v6e names count chips
    ("v6e-64", 64, "v6e:8x8"),
    ("v5p-1024", 512, "v5p:8x8x8"),
    ("v5e:2x2", 4, "v5e:2x2"),  # libtpu's own spelling
])
def test_slice_names_map_to_chips_and_libtpu_topologies(name, chips, libtpu):
    topology = parse_topology(name)
    assert (topology.chips, topology.libtpu_name) == (chips, libtpu)


def test_two_slices_double_the_chips():
    topology = parse_topology("2xv5e-256")
    assert (topology.slices, topology.chips, topology.libtpu_name) == (2, 512, "v5e:16x16")


@pytest.mark.parametrize("name, says", [
    ("v5p-100", "closest: v5p-128, v5p-64"),
    ("v5e-3", "closest: v5e-4"),
    ("v5x-16", "did you mean v5p or v5e"),
    ("tpu-big", "not a TPU slice or GPU name"),
])
def test_unknown_topology_is_one_line_with_the_closest_names(name, says):
    with pytest.raises(UserError, match=says) as error:
        parse_topology(name)
    assert "\n" not in str(error.value)


def test_layout_needing_more_chips_than_the_slice_is_one_line(meshtron_cli):
    code, out, err = meshtron_cli("plan", "--config", "tiny", "--topology", "v5e-4", "parallel.data=8")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "needs more chips than v5e-4 has (4)" in err


def test_missing_libtpu_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(UserError, match=r'pip install "meshtron\[tpu-compile\]"'):
        require_libtpu(parse_topology("v5p-8"))


def test_formula_plan_for_a_slice_uses_its_chips_and_hbm(meshtron_cli):
    code, out, _ = meshtron_cli("plan", "--json", "--config", "llama-7b", "--topology", "v5p-128",
                                "parallel.zero_stage=3", "train.batch_size=64")
    report = json.loads(out)
    assert code == 0 and report["devices"] == 64 and report["mesh"]["data"] == 64
    assert report["device_memory_bytes"] == 95 * 2**30 and report["fits"] is True
    assert report["activation_bytes_per_element"] == 2  # compute dtype auto is bfloat16 on a TPU


def test_every_suggested_layout_fits_and_its_overrides_rebuild_its_plan():
    config = tpu_config(load_config("llama-7b"))
    topology = parse_topology("v5e-16")
    candidates = search(config, topology, batch=16)
    assert candidates and all(c.plan.total_bytes <= topology.hbm_bytes for c in candidates)
    assert [c.step_seconds for c in candidates] == sorted(c.step_seconds for c in candidates)
    best = candidates[0]
    rebuilt = tpu_config(load_config("llama-7b", ["train.batch_size=16"] + changed_overrides(config, best)))
    assert make_plan(rebuilt, topology.chips, platform="tpu").total_bytes == best.plan.total_bytes


@needs_libtpu
def test_tiny_step_compiled_for_a_v5e_slice_holds_the_formula_model_state():
    from meshtron.train.planner.tpu import compile_for_topology

    topology = parse_topology("v5e:2x2")
    config = tpu_config(load_config("tiny", TINY + ["parallel.zero_stage=3"]))
    shape = resolve_mesh_shape(config, topology.chips)
    plan = make_plan(config, topology.chips)
    figures = compile_for_topology(config, shape, topology)
    assert figures.state_bytes == plan.params_bytes + plan.optimizer_bytes
    # every argument byte is model state, token batch, or TPU tile padding (a scalar fills a 128-element tile)
    assert figures.compiled.argument_bytes == (plan.params_bytes + plan.optimizer_bytes + plan.batch_bytes
                                               + figures.state_padding_bytes + figures.batch_padding_bytes)
    assert figures.compiled.comm_elements_by_kind()["data"]["all-gather"] > 0  # ZeRO-3 gathers over data
    assert figures.flops > 0 and figures.fits


def test_libtpu_refusing_a_step_larger_than_hbm_is_read_as_does_not_fit():
    from meshtron.train.planner.tpu import hbm_overflow

    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(111.50G) exceeds available HBM (95.74G).")  # libtpu 0.0.42.1, llama-7b ZeRO-3 remat none on v5p-8
    assert hbm_overflow(message) == (111.50 * 2**30, 95.74 * 2**30)
    assert hbm_overflow("INVALID_ARGUMENT: something else") is None


@needs_libtpu
def test_with_libtpu_installed_ordinary_runs_stay_on_the_cpu_and_quiet():
    # no JAX_PLATFORMS: JAX would try the TPU backend; Meshtron skips it where no TPU chip exists
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    code = ("from meshtron.parallel.jax_compat import skip_absent_tpu; skip_absent_tpu(); "
            "import jax, flax.nnx; print(jax.default_backend())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "cpu"
    assert "TPU_ACCELERATOR_TYPE" not in done.stderr and "TPU_WORKER_HOSTNAMES" not in done.stderr

"""Pipeline figures of the planner against the schedule table and the compiled step; checkpoints across
pipeline degrees."""

import jax
import numpy as np
import pytest
from flax import nnx

from meshtron.configs import load_config
from meshtron.parallel.mesh import mesh_for
from meshtron.train.planner.compiled import compile_step
from meshtron.train.planner.plan import make_plan
from meshtron.train.run.checkpoint import Checkpointer
from meshtron.train.run.step import build_training

from test_parallel import BASE

FOUR_LAYERS = BASE + ["model.n_layers=4"]


@pytest.mark.parametrize("schedule,virtual,formula", [
    ("gpipe", 1, 3 / 11), ("1f1b", 1, 3 / 11), ("interleaved", 2, 3 / 19)])  # (P-1)/(M+P-1), (P-1)/(vM+P-1)
def test_plan_reports_the_bubble_of_its_schedule(schedule, virtual, formula):
    config = load_config("tiny", BASE + ["model.n_layers=8", "parallel.pipeline=4", "parallel.microbatches=8",
                                         f"parallel.schedule={schedule}", f"parallel.virtual_stages={virtual}"])
    figures = make_plan(config, 8).pipeline
    assert figures.bubble_fraction == pytest.approx(formula) and figures.bubble_formula == pytest.approx(formula)


def test_1f1b_plans_p_micro_batches_of_activations_and_gpipe_all():
    plans = {s: make_plan(load_config("tiny", FOUR_LAYERS + ["parallel.pipeline=4", "parallel.microbatches=16",
                                                             f"parallel.schedule={s}", "train.batch_size=32"]), 8)
             for s in ("gpipe", "1f1b")}
    assert (plans["gpipe"].pipeline.in_flight, plans["1f1b"].pipeline.in_flight) == (16, 4)
    assert plans["1f1b"].activation_bytes < plans["gpipe"].activation_bytes


def test_stage_axis_moves_what_the_plan_says_and_state_is_split_as_planned():
    # P=2 x data=2 x tensor=2, 1F1B over 4 micro-batches: 2(M+P-1) = 10 ticks, sends on the 5 even ones
    config = load_config("tiny", FOUR_LAYERS + ["parallel.pipeline=2", "parallel.data=2", "parallel.tensor=2",
                                                "parallel.microbatches=4", "parallel.zero_stage=1"])
    plan = make_plan(config, 8)
    compiled = compile_step(config, plan.shape)
    formula = plan.comm_elements_by_kind()["stage"]
    seen = compiled.comm_elements_by_kind()["stage"]
    b, s, h = 16 // 2 // 4, config.model.seq_len, config.model.d_model
    assert formula["collective-permute"] == 5 * b * s * h
    assert seen["collective-permute"] == pytest.approx(formula["collective-permute"])
    assert 0 <= seen["all-reduce"] - formula["all-reduce"] < 100  # + the loss, a scalar
    assert plan.argument_bytes == compiled.argument_bytes  # blocks split over the stages, as planned


def params_on(overrides, n_devices):
    config = load_config("tiny", FOUR_LAYERS + overrides)
    shape, mesh = mesh_for(config, jax.devices()[:n_devices])
    return build_training(config, mesh, shape)


def flat(params) -> dict:
    return {"/".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(params)}


@pytest.mark.parametrize("overrides,n_devices", [(["parallel.data=1"], 1),
                                                 (["parallel.pipeline=4", "parallel.data=2",
                                                   "parallel.microbatches=4"], 8)])
def test_checkpoint_saved_with_two_stages_restores_with_one_and_four(tmp_path, overrides, n_devices):
    saved_with = params_on(["parallel.pipeline=2", "parallel.data=4", "parallel.tensor=1",
                            "parallel.microbatches=2", "parallel.zero_stage=1"], 8)
    params = saved_with.init_params()
    opt_state = saved_with.init_opt_state(params)
    checkpointer = Checkpointer(tmp_path, async_save=False)
    checkpointer.save(1, params, opt_state, {"vocab_rows": saved_with.vocab_rows})
    checkpointer.wait()
    restored_on = params_on(overrides, n_devices)
    restored, _, _ = Checkpointer(tmp_path, async_save=False).restore(1, *restored_on.abstract_state())
    blocks = jax.tree.leaves(restored["blocks"])[0]
    assert blocks.sharding.spec[0] == ("stage" if n_devices == 8 else None)  # split over the new stages
    want = flat(params)
    for name, value in flat(restored).items():
        np.testing.assert_array_equal(value, want[name], err_msg=name)

"""The planner's communication formulas against the compiled step's collectives (train/planner/hlo.py).

Only the scalar reductions (loss, gradient norm, finite flag) are allowed as slack: under 100
elements, on all-reduces or on collectives spanning several axes ('replica+data', 'data+tensor').
"""

import re

import pytest

from meshtron.model.counting import count_params
from meshtron.train.planner.plan import make_plan
from meshtron.train.planner.compiled import compile_step

from test_plan import LAYOUTS, tiny_config

SCALAR_SLACK = 100  # elements


def formula_and_compiled(config):
    plan = make_plan(config, 8)
    return plan, compile_step(config, plan.shape)


def assert_axis_matches(plan, compiled, axis: str):
    """Gathers and scatters exactly; all-reduces up to the scalar slack."""
    formula = plan.comm_elements_by_kind().get(axis, {})
    seen = compiled.comm_elements_by_kind().get(axis, {})
    assert set(seen) <= set(formula) | {"all-reduce"}, (axis, seen, formula)
    for kind in set(formula) | set(seen):
        extra = seen.get(kind, 0.0) - formula.get(kind, 0.0)
        slack = SCALAR_SLACK if kind == "all-reduce" else 0
        assert -1e-6 < extra < slack + 1e-6, (axis, kind, seen.get(kind), formula.get(kind))


def assert_multi_axis_is_scalars(compiled):
    several = {axis: v for axis, v in compiled.comm_elements().items() if "+" in axis}
    assert sum(several.values()) < SCALAR_SLACK, several


def paper_data_volume(config, stage: int, data: int) -> float:
    """ZeRO's volumes (Rajbhandari et al. 2020, §7) with model/counting.py's Ψ: 2Ψ(N-1)/N, or at stage 3 3Ψ for the blocks and 2Ψ for
    the embedding, final norm and head (gathered once per step and kept for the backward pass)."""
    counts = count_params(config.model)
    blocks, rest = counts.layers, counts.total - counts.layers
    moved = 2 * counts.total if stage < 3 else 3 * blocks + 2 * rest
    return moved * (data - 1) / data


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_data_axis_moves_the_paper_volume(stage):
    config = tiny_config("data8", stage)  # tiny llama: no biases, vocabulary 512 needs no padding
    plan, compiled = formula_and_compiled(config)
    assert plan.comm_elements()["data"] == pytest.approx(paper_data_volume(config, stage, 8))
    assert_axis_matches(plan, compiled, "data")
    assert_multi_axis_is_scalars(compiled)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_data_and_replica_axes_match_the_compiled_step(layout, stage):
    plan, compiled = formula_and_compiled(tiny_config(layout, stage))
    for axis in ("data", "replica"):
        assert_axis_matches(plan, compiled, axis)
    assert_multi_axis_is_scalars(compiled)


def test_replica_axis_all_reduces_the_partitioned_gradient():
    # hybrid sharding: from stage 1 each replica group's gradient is already split over data=2
    volumes = [formula_and_compiled(tiny_config("replica2_data2_tensor2", s))[1].comm_elements()["replica"]
               for s in (0, 1, 2, 3)]
    assert volumes[1] == volumes[2] == volumes[3] == pytest.approx(volumes[0] / 2)
    assert compiled_kinds(tiny_config("replica2_data2_tensor2", 1), "replica") == {"all-reduce"}


def compiled_kinds(config, axis: str) -> set:
    return set(formula_and_compiled(config)[1].comm_elements_by_kind()[axis])


def test_stage2_reduce_scatters_every_micro_batch():
    config = tiny_config("data8", 2, "train.batch_size=16", "train.grad_accum=2")
    plan, compiled = formula_and_compiled(config)
    psi = count_params(config.model).total
    kinds = compiled.comm_elements_by_kind()["data"]
    assert kinds["reduce-scatter"] == pytest.approx(2 * psi * 7 / 8)  # one per micro-batch
    assert kinds["all-gather"] == pytest.approx(psi * 7 / 8)  # the updated parameters, once
    assert_axis_matches(plan, compiled, "data")


def test_tensor_axis_carries_only_activations():
    # no parameter gradient crosses the tensor axis: every collective over it is an all-reduce of
    # (b, s, d_model), (b, s), (b, s, 1) or a scalar, whatever the parameter shapes
    config = tiny_config("data4_tensor2", 0)
    _, compiled = formula_and_compiled(config)
    b, s, h = 8 // 4, config.model.seq_len, config.model.d_model
    allowed = {(b, s, h), (b, s), (b, s, 1), ()}
    tensor_ops = [c for c in compiled.collectives if c.axes == ("tensor",)]
    assert tensor_ops and {c.kind for c in tensor_ops} == {"all-reduce"}
    for c in tensor_ops:
        assert result_shapes(compiled.hlo_text, c.name) <= allowed, c.name


def result_shapes(hlo_text: str, name: str) -> set:
    line = next(l for l in hlo_text.splitlines() if re.match(rf"\s*(ROOT\s+)?%?{re.escape(name)} = ", l))
    result_type = line.split(" = ", 1)[1].split(" all-reduce", 1)[0]
    return {tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\[([0-9,]*)\]", result_type)}


def test_tensor_axis_moves_megatrons_count():
    plan, compiled = formula_and_compiled(tiny_config("data4_tensor2", 0))
    assert_axis_matches(plan, compiled, "tensor")


def test_zero3_all_reduces_whole_biases_and_never_regathers_biases():
    # GPT-2 biases: q, k, v and MLP-in have no embed axis (whole, all-reduced); the embed-sized
    # biases are split, gathered in the forward, and not gathered again (the backward needs no bias)
    config = tiny_config("data8", 3, "model.family=gpt2")
    plan, compiled = formula_and_compiled(config)
    m = config.model
    whole_biases = m.n_layers * (3 * m.n_heads * m.dim_per_head + m.ff_dim)
    assert plan.comm_elements_by_kind()["data"]["all-reduce"] == pytest.approx(2 * whole_biases * 7 / 8)
    assert_axis_matches(plan, compiled, "data")

"""`meshtron plan`: the ZeRO paper's table, formula memory equal to the compiled step's, fit suggestions."""

import json

import pytest

from meshtron.configs import load_config
from meshtron.model.counting import count_params
from meshtron.train.planner.plan import make_plan
from meshtron.train.planner.compiled import compile_step
from meshtron.train.planner.formulas import activation_bytes_per_layer

from conftest import TINY

LAYOUTS = {
    "data8": ["parallel.data=8"],
    "data4_tensor2": ["parallel.data=4", "parallel.tensor=2"],
    # dropout on: the step counter (it seeds dropout) becomes a real argument of the step
    "replica2_data2_tensor2": ["parallel.replica=2", "parallel.data=2", "parallel.tensor=2", "model.dropout=0.1"],
}
BASE = TINY + ["model.family=llama"]


def tiny_config(layout: str, stage: int, *extra: str):
    """The tiny llama of these tests on one of LAYOUTS at one ZeRO stage (test_comm.py shares it)."""
    return load_config("tiny", BASE + LAYOUTS[layout] + [f"parallel.zero_stage={stage}", *extra])


def plan_json(meshtron_cli, *argv) -> dict:
    code, out, err = meshtron_cli("plan", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def test_mixed_precision_reproduces_the_zero_paper_table(meshtron_cli):
    # Rajbhandari et al. 2020, Fig. 1: 7.5B parameters at data-parallel 64
    report = plan_json(meshtron_cli, "--params", "7.5e9", "--devices", "64", "--precision", "mixed")
    totals = [report["stages"][s]["model_state_bytes"] / 1e9 for s in "0123"]
    assert [float(f"{gb:.3g}") for gb in totals] == [120, 31.4, 16.6, 1.88]
    code, text, _ = meshtron_cli("plan", "--params", "7.5B", "--devices", "64", "--precision", "mixed")
    assert code == 0 and all(f"{gb} GB" in text for gb in ("120", "31.4", "16.6", "1.88"))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_formula_step_arguments_equal_compiled_argument_size(layout, stage):
    config = tiny_config(layout, stage)
    plan = make_plan(config, 8)
    compiled = compile_step(config, plan.shape)
    assert plan.params_bytes + plan.optimizer_bytes + plan.batch_bytes + plan.step_bytes == compiled.argument_bytes


def test_parameter_walk_agrees_with_the_one_count():
    # the walk holds the padded vocabulary rows; model/counting.py counts the true vocabulary
    config = load_config("gpt2-124m")  # tied, learned positions, biases: 124,439,808 parameters
    plan = make_plan(config, 1)
    padding = (config.model.padded_vocab() - config.model.vocab_size) * config.model.d_model
    assert plan.params_bytes // 4 - padding == count_params(config.model).total == 124_439_808


def test_zero_stages_split_model_state_over_data():
    stages = make_plan(tiny_config("data8", 0), 8).stages
    assert stages[1]["optimizer_bytes"] * 8 == stages[0]["optimizer_bytes"] + 7 * 8  # the two int32 counters stay whole
    assert stages[2]["grads_bytes"] * 8 == stages[0]["grads_bytes"]
    assert stages[3]["params_bytes"] * 8 == stages[0]["params_bytes"]


def test_activations_follow_korthikanti_without_sequence_parallelism():
    # GPT block at 16 bits, tensor degree t: s·b·h·(10 + 24/t + 5as/(ht)) in the paper, less the
    # attention-probability dropout (3as²b) Meshtron does not have; full recompute keeps 2sbh
    overrides = ["model.family=gpt2", "model.d_model=256", "model.n_heads=8", "model.d_ff=1024", "model.seq_len=64",
                 "model.dropout=0.1"]
    m = load_config("tiny", overrides).model
    s, b, h, a, t = 64, 3, 256, 8, 4
    assert activation_bytes_per_layer(m, b, t, 2) == s * b * h * (10 + 24 / t + 2 * a * s / (h * t))
    assert activation_bytes_per_layer(m, b, t, 2, remat="full") == 2 * s * b * h


def test_grad_accum_shrinks_activations_by_the_micro_batch():
    whole = make_plan(tiny_config("data8", 0, "train.batch_size=16"), 8)
    accumulated = make_plan(tiny_config("data8", 0, "train.batch_size=16", "train.grad_accum=2"), 8)
    assert (whole.micro_batch, accumulated.micro_batch) == (2, 1)
    assert accumulated.activation_bytes_per_layer * 2 == whole.activation_bytes_per_layer


def test_compiled_column_sits_beside_the_formula(meshtron_cli):
    code, text, err = meshtron_cli("plan", "--compile", *BASE, *LAYOUTS["data4_tensor2"], "parallel.zero_stage=3")
    assert code == 0, err
    assert "equal" in text and "temp size" in text and "tensor" in text and "rules of ZeRO stage 3" in text


def test_a_plan_that_does_not_fit_suggests_the_cheapest_change_that_fits(meshtron_cli):
    args = ["--config", "llama-7b", "--devices", "8", "--device-memory", "24GB", "parallel.zero_stage=0"]
    report = plan_json(meshtron_cli, *args)
    assert report["fits"] is False
    overrides = report["suggestion"]["overrides"]
    values = dict(o.split("=") for o in overrides)
    assert int(values.get("parallel.zero_stage", 0)) > 0 or int(values.get("parallel.tensor", 1)) > 1
    replanned = plan_json(meshtron_cli, *args, *overrides)
    assert replanned["fits"] is True and replanned["formula"]["total_bytes"] <= 24e9
    code, text, _ = meshtron_cli("plan", *args)
    assert "does NOT fit" in text and " ".join(overrides) in text


@pytest.mark.parametrize("preset,devices", [("llama2-70b", 64), ("gpt3-175b", 1024)])
def test_big_presets_plan_from_formulas_without_compiling(meshtron_cli, monkeypatch, preset, devices):
    import meshtron.train.planner.compiled as compiled

    def must_not_compile(*args, **kwargs):
        raise AssertionError("a plan without --compile compiled the step")

    monkeypatch.setattr(compiled, "compile_step", must_not_compile)
    report = plan_json(meshtron_cli, "--config", preset, "--devices", devices)
    assert report["params_total"] == count_params(load_config(preset).model).total
    assert report["formula"]["comm_elements"]["tensor"] > 0


@pytest.mark.parametrize("argv,words", [
    (["--device-memory", "lots"], "--device-memory"),
    (["--config", "gpt3-175b", "--devices", "1024", "--compile"], "too many to compile"),
    (["--devices", "16", "--compile"], "--cpu-devices 16"),
    (["--params", "7e9", "--compile"], "--params"),
    (["parallel.tensor=3"], "parallel.tensor"),
])
def test_errors_are_one_line(meshtron_cli, argv, words):
    code, _, err = meshtron_cli("plan", *argv)
    assert code == 2 and words in err and err.count("\n") == 1


def test_a_tpu_plan_holds_libtpus_third_float32_score_buffer():
    # libtpu's buffer assignment keeps three float32 (heads x s x s) buffers in a block's backward pass where
    # XLA:CPU keeps two: a plan for a TPU slice made on this CPU counts three (BENCHMARKS.md, real scale)
    config = load_config("llama-7b", ["train.batch_size=8", "parallel.tensor=4", "model.remat=full"])
    cpu, tpu = make_plan(config, 4, platform="cpu"), make_plan(config, 4, platform="tpu")
    one_copy = 4 * (32 // 4) * 2048 * 2048 * 8  # float32, 8 local heads, seq 2048, micro-batch 8
    assert tpu.temporary_bytes - cpu.temporary_bytes == one_copy
    assert make_plan(config, 4).temporary_bytes == cpu.temporary_bytes  # default: this machine's platform

"""`meshtron plan` for encoders (BERT) and encoder-decoders (T5, the original Transformer): the state walk and
batch equal the compiled step's arguments, the activation formula holds the compiled temporaries within 15%,
and the report speaks of input and target tokens, cross-attention and the MLM head."""

import dataclasses

import pytest

from meshtron.configs import load_config
from meshtron.train.planner.compiled import compile_step
from meshtron.train.planner.formulas import activation_bytes_per_layer
from meshtron.train.planner.plan import make_plan
from meshtron.train.planner.stacks import Stack, model_stacks

from conftest import TINY
from test_comm import assert_axis_matches
from test_plan import plan_json

FAMILIES = {
    "gpt2": ["model.family=gpt2"],  # the decoder, held to the same bound
    "bert": ["model.family=bert", "model.max_positions=64"],
    "t5": ["model.family=t5", "model.n_decoder_layers=6", "model.relative_buckets=8",
           "model.relative_max_distance=20"],
    "transformer": ["model.family=transformer", "model.n_decoder_layers=6"],
}
# activations dominate the temporaries, as in real runs (t5-small at batch 128 keeps ~100x its weights in
# activations); with the weights as large as the activations, XLA:CPU's copies of the stacked weights decide
SHAPE = ["model.seq_len=64", "train.batch_size=32"]


def tiny(family: str, *extra: str):
    return load_config("tiny", TINY + FAMILIES[family] + SHAPE + list(extra))


@pytest.mark.parametrize("family,layout", [
    ("bert", ["parallel.data=1"]), ("t5", ["parallel.data=1"]),
    ("bert", ["parallel.data=4", "parallel.tensor=2", "parallel.zero_stage=3"]),
    ("t5", ["parallel.data=4", "parallel.tensor=2", "parallel.zero_stage=3", "model.dropout=0.1"]),
    ("transformer", ["parallel.data=4", "parallel.tensor=2", "parallel.zero_stage=1", "model.remat=dots"])])
def test_state_and_batch_equal_the_compiled_arguments(family, layout):
    # the walk builds the family's own module (encoder_blocks, decoder_blocks, MLM head), and the batch is the
    # objective's arrays (span corruption: inputs, decoder inputs, targets, weights), not token windows
    config = tiny(family, *layout)
    plan = make_plan(config, plan_devices(layout))
    compiled = compile_step(config, plan.shape)
    assert plan.argument_bytes == compiled.argument_bytes
    assert_axis_matches(plan, compiled, "data")  # ZeRO gathers and scatters every stack's blocks
    assert_axis_matches(plan, compiled, "tensor")  # cross-attention's, each stack's lookup, post-norm's remat


def plan_devices(layout) -> int:
    """One device for the single-device layouts, else the eight simulated ones."""
    return 1 if "parallel.data=1" in layout else 8


@pytest.mark.parametrize("remat", ["none", "dots"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_temporaries_within_15_percent_of_the_compiled_step(family, remat):
    config = tiny(family, "parallel.data=1", f"model.remat={remat}")
    plan = make_plan(config, 1)
    compiled = compile_step(config, plan.shape)
    assert plan.temporary_bytes == pytest.approx(compiled.temp_bytes, rel=0.15), (
        plan.temporary_bytes, compiled.temp_bytes)


def test_decoder_blocks_of_an_encoder_decoder_add_cross_attention():
    # T5 at 16 bits (RMSNorm, ReLU, no dropout): a decoder block over u positions attending to m encoder
    # outputs keeps a self-attention block's values plus its cross-attention's norm (2ubh), queries and
    # output-projection input (2ubh), keys and values of the m positions (2mbh) and scores a·u·m·b
    m = tiny("t5").model
    S, U = model_stacks(m)[0].tokens, model_stacks(m)[1].tokens
    assert (S, U) == (64, 14)  # T5's span corruption: 15% noise, mean span 3
    b, h, a = 2, m.d_model, m.n_heads
    decoder = activation_bytes_per_layer(m, b, 1, 2, stack=Stack("decoder", 3, U, S))
    self_only = activation_bytes_per_layer(m, b, 1, 2, stack=Stack("decoder", 3, U))
    assert decoder - self_only == 2 * (2 * U * b * h + 2 * U * b * h + 2 * S * b * h + a * U * S * b)
    # remat full keeps the layer input only: the encoder output is kept once, outside the layers
    assert activation_bytes_per_layer(m, b, 1, 2, "full", Stack("decoder", 3, U, S)) == 2 * U * b * h


def test_encoder_decoder_activations_count_both_stacks():
    config = tiny("t5", "parallel.data=1")
    plan = make_plan(config, 1)
    encoder, decoder = plan.stacks
    assert (encoder.layers, encoder.tokens, decoder.layers, decoder.tokens, decoder.cross_tokens) == (2, 64, 6, 14, 64)
    layers = sum(s.layers * (s.per_layer_bytes + s.kept_bytes) for s in plan.stacks)
    assert plan.activation_bytes == layers + plan.activation_bytes_outside_layers
    # the logits are the decoder's: 14 target positions, not 64
    wider = make_plan(dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=1024)), 1)
    assert wider.activation_bytes_outside_layers - plan.activation_bytes_outside_layers == 4 * 32 * 14 * 512


def test_report_speaks_of_input_and_target_tokens(meshtron_cli):
    report = plan_json(meshtron_cli, "--config", "t5-small", "--devices", "8")
    assert [(s["name"], s["tokens"], s["cross_tokens"]) for s in report["stacks"]] == [
        ("encoder", 512, 0), ("decoder", 114, 512)]
    code, text, _ = meshtron_cli("plan", "--config", "t5-small", "--devices", "8")
    assert code == 0 and "512 input + 114 target tokens" in text and "token batch" not in text
    assert "activations per decoder layer" in text and "cross-attends to 512" in text
    code, text, _ = meshtron_cli("plan", "--config", "bert-base", "--devices", "8")
    assert code == 0 and "MLM head" in text and "bidirectional" in text and "inputs, targets, weights" in text

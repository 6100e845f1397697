"""Config loading and validation: presets, overrides, one-line errors naming the key."""

import pytest

from meshtron.configs import ConfigError, load_config, preset_names
from meshtron.model.counting import count_params

PUBLISHED_PARAMS = {  # Hugging Face's gpt2 checkpoints and Meta's LLaMA-1 7B, counted parameter by parameter
    "gpt2-124m": 124_439_808,
    "gpt2-350m": 354_823_168,
    "gpt2-774m": 774_030_080,
    "gpt2-1.5b": 1_557_611_200,
    "llama-7b": 6_738_415_616,
    "llama2-70b": 68_976_648_192,  # the Hugging Face Llama-2-70b-hf parameter count
}


def test_required_presets_exist():
    assert set(PUBLISHED_PARAMS) | {"tiny", "gpt3-175b", "palm-8b"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_validates(name):
    config = load_config(name)
    assert config.name == name
    assert config.model.n_layers > 0 and config.model.position is not None


@pytest.mark.parametrize("name,expected", sorted(PUBLISHED_PARAMS.items()))
def test_preset_parameter_counts_match_published(name, expected):
    assert count_params(load_config(name).model).total == expected


def test_gpt3_175b_is_175_billion():
    assert 174.5e9 < count_params(load_config("gpt3-175b").model).total < 175.5e9


def test_palm_8b_is_a_multi_query_parallel_block_model_of_8_63_billion():
    model = load_config("palm-8b").model
    assert (model.parallel_block, model.n_kv_heads, model.mlp, model.bias, model.position) == (
        True, 1, "swiglu", False, "rope")
    assert 8.625e9 < count_params(model).total < 8.635e9


def test_overrides_are_typed():
    c = load_config("tiny", ["train.lr=3e-4", "train.steps=1e3", "model.dropout=0.1", "model.bias=true",
                             "data.source=/tmp/x"])
    assert c.train.lr == 3e-4 and c.train.steps == 1000 and c.model.dropout == 0.1 and c.model.bias is True


def test_family_defaults_fill_switches_and_overrides_win():
    llama = load_config("tiny", ["model.family=llama"]).model
    assert (llama.position, llama.norm, llama.mlp, llama.tie_embeddings) == ("rope", "rmsnorm", "swiglu", False)
    palm = load_config("tiny", ["model.family=palm"]).model
    assert palm.parallel_block and palm.tie_embeddings
    gpt2 = load_config("tiny", ["model.family=gpt2", "model.position=rope"]).model
    assert gpt2.position == "rope" and gpt2.norm == "layernorm"


@pytest.mark.parametrize("override,key", [
    ("model.n_heads=3", "model.n_heads"),  # does not divide d_model=256
    ("model.n_kv_heads=3", "model.n_kv_heads"),  # does not divide n_heads=4
    ("model.seq_len=0", "model.seq_len"),
    ("model.seq_len=-5", "model.seq_len"),
    ("model.d_model=abc", "model.d_model"),
    ("model.n_layers=2.5", "model.n_layers"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.norm=batchnorm", "model.norm"),
    ("train.lr=-1", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.grad_accum=3", "train.grad_accum"),  # does not divide batch 16
    ("parallel.zero_stage=4", "parallel.zero_stage"),
    ("parallel.tensor=3", "parallel.tensor"),
    ("train.steps=true", "train.steps"),
    ("model.bias=maybe", "model.bias"),
])
def test_bad_values_are_one_line_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    message = str(err.value)
    assert key in message and "\n" not in message


def test_typo_suggests_the_closest_key():
    with pytest.raises(ConfigError, match="did you mean 'model.n_heads'"):
        load_config("tiny", ["model.n_head=4"])
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        load_config("tiny", ["trian.lr=1e-3"])


def test_unknown_preset_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean 'gpt2-124m'"):
        load_config("gpt2-124")


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: [2\ntrain: {}\n")
    with pytest.raises(ConfigError, match="line") as err:
        load_config(str(bad))
    assert "\n" not in str(err.value)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "nope.yaml"))


def test_yaml_is_parsed_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(str(evil))


def test_cli_reports_config_errors_in_one_line_with_exit_code_2(meshtron_cli):
    code, out, err = meshtron_cli("train", "model.n_heads=3")
    assert code == 2
    assert err.strip().count("\n") == 0 and "model.n_heads" in err and "Traceback" not in err

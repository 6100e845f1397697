"""A generated set of malformed configs: each ends in one line naming the key, exit code 2, no traceback,
before any data, compilation or device allocation, within a second."""

import dataclasses

import pytest

from meshtron.configs.schema import CHOICES, SECTION_CLASSES

POSITIVE = {"model.n_layers", "model.d_model", "model.n_heads", "model.vocab_size", "model.seq_len",
            "model.vocab_multiple", "train.steps", "train.batch_size", "train.grad_accum", "train.log_every",
            "train.eval_batches", "train.max_bad_steps", "train.lr", "train.eps", "model.norm_eps",
            "model.rope_theta", "model.init_std", "data.tokenizer_chars", "checkpoint.keep"}
NON_NEGATIVE = {"train.warmup_steps", "train.eval_every", "train.sample_tokens", "train.weight_decay",
                "train.grad_clip", "train.seed", "data.max_documents", "data.prefetch", "checkpoint.every",
                "model.logits_chunk", "model.dropout"}


def _fields():
    for section, cls in SECTION_CLASSES.items():
        for field in dataclasses.fields(cls):
            yield f"{section}.{field.name}", field.type.replace("| None", "").strip()


def generated_cases():
    """(case id, argv after `meshtron train`, text the one-line error must contain)."""
    cases = []
    for key, kind in _fields():
        if kind == "int":
            cases += [(f"{key}=abc", [f"{key}=abc"], key), (f"{key}=1.5", [f"{key}=1.5"], key),
                      (f"{key}=true", [f"{key}=true"], key), (f"{key}=[1]", [f"{key}=[1, 2]"], key)]
        elif kind == "float":
            cases += [(f"{key}=abc", [f"{key}=abc"], key), (f"{key}=nan", [f"{key}=nan"], key),
                      (f"{key}=yes", [f"{key}=yes"], key)]
        elif kind == "bool":
            cases += [(f"{key}=maybe", [f"{key}=maybe"], key), (f"{key}=2", [f"{key}=2"], key)]
        if key in CHOICES:
            cases.append((f"{key}=nonsense", [f"{key}=nonsense"], key))
        if key in POSITIVE:
            cases += [(f"{key}=0", [f"{key}=0"], key), (f"{key}=-3", [f"{key}=-3"], key)]
        if key in NON_NEGATIVE:
            cases.append((f"{key}=-1", [f"{key}=-1"], key))
        section, name = key.split(".")
        typo = f"{section}.{name[:2]}{name[1]}{name[2:]}"  # a doubled letter: n_layers -> n__layers
        cases.append((f"typo {typo}", [f"{typo}=1"], f"did you mean '{key}'"))
    cases += [
        ("unknown section", ["modle.n_layers=2"], "model.n_layers"),
        ("no equals sign", ["train.steps"], "key=value"),
        ("heads vs d_model", ["model.n_heads=3"], "model.n_heads"),
        ("kv heads vs heads", ["model.n_kv_heads=3"], "model.n_kv_heads"),
        ("odd rope head_dim", ["model.head_dim=63"], "model.head_dim"),
        ("tensor vs heads", ["parallel.tensor=3"], "parallel.tensor"),
        ("tensor vs d_ff", ["parallel.tensor=2", "model.d_ff=771"], "parallel.tensor"),
        ("grad_accum vs batch", ["train.grad_accum=5"], "train.grad_accum"),
        ("devices product", ["parallel.data=3"], "parallel.data"),
        ("batch vs data shards", ["parallel.data=8", "train.batch_size=12"], "train.batch_size"),
        ("zero vs d_model", ["parallel.data=8", "parallel.zero_stage=1", "model.d_model=260", "model.n_heads=2",
                             "model.d_ff=768"], "parallel.zero_stage"),
        ("chunk vs seq_len", ["model.logits_chunk=7"], "model.logits_chunk"),
        ("dropout one", ["model.dropout=1.0"], "model.dropout"),
        ("beta2 one", ["train.beta2=1.0"], "train.beta2"),
        ("min lr ratio", ["train.min_lr_ratio=2"], "train.min_lr_ratio"),
        ("val fraction", ["data.val_fraction=1"], "data.val_fraction"),
        ("missing data source", ["data.source=/nonexistent/corpus"], "data.source"),
        ("empty data source", ["data.source="], "data.source"),
        ("unknown preset", ["--config", "gpt2-125m"], "did you mean 'gpt2-124m'"),
        ("missing config file", ["--config", "/nonexistent/run.yaml"], "no such file"),
    ]
    return cases


BROKEN_YAML = {  # name: (file content, what the one-line error must contain)
    "unclosed list": ("model:\n  n_layers: [2\n", "YAML syntax error"),
    "unclosed mapping": ("model: {n_layers: 2\n", "YAML syntax error"),
    "bad indentation": ("model:\n  n_layers: 2\n   d_model: 64\n", "YAML syntax error"),
    "tab indentation": ("model:\n\tn_layers: 2\n", "YAML syntax error"),
    "unclosed quote": ("data:\n  source: 'abc\n", "YAML syntax error"),
    "duplicate colon": ("model:\n  n_layers:: 2:\n", "YAML syntax error"),
    "python tag": ("model: !!python/object/apply:os.system ['true']\n", "YAML"),
    "section is a number": ("model: 5\n", "section 'model' must be a mapping"),
    "top level list": ("- model\n- train\n", "must be a mapping of sections"),
    "unknown section": ("modell:\n  n_layers: 2\n", "unknown config key 'modell'"),
    "wrong type in file": ("train:\n  steps: many\n", "'train.steps' must be an integer"),
    "unknown key in file": ("train:\n  stepz: 10\n", "did you mean 'train.steps'"),
}


def run_case(meshtron_cli, monkeypatch, argv):
    import meshtron.train.run.loop as loop

    def must_not_run(*args, **kwargs):
        raise AssertionError("training started although the config is invalid")

    monkeypatch.setattr(loop, "train", must_not_run)
    return meshtron_cli("train", *argv)


def check(code, err, expected):
    assert code == 2
    assert err.startswith("meshtron: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert expected in err, err


def test_there_are_at_least_200_malformed_inputs():
    assert len(generated_cases()) + len(BROKEN_YAML) >= 200


@pytest.mark.parametrize("case_id,argv,expected", generated_cases(), ids=[c[0] for c in generated_cases()])
def test_malformed_override_is_one_clear_line(meshtron_cli, monkeypatch, case_id, argv, expected):
    code, _, err = run_case(meshtron_cli, monkeypatch, argv)
    check(code, err, expected)


@pytest.mark.parametrize("name", sorted(BROKEN_YAML))
def test_broken_config_file_is_one_clear_line(meshtron_cli, monkeypatch, tmp_path, name):
    path = tmp_path / "broken.yaml"
    content, expected = BROKEN_YAML[name]
    path.write_text(content)
    code, _, err = run_case(meshtron_cli, monkeypatch, ["--config", str(path)])
    check(code, err, expected)

"""YAML presets + `key=value` overrides -> a validated, frozen `Config`.

Everything a user types is checked here, before any device is touched: unknown keys (with
the closest valid key suggested), wrong types, impossible values. Errors are `ConfigError`,
a one-line message naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import typing
from pathlib import Path

import yaml

from meshtron.configs.errors import ConfigError, UserError  # noqa: F401  (UserError: re-exported)
from meshtron.configs.objectives import ARCH_OBJECTIVES, check_architecture
from meshtron.configs.schema import CHOICES, FAMILY_DEFAULTS, SECTION_CLASSES, Config


def preset_names() -> list[str]:
    """Names of the YAML presets shipped in configs/."""
    root = importlib.resources.files("meshtron.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{origin}{where}: YAML syntax error ({problem}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a config file must be a mapping of sections (model:, train:, ...)")
    return data


def read_config_source(name_or_path: str) -> tuple[dict, str]:
    """The raw mapping of a preset name or a YAML path, and the config's name."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.exists():
        if path.is_dir():
            raise ConfigError(f"--config {name_or_path} is a folder; give a YAML file or a preset "
                              f"({', '.join(preset_names())})")
        if not path.is_file():
            raise ConfigError(f"--config {name_or_path}: no such file; give a YAML path or a preset "
                              f"({', '.join(preset_names())})")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config {name_or_path}: cannot read it ({e.__class__.__name__})") from None
        return _read_yaml(text, str(path)), path.stem
    names = preset_names()
    if name_or_path not in names:
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"presets: {', '.join(names)}"
        raise ConfigError(f"--config {name_or_path}: unknown preset; {hint}")
    text = importlib.resources.files("meshtron.configs").joinpath(name_or_path + ".yaml").read_text()
    return _read_yaml(text, f"preset {name_or_path}"), name_or_path


class _Typed(str):
    """Text typed on the command line: parsed as YAML for typed keys, kept verbatim for strings."""


def parse_override(item: str) -> tuple[str, object]:
    """'train.lr=3e-4' -> ('train.lr', text to be typed by the key's declared type)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, for example train.steps=100")
    key, _, raw = item.partition("=")
    return key.strip(), _Typed(raw)


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTION_CLASSES.items() for f in dataclasses.fields(cls)]


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    if not close:  # a typo in the section name: match on the field name alone
        field_name = key.rpartition(".")[2]
        close = [k for k in _all_keys() if k.rpartition(".")[2] == field_name][:1]
    hint = f"did you mean '{close[0]}'?" if close else "see `meshtron train --help` for the keys"
    return ConfigError(f"unknown config key '{key}'; {hint}")


def _flatten(raw: dict, origin: str) -> dict[str, object]:
    flat = {}
    for section, body in raw.items():
        if section == "name":
            continue
        if section not in SECTION_CLASSES:
            raise _unknown_key(str(section))
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: section '{section}' must be a mapping of keys, got {type(body).__name__}")
        for k, v in body.items():
            flat[f"{section}.{k}"] = v
    return flat


def _coerce(key: str, value: object, annotation) -> object:
    """Check `value` against the field's type; accept what YAML reads as a string for numbers."""
    # schema.py uses `from __future__ import annotations`: field types are strings like "int | None".
    optional = "None" in annotation
    base = annotation.replace("| None", "").strip()
    if isinstance(value, _Typed):
        if base == "str":
            return str(value)
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            value = str(value)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' cannot be null; give a {base}")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if base == "int":
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return int(number)
    if base == "float":
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        return number
    if base == "str":
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' must be a string, got a {type(value).__name__}")
        return str(value)
    raise AssertionError(f"unhandled type {annotation} for {key}")


def build_config(flat: dict[str, object], name: str = "custom") -> Config:
    """Typed, resolved and validated Config from a flat {'section.key': value} mapping."""
    sections: dict[str, dict] = {s: {} for s in SECTION_CLASSES}
    for key, value in flat.items():
        section, _, field_name = key.partition(".")
        cls = SECTION_CLASSES.get(section)
        fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
        if field_name not in fields:
            raise _unknown_key(key)
        choices = CHOICES.get(key)
        value = _coerce(key, value, fields[field_name].type)
        if choices and value not in choices and value is not None:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"config key '{key}' = {value!r} is not one of {', '.join(choices)}; {hint}".rstrip("; ").rstrip())
        sections[section][field_name] = value
    model = sections["model"]
    family = model.get("family", "gpt2")
    for k, v in FAMILY_DEFAULTS[family].items():
        if model.get(k) is None:
            model[k] = v
    if sections["train"].get("objective") is None:  # each architecture's own objective by default
        sections["train"]["objective"] = ARCH_OBJECTIVES[model.get("arch") or "decoder"][0]
    config = Config(**{s: SECTION_CLASSES[s](**v) for s, v in sections.items()}, name=name)
    validate(config)
    return config


def config_from_raw(raw: dict, name: str, overrides: typing.Sequence[str] = ()) -> Config:
    """A config from a nested mapping (a YAML file's content) plus `key=value` overrides."""
    flat = _flatten(raw, name)
    for item in overrides:
        key, value = parse_override(item)
        flat[key] = value
    return build_config(flat, name)


def load_config(name_or_path: str = "tiny", overrides: typing.Sequence[str] = ()) -> Config:
    """Load a preset name or YAML path, apply `key=value` overrides, validate."""
    raw, name = read_config_source(name_or_path)
    return config_from_raw(raw, name, overrides)


def config_to_dict(config: Config) -> dict:
    """Nested plain-dict form of a Config (what config.yaml in a run directory holds)."""
    out = {s: dataclasses.asdict(getattr(config, s)) for s in SECTION_CLASSES}
    out["name"] = config.name
    return out


def config_from_dict(raw: dict, overrides: typing.Sequence[str] = ()) -> Config:
    """Inverse of config_to_dict (plus optional overrides), validated."""
    raw = dict(raw)
    name = raw.pop("name", "custom")
    return config_from_raw(raw, str(name), overrides)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def _check_keys(config: Config) -> None:
    """Each key against its own constraint, declared beside it in schema.py."""
    for section, cls in SECTION_CLASSES.items():
        values = getattr(config, section)
        for f in dataclasses.fields(cls):
            check, value = f.metadata.get("check"), getattr(values, f.name)
            if check is not None and value is not None and not check.ok(value):
                raise ConfigError(f"config key '{section}.{f.name}': {check.message.format(value=value)}")


def _validate_pipeline(m, p, t) -> None:
    """parallel.pipeline, microbatches, schedule and virtual_stages against the model and each other (the
    per-replica batch is checked with the mesh, which knows the data degree)."""
    if p.pipeline == 1:
        return
    _require(m.arch == "decoder", "parallel.pipeline",
             f"pipeline stages run decoder-only models for now, not model.arch={m.arch}; set parallel.pipeline=1 "
             "and split the model with parallel.tensor or parallel.zero_stage instead")
    _require(t.objective == "causal", "parallel.pipeline",
             f"pipeline stages train train.objective=causal only, not {t.objective}; set parallel.pipeline=1 "
             "or train.objective=causal")
    _require(m.n_layers % p.pipeline == 0, "parallel.pipeline",
             f"{p.pipeline} stages do not divide model.n_layers={m.n_layers}; use a divisor of {m.n_layers}")
    per_stage = m.n_layers // p.pipeline
    if p.schedule == "interleaved":
        _require(per_stage % p.virtual_stages == 0, "parallel.virtual_stages",
                 f"{p.virtual_stages} virtual stages do not divide the {per_stage} layers per stage; use a divisor "
                 f"of {per_stage}")
    else:
        _require(p.virtual_stages == 1, "parallel.virtual_stages",
                 "only the interleaved schedule has virtual stages; set parallel.schedule=interleaved or 1")
    if p.schedule in ("1f1b", "interleaved"):
        _require(p.microbatches >= p.pipeline, "parallel.microbatches",
                 f"{p.schedule} needs at least as many micro-batches as stages ({p.microbatches} < "
                 f"{p.pipeline}); use parallel.microbatches={2 * p.pipeline}")
    _require(t.grad_accum == 1, "train.grad_accum",
             f"with pipeline stages the micro-batches are parallel.microbatches; set train.grad_accum=1 and "
             f"parallel.microbatches={p.microbatches * t.grad_accum}")
    _require(m.scan_layers, "model.scan_layers", "pipeline stages split the stacked layers; set it to true")


def validate(config: Config) -> None:
    """Reject impossible values with a one-line message naming the key and the fix: each key by its own
    constraint first, then the rules that tie keys together."""
    _check_keys(config)
    m, p, t = config.model, config.parallel, config.train
    if m.head_dim is None:
        _require(m.d_model % m.n_heads == 0, "model.n_heads",
                 f"{m.n_heads} heads do not divide d_model={m.d_model}; pick a divisor or set model.head_dim")
    _require(m.n_heads % m.kv_heads == 0, "model.n_kv_heads",
             f"{m.kv_heads} kv heads do not divide n_heads={m.n_heads}; use a divisor of n_heads")
    if m.position == "rope":
        _require(m.dim_per_head % 2 == 0, "model.head_dim", f"rotary positions need an even head_dim, got {m.dim_per_head}")
    check_architecture(config)
    if m.logits_chunk:
        _require(m.seq_len % m.logits_chunk == 0, "model.logits_chunk",
                 f"{m.logits_chunk} does not divide seq_len={m.seq_len}; use a divisor or 0")
    for key in ("heads", "kv_heads"):
        n = m.n_heads if key == "heads" else m.kv_heads
        _require(n % p.tensor == 0, "parallel.tensor",
                 f"tensor degree {p.tensor} does not divide model.n_{key}={n}; use a divisor of it")
    _require(m.ff_dim % p.tensor == 0, "parallel.tensor",
             f"tensor degree {p.tensor} does not divide the MLP width {m.ff_dim}; use a divisor or change model.d_ff")
    _validate_pipeline(m, p, t)
    _require(t.batch_size % t.grad_accum == 0, "train.grad_accum",
             f"{t.grad_accum} micro-batches do not divide train.batch_size={t.batch_size}; use a divisor")

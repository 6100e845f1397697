"""A Hugging Face directory (GPT-2 or Llama, safetensors) -> a Meshtron ModelConfig and parameters.

Reads only config.json and generation_config.json (as JSON), *.safetensors (as raw arrays) and the
tokenizer (tokenizer.model or tokenizer.json, as data): no code from the directory runs and no
pickle is opened. The tensor tables are export.py's, read backwards.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from meshtron.configs.errors import ConfigError, UserError
from meshtron.configs.loader import build_config
from meshtron.configs.schema import ModelConfig
from meshtron.train.hf.architectures import ARCHITECTURES, GPT2, Architecture
from meshtron.train.hf.export import INDEX_NAME, hf_side_shapes, param_shapes, unflatten_params, wanted
from meshtron.train.data.tokenizer import Tokenizer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack")
# Non-persistent buffers some older checkpoints still store; Meshtron computes them.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
# Hugging Face class defaults for keys a config.json may omit.
HF_DEFAULTS = {
    "gpt2": {"n_inner": None, "n_positions": 1024, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True,
             "initializer_range": 0.02},
    "llama": {"num_key_value_heads": None, "head_dim": None, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "initializer_range": 0.02, "max_position_embeddings": 2048, "rope_theta": 10000.0},
}


def _read_config(hf_dir: Path, name: str = "config.json") -> dict:
    path = hf_dir / name
    if not path.is_file():
        raise UserError(f"{hf_dir} has no {name}; give a Hugging Face model directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({e.__class__.__name__}); re-download or re-export it") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object")
    return config


def _rope_theta(config: dict) -> float | None:
    """rope_theta from rope_parameters (transformers 5) or the top level; refuse scaled RoPE variants."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise UserError(f"config.json: rope_type {kind!r} (scaled RoPE) is not supported; Meshtron implements "
                        "plain RoPE (rope_type 'default')")
    return params.get("rope_theta", config.get("rope_theta"))


def config_from_hf(config: dict) -> tuple[Architecture, ModelConfig]:
    """The architecture and validated ModelConfig of a Hugging Face config.json, or a UserError."""
    model_type = config.get("model_type")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise UserError(f"config.json: model_type {model_type!r} is not supported; Meshtron imports "
                        f"{' and '.join(ARCHITECTURES)} models")
    for key, values in arch.fixed.items():
        if key in config and config[key] not in values:
            raise UserError(f"config.json: {key}={config[key]!r} is not supported for {model_type} "
                            f"(Meshtron computes {values[0]!r})")
    config = {**HF_DEFAULTS[model_type], **config}
    if arch is not GPT2:
        config["rope_theta"] = _rope_theta(config) or HF_DEFAULTS[model_type]["rope_theta"]
    flat = {"model.family": arch.family, **{f"model.{k}": v for k, v in arch.switches.items()}}
    for hf_key, field in arch.config_keys.items():
        if hf_key not in config:
            raise UserError(f"config.json lacks {hf_key!r}; it is not a complete {arch.name} config")
        flat[f"model.{field}"] = config[hf_key]
    flat["model.bias"] = True if arch is GPT2 else bool(config.get("attention_bias") or config.get("mlp_bias"))
    try:
        cfg = build_config(flat).model
    except ConfigError as e:
        raise UserError(f"config.json does not make a valid Meshtron model: {e}") from None
    # values equal to the defaults are left unset, so an export/import round trip gives an equal config
    defaults = {"model.head_dim": cfg.d_model // cfg.n_heads, "model.n_kv_heads": cfg.n_heads,
                "model.d_ff": dataclasses.replace(cfg, d_ff=None).ff_dim}
    flat.update({k: None for k, v in defaults.items() if flat.get(k) == v})
    return arch, build_config(flat).model


class _Tensors:
    """Lazy name -> array access over the directory's safetensors files."""

    def __init__(self, hf_dir: Path):
        from safetensors import safe_open

        files = sorted(hf_dir.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise UserError(f"{hf_dir} holds {pickles[0]}: only safetensors checkpoints are supported (Meshtron "
                                "never opens pickles); convert with transformers in a trusted environment: "
                                "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, "
                                "safe_serialization=True)")
            raise UserError(f"{hf_dir} has no *.safetensors weights")
        index = hf_dir / INDEX_NAME
        if index.is_file():
            try:
                listed = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"{index} is not a valid safetensors index; re-download or re-export it") from None
            missing = sorted(listed - {f.name for f in files})
            if missing:
                raise UserError(f"{hf_dir} lacks the shard {missing[0]} named in {INDEX_NAME}; re-download it")
        self.handles, self.where = [], {}
        for f in files:
            try:
                handle = safe_open(str(f), framework="numpy")
            except Exception as e:  # SafetensorError for a truncated or corrupt file
                raise UserError(f"{f} is not a readable safetensors file ({str(e).splitlines()[0]}); "
                                "re-download or re-export it") from None
            self.handles.append((f, handle))
            for name in handle.keys():
                self.where[name] = len(self.handles) - 1
        self.used: set[str] = set()

    def get(self, name: str) -> np.ndarray | None:
        """The tensor as float32, or None if no file has it."""
        if name not in self.where:
            return None
        self.used.add(name)
        path, handle = self.handles[self.where[name]]
        try:
            return np.asarray(handle.get_tensor(name), dtype=np.float32)
        except Exception as e:
            raise UserError(f"{path}: cannot read tensor {name} ({str(e).splitlines()[0]}); re-download it") from None


def _read_params(arch: Architecture, cfg: ModelConfig, tensors: _Tensors) -> dict[str, np.ndarray]:
    """Meshtron's flattened params (true vocabulary rows) from the Hugging Face tensors."""
    V = cfg.vocab_size
    expected = param_shapes(cfg, vocab_rows=V)
    shapes = hf_side_shapes(cfg, vocab_rows=V)
    flat: dict[str, np.ndarray] = {}
    for t in arch.tensors:
        if not wanted(arch, cfg, t):
            continue
        layers = []
        for i in range(cfg.n_layers) if t.per_layer else [None]:
            name = t.name.format(i=i)
            part_shapes = [shapes[k][1:] if t.per_layer else shapes[k] for k in t.ours]
            w = tensors.get(name)
            if w is None and not t.is_bias:
                raise UserError(f"the checkpoint lacks tensor {name}; it is not a complete {arch.name} model")
            try:
                parts = [np.zeros(s, np.float32) for s in part_shapes] if w is None else t.from_hf(w, part_shapes)
            except ValueError:
                raise UserError(f"tensor {name} has shape {w.shape}, which config.json does not give") from None
            layers.append(parts)
        for n, key in enumerate(t.ours):
            value = np.stack([p[n] for p in layers]) if t.per_layer else layers[0][n]
            if key in expected:
                flat[key] = value
            elif np.any(value):  # a bias Meshtron has no place for (Llama's gate_proj bias)
                raise UserError(f"{t.name.replace('{i}', '*')} is nonzero but Meshtron has no {key}; "
                                "this checkpoint cannot be imported exactly")
    unused = sorted(n for n in tensors.where if n not in tensors.used and not n.endswith(BUFFER_SUFFIXES)
                    and not (n == "lm_head.weight" and cfg.tie_embeddings))
    if unused:
        raise UserError(f"the checkpoint has tensors a {arch.name} model as configured does not use "
                        f"({', '.join(unused[:3])}); it is not a plain {arch.name} model")
    return flat


def _pad_vocab(cfg: ModelConfig, flat: dict[str, np.ndarray]) -> None:
    """Zero rows up to padded_vocab(), as build_model creates them."""
    extra = cfg.padded_vocab() - cfg.vocab_size
    flat["embed.tokens"] = np.pad(flat["embed.tokens"], [(0, extra), (0, 0)])  # (V_padded, E)
    if "head" in flat:
        flat["head"] = np.pad(flat["head"], [(0, 0), (0, extra)])  # (E, V_padded)


def tokenizer_source(hf_dir: Path) -> Path | None:
    """The directory's tokenizer: tokenizer.model (SentencePiece, as Meshtron exports it), else
    tokenizer.json (a Hugging Face tokenizer, as the hub has it), else None."""
    for name in ("tokenizer.model", "tokenizer.json"):
        if (hf_dir / name).is_file():
            return hf_dir / name
    return None


def import_tokenizer(hf_dir: Path) -> Tokenizer:
    """The directory's tokenizer with the EOS / BOS ids its config.json (else generation_config.json, else the
    tokenizer itself) names; a UserError if it has no tokenizer."""
    hf_dir = Path(hf_dir)
    source = tokenizer_source(hf_dir)
    if source is None:
        raise UserError(f"{hf_dir} has no tokenizer.model or tokenizer.json; Meshtron trains and generates with the "
                        "model's own tokenizer: copy it into the directory")
    configs = [_read_config(hf_dir)]
    if (hf_dir / "generation_config.json").is_file():
        configs.append(_read_config(hf_dir, "generation_config.json"))
    ids = {}
    for which in ("eos", "bos"):
        found = [c.get(f"{which}_token_id") for c in configs]
        # a list (Llama 3 has two end tokens): the first is the one that ends documents
        found = [x[0] if isinstance(x, list) and x else x for x in found]
        ids[which] = next((x for x in found if isinstance(x, int) and not isinstance(x, bool)), None)
    return Tokenizer(source, eos_id=ids["eos"], bos_id=ids["bos"])


def import_hf(hf_dir: Path) -> tuple[ModelConfig, dict, Path | None]:
    """Read a Hugging Face GPT-2 or Llama directory: (validated ModelConfig, params as the nested pure
    dict `nnx.to_pure_dict(nnx.state(build_model(cfg)))` gives, tokenizer_source(hf_dir))."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise UserError(f"{hf_dir} is not a directory; give a Hugging Face model directory")
    config = _read_config(hf_dir)
    if config.get("model_type") in ("bert", "t5"):  # encoders: train/hf/seq_export.py
        from meshtron.train.hf.seq_export import import_seq_hf

        return (*import_seq_hf(hf_dir, config), tokenizer_source(hf_dir))
    arch, cfg = config_from_hf(config)
    flat = _read_params(arch, cfg, _Tensors(hf_dir))
    _pad_vocab(cfg, flat)
    return cfg, unflatten_params(flat), tokenizer_source(hf_dir)

"""Encoder and encoder-decoder runs <-> Hugging Face BertForMaskedLM / T5ForConditionalGeneration directories.

Export writes config.json and safetensors (transformers 5 has no Flax models: the PyTorch classes load them);
import reads them back into Meshtron parameters. The tables are in seq_tables.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from meshtron.configs.errors import UserError
from meshtron.configs.schema import ModelConfig
from meshtron.train.hf import seq_tables as tables
from meshtron.train.hf.export import _np_dtype, _write_json, atomic_dir, flatten_params, write_weights


def check_seq_exportable(cfg: ModelConfig) -> str:
    """"bert" or "t5": the Hugging Face class computing what `cfg` computes, or a UserError naming the feature."""
    if cfg.arch == "encoder":
        name, switches = "bert", tables.BERT_SWITCHES
    else:
        name, switches = "t5", tables.T5_SWITCHES
        if cfg.mlp not in ("relu", "geglu"):
            raise UserError(f"model.mlp={cfg.mlp} has no Hugging Face T5 equivalent; use relu or geglu")
    wrong = [f"model.{k}={getattr(cfg, k)}" for k, v in switches.items() if getattr(cfg, k) != v]
    if name == "bert" and cfg.type_vocab_size == 0:
        wrong.append("model.type_vocab_size=0")
    if wrong:
        need = ", ".join(f"{k}={v}" for k, v in switches.items())
        raise UserError(f"{', '.join(wrong)} has no Hugging Face {'BERT' if name == 'bert' else 'T5'} equivalent "
                        f"(it needs {need})")
    if cfg.kv_heads != cfg.n_heads:
        raise UserError(f"model.n_kv_heads={cfg.kv_heads}: Hugging Face {name.upper()} has no grouped-query attention")
    return name


def seq_tensors(cfg: ModelConfig) -> list:
    """The Hugging Face rows of `cfg`'s architecture."""
    return tables.BERT if cfg.arch == "encoder" else tables.t5_tensors(cfg)


def hf_seq_config(cfg: ModelConfig, specials: dict, dtype: str) -> dict:
    """config.json of the Hugging Face model computing what `cfg` computes."""
    if cfg.arch == "encoder":
        resolved = {"d_ff": cfg.ff_dim, "max_positions": cfg.max_positions or cfg.seq_len}
        out = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_act": "gelu",
               **{hf: resolved.get(ours, getattr(cfg, ours)) for hf, ours in tables.BERT_KEYS.items()},
               "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": 0.0,
               "pad_token_id": specials.get("pad", 0), "tie_word_embeddings": True}
    else:
        resolved = {"d_ff": cfg.ff_dim, "head_dim": cfg.dim_per_head, "n_decoder_layers": cfg.n_decoder_layers
                    or cfg.n_layers}
        out = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
               **{hf: resolved.get(ours, getattr(cfg, ours)) for hf, ours in tables.T5_KEYS.items()},
               "feed_forward_proj": "gated-gelu" if cfg.mlp == "geglu" else "relu", "dropout_rate": cfg.dropout,
               "tie_word_embeddings": bool(cfg.tie_embeddings), "is_encoder_decoder": True,
               "decoder_start_token_id": specials.get("pad", 0), "pad_token_id": specials.get("pad", 0),
               "eos_token_id": specials.get("eos", 2)}
    return {**out, "dtype": dtype, "use_cache": True}


def _hf_arrays(cfg: ModelConfig, flat: dict, np_dtype) -> Iterator[tuple[str, np.ndarray]]:
    rows = seq_tensors(cfg)
    for t in rows:
        if not t.per_layer:
            yield t.name, t.to_hf([flat[k] for k in t.ours]).astype(np_dtype)
    for t in rows:
        if t.per_layer:
            for i in range(tables.stack_layers(cfg, t)):
                yield t.name.format(i=i), t.to_hf([flat[k][i] for k in t.ours]).astype(np_dtype)


def trim_vocab(cfg: ModelConfig, flat: dict) -> dict:
    """Drop padded vocabulary rows (Hugging Face holds the true vocabulary)."""
    V = cfg.vocab_size
    out = dict(flat)
    for key, axis in (("embed.tokens", 0), ("mlm.bias", 0), ("head", 1)):
        if key in out:
            out[key] = np.take(out[key], np.arange(V), axis=axis)
    return out


def export_seq_hf(cfg: ModelConfig, params: dict, out_dir: Path, *, dtype: str = "float32",
                  overwrite: bool = False, specials: dict | None = None, write_tokenizer=None) -> Path:
    """Write a BertForMaskedLM or T5ForConditionalGeneration directory for an encoder / encoder-decoder run."""
    check_seq_exportable(cfg)
    np_dtype = _np_dtype(dtype)
    flat = trim_vocab(cfg, flatten_params(params))
    specials = specials or {}
    with atomic_dir(out_dir, overwrite) as tmp:
        if write_tokenizer is not None:
            write_tokenizer(tmp)
        write_weights(_hf_arrays(cfg, flat, np_dtype), tmp, 5 * 2**30)
        _write_json(tmp / "config.json", hf_seq_config(cfg, specials, dtype))
        if cfg.arch == "encoder_decoder":
            _write_json(tmp / "generation_config.json",
                        {"decoder_start_token_id": specials.get("pad", 0), "eos_token_id": specials.get("eos", 2),
                         "pad_token_id": specials.get("pad", 0)})
    return Path(out_dir)


def seq_config_from_hf(config: dict, base: ModelConfig) -> ModelConfig:
    """The ModelConfig of a Hugging Face BERT or T5 config.json (other fields from `base`)."""
    kind = config.get("model_type")
    if kind == "bert":
        keys, switches = tables.BERT_KEYS, dict(tables.BERT_SWITCHES)
        if config.get("hidden_act", "gelu") != "gelu":
            raise UserError(f"BERT hidden_act={config.get('hidden_act')}: Meshtron computes gelu (erf) only")
    elif kind == "t5":
        keys, switches = tables.T5_KEYS, dict(tables.T5_SWITCHES)
        proj = config.get("feed_forward_proj", "relu")
        if proj not in ("relu", "gated-gelu"):
            raise UserError(f"T5 feed_forward_proj={proj}: Meshtron computes relu or gated-gelu")
        switches.update(mlp="geglu" if proj == "gated-gelu" else "relu",
                        tie_embeddings=bool(config.get("tie_word_embeddings", True)))
    else:
        raise UserError(f"model_type {kind!r} is not an encoder Meshtron imports (bert, t5)")
    values = {ours: config[hf] for hf, ours in keys.items() if config.get(hf) is not None}
    if kind == "bert":
        values["seq_len"] = min(base.seq_len, values.get("max_positions", base.seq_len))
    return dataclasses.replace(base, **values, **switches)


def seq_params_from_hf(cfg: ModelConfig, get) -> dict[str, np.ndarray]:
    """Flat Meshtron parameters (true vocabulary rows) from `get(hf_name) -> array or None`."""
    flat: dict[str, list] = {}
    for t in seq_tensors(cfg):
        layers = [None] if not t.per_layer else range(tables.stack_layers(cfg, t))
        for i in layers:
            w = get(t.name if i is None else t.name.format(i=i))
            if w is None:
                if t.ours == ("mlm.bias",):
                    w = np.zeros(cfg.vocab_size, np.float32)
                else:
                    raise UserError(f"the Hugging Face weights have no tensor {t.name}; is this a complete "
                                    "checkpoint?")
            shape = (w.T if t.transpose else w).shape
            (part,) = t.from_hf(np.asarray(w, np.float32), [_our_shape(cfg, t.ours[0], shape)])
            flat.setdefault(t.ours[0], []).append(part)
    return {k: v[0] if len(v) == 1 and not _stacked(k) else np.stack(v) for k, v in flat.items()}


def _stacked(key: str) -> bool:
    return key.split(".")[0] in ("blocks", "encoder_blocks", "decoder_blocks")


def _our_shape(cfg: ModelConfig, key: str, hf_shape: tuple) -> tuple:
    """The per-layer Meshtron shape of `key` given its (untransposed) Hugging Face shape."""
    H, D = cfg.n_heads, cfg.dim_per_head
    leaf = key.split(".")[-1]
    if leaf in ("q", "k", "v"):
        return (hf_shape[0], H, D)
    if leaf == "o":
        return (H, D, hf_shape[1])
    if leaf.endswith("_bias") and leaf[0] in "qkv":
        return (H, D)
    return tuple(hf_shape)


def import_seq_hf(hf_dir: Path, config: dict) -> tuple[ModelConfig, dict]:
    """A Hugging Face BERT / T5 directory -> (validated ModelConfig, nested params with padded vocabulary)."""
    from safetensors import safe_open

    from meshtron.configs import build_config
    from meshtron.configs.errors import ConfigError
    from meshtron.train.hf.export import unflatten_params

    base = build_config({"model.family": config.get("model_type")}).model
    cfg = seq_config_from_hf(config, base)
    try:
        cfg = build_config({f"model.{k}": v for k, v in dataclasses.asdict(cfg).items()}).model
    except ConfigError as e:
        raise UserError(f"config.json does not make a valid Meshtron model: {e}") from None
    files = sorted(Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise UserError(f"{hf_dir} has no safetensors weights (Meshtron never opens pickles)")
    handles = [safe_open(str(f), framework="numpy") for f in files]

    def get(name):
        for h in handles:
            if name in h.keys():
                return h.get_tensor(name)
        return None

    flat = seq_params_from_hf(cfg, get)
    extra = cfg.padded_vocab() - cfg.vocab_size
    for key, axis in (("embed.tokens", 0), ("mlm.bias", 0), ("head", 1)):
        if key in flat:
            pad = [(0, 0)] * flat[key].ndim
            pad[axis] = (0, extra)
            flat[key] = np.pad(flat[key], pad)
    return cfg, unflatten_params(flat)

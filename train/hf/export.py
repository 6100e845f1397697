"""Meshtron parameters -> a Hugging Face directory (GPT-2 or Llama) that transformers loads offline.

The tables of train/hf/architectures.py (`GPT2`, `LLAMA`) say which Meshtron parameters make up each
Hugging Face tensor and how their axes map; importer.py reads the same tables backwards.
Meshtron keeps projections per head (q: (E, H, D)); a Hugging Face matrix is the 2-D
(in, out) form of it (GPT-2's Conv1D) or its transpose (torch nn.Linear, Llama).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from meshtron.configs.errors import UserError
from meshtron.configs.schema import ModelConfig
from meshtron.model import mup
from meshtron.train.hf.architectures import GPT2, LLAMA, Architecture, HFTensor
from meshtron.train.run.rundir import atomic_dir

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DTYPES = ("float32", "bfloat16")


def check_exportable(cfg: ModelConfig) -> Architecture:
    """The Hugging Face architecture that computes what `cfg` computes, or a UserError naming the feature."""
    if cfg.arch != "decoder":
        from meshtron.train.hf.seq_export import check_seq_exportable

        return check_seq_exportable(cfg)
    if cfg.parallel_block:
        raise UserError("model.parallel_block=true (PaLM's parallel block) has no Hugging Face GPT-2 or Llama "
                        "equivalent")
    if cfg.position == "sinusoidal":
        raise UserError("model.position=sinusoidal has no Hugging Face GPT-2 or Llama equivalent; use learned or rope")
    arch = GPT2 if cfg.position == "learned" else LLAMA
    wrong = [f"model.{k}={getattr(cfg, k)}" for k, v in arch.switches.items() if getattr(cfg, k) != v]
    if wrong:
        need = ", ".join(f"{k}={v}" for k, v in arch.switches.items() if k != "parallel_block")
        raise UserError(f"{', '.join(wrong)} with model.position={cfg.position} has no Hugging Face equivalent "
                        f"(Hugging Face {arch.name} needs {need})")
    if arch is GPT2 and cfg.kv_heads != cfg.n_heads:
        raise UserError(f"model.n_kv_heads={cfg.kv_heads} (grouped-query attention) has no Hugging Face GPT-2 "
                        "equivalent; use n_kv_heads=n_heads, or a llama-style model "
                        "(position=rope, norm=rmsnorm, mlp=swiglu)")
    if arch is GPT2 and cfg.n_heads * cfg.dim_per_head != cfg.d_model:
        raise UserError(f"model.head_dim={cfg.dim_per_head}: Hugging Face GPT-2 needs n_heads x head_dim = d_model")
    if arch is LLAMA and cfg.d_model % cfg.n_heads:
        raise UserError(f"model.n_heads={cfg.n_heads}: Hugging Face Llama needs d_model divisible by n_heads")
    mup.check_exportable(cfg)
    return arch


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


def flatten_params(params: dict) -> dict[str, np.ndarray]:
    """Nested pure dict -> {"blocks.attn.q": array (L, E, H, D), ...}; per-layer blocks
    (model.scan_layers=false, a dict keyed 0..L-1 or a list) are stacked."""
    params = dict(params)
    blocks = params.get("blocks")
    if isinstance(blocks, dict) and blocks and all(isinstance(k, int) for k in blocks):
        blocks = [blocks[i] for i in sorted(blocks)]
    if isinstance(blocks, (list, tuple)):
        layers = [_flatten(b) for b in blocks]
        params["blocks"] = {k: np.stack([np.asarray(layer[k]) for layer in layers]) for k in layers[0]}
    return {k: np.asarray(v) for k, v in _flatten(params).items()}


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    """Inverse of flatten_params: {"a.b": x} -> {"a": {"b": x}} (stacked blocks)."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def param_shapes(cfg: ModelConfig, vocab_rows: int | None = None) -> dict[str, tuple]:
    """Shapes of a model's parameters, flattened as flatten_params does (layers stacked)."""
    from flax import nnx

    from meshtron.model.transformer import Transformer

    cfg = dataclasses.replace(cfg, scan_layers=True)
    with nnx.use_eager_sharding(False):  # shapes only: no mesh needed
        abstract = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(params=0), vocab_rows))
    return {k: tuple(v.shape) for k, v in _flatten(nnx.to_pure_dict(nnx.state(abstract))).items()}


def hf_side_shapes(cfg: ModelConfig, vocab_rows: int | None = None) -> dict[str, tuple]:
    """param_shapes plus every bias a Hugging Face model may hold that this config lacks (zero in Meshtron)."""
    shapes = param_shapes(dataclasses.replace(cfg, bias=True), vocab_rows)
    if cfg.mlp == "swiglu":
        shapes["blocks.mlp.gate_bias"] = shapes["blocks.mlp.up_bias"]
    return shapes


def wanted(arch: Architecture, cfg: ModelConfig, tensor: HFTensor) -> bool:
    """Whether the Hugging Face model for `cfg` has this tensor (GPT-2 always has biases; Llama as configured)."""
    if tensor.ours == ("head",):
        return not cfg.tie_embeddings
    if tensor.is_bias:
        return arch is GPT2 or bool(cfg.bias)
    return True


def hf_config(arch: Architecture, cfg: ModelConfig, bos_id: int | None, eos_id: int | None, dtype: str) -> dict:
    """config.json for the Hugging Face model computing what `cfg` computes."""
    resolved = {"d_ff": cfg.ff_dim, "head_dim": cfg.dim_per_head, "n_kv_heads": cfg.kv_heads}
    out = {"architectures": [arch.hf_class], "model_type": arch.model_type,
           **{hf: resolved.get(ours, getattr(cfg, ours)) for hf, ours in arch.config_keys.items()},
           **{hf: values[0] for hf, values in arch.fixed.items()},
           "bos_token_id": bos_id, "eos_token_id": eos_id, "dtype": dtype, "use_cache": True}
    if arch is GPT2:  # Meshtron has no attention dropout
        out.update(resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=0.0)
    else:
        out.update(attention_bias=bool(cfg.bias), mlp_bias=bool(cfg.bias), attention_dropout=0.0,
                   rope_parameters={"rope_theta": cfg.rope_theta, "rope_type": "default"})
    return out


def _hf_tensors(arch, cfg, flat, np_dtype) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) in file order: whole-model tensors, then layer by layer."""
    rows = [t for t in arch.tensors if wanted(arch, cfg, t)]
    layer_rows = [t for t in rows if t.per_layer]
    for t in rows:
        if not t.per_layer:
            yield t.name, t.to_hf([flat[k] for k in t.ours]).astype(np_dtype)
    for i in range(cfg.n_layers):
        for t in layer_rows:
            yield t.name.format(i=i), t.to_hf([flat[k][i] for k in t.ours]).astype(np_dtype)


def write_weights(tensors, out_dir: Path, max_shard_bytes: int) -> list[Path]:
    """Save (name, array) pairs as model.safetensors, or as model-0000X-of-0000Y.safetensors shards of at most
    `max_shard_bytes` (a larger single tensor gets its own shard) plus model.safetensors.index.json."""
    from safetensors.numpy import save_file

    shards: list[list[str]] = []
    current: dict[str, np.ndarray] = {}
    current_bytes = total_bytes = 0

    def flush():
        save_file(current, str(out_dir / f"shard-{len(shards)}.tmp"), metadata={"format": "pt"})
        shards.append(list(current))

    for name, array in tensors:
        if current and current_bytes + array.nbytes > max_shard_bytes:
            flush()
            current, current_bytes = {}, 0
        current[name] = np.ascontiguousarray(array)
        current_bytes += array.nbytes
        total_bytes += array.nbytes
    flush()
    names = [WEIGHTS_NAME] if len(shards) == 1 else [
        f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors" for n in range(len(shards))]
    for n, name in enumerate(names):
        os.replace(out_dir / f"shard-{n}.tmp", out_dir / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_bytes},
                 "weight_map": {t: names[n] for n, shard in enumerate(shards) for t in shard}}
        _write_json(out_dir / INDEX_NAME, index)
    return [out_dir / n for n in names]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _checked_params(cfg: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """Flattened params, checked against the config's shapes (any vocabulary padding accepted)."""
    flat = flatten_params(params)
    if "embed.tokens" not in flat:
        raise UserError("params have no embed.tokens; pass the model's parameters (nnx.to_pure_dict(nnx.state(model)))")
    expected = param_shapes(cfg, vocab_rows=flat["embed.tokens"].shape[0])
    if set(flat) != set(expected):
        diff = sorted(set(flat) ^ set(expected))
        raise UserError(f"params do not match the model config (differing keys: {', '.join(diff[:4])}); "
                        "export with the config the checkpoint was trained with")
    for key, shape in expected.items():
        if flat[key].shape != shape:
            raise UserError(f"params do not match the model config: {key} has shape {flat[key].shape}, "
                            f"the config gives {shape}")
    return flat


def export_hf(model_cfg: ModelConfig, params: dict, tokenizer_path: Path | None, out_dir: Path,
              max_shard_bytes: int = 5 * 2**30, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write a Hugging Face directory (config, safetensors weights, generation config and, given the run's
    tokenizer.model or tokenizer.json, the tokenizer) that transformers loads offline; returns out_dir."""
    from meshtron.train.hf import tokenizer as hf_tokenizer
    from meshtron.train.data.tokenizer import BOS_ID, EOS_ID, Tokenizer

    if model_cfg.arch != "decoder":  # BERT / T5: train/hf/seq_export.py
        return _export_seq(model_cfg, params, tokenizer_path, out_dir, dtype, overwrite)
    arch = check_exportable(model_cfg)
    np_dtype = _np_dtype(dtype)
    flat = mup.fold_for_export(model_cfg, _checked_params(model_cfg, params))
    V = model_cfg.vocab_size
    flat["embed.tokens"] = flat["embed.tokens"][:V]  # drop the padding rows: HF's vocab is the true one
    if "head" in flat:
        flat["head"] = flat["head"][:, :V]
    for key, shape in hf_side_shapes(model_cfg, vocab_rows=V).items():
        flat.setdefault(key, np.zeros(shape, np.float32))
    tokenizer = Tokenizer(tokenizer_path) if tokenizer_path is not None else None
    special = {"bos": BOS_ID, "eos": EOS_ID} if tokenizer is None else {"bos": tokenizer.bos_id,
                                                                        "eos": tokenizer.eos_id}
    if tokenizer is not None and tokenizer.vocab_size > V:
        raise UserError(f"tokenizer {tokenizer_path} has {tokenizer.vocab_size} ids but model.vocab_size={V}; "
                        "export with the tokenizer the model was trained with")
    with atomic_dir(out_dir, overwrite) as tmp:
        if tokenizer is not None:  # first: it fails fast (no `tokenizers` package)
            hf_tokenizer.write_tokenizer(tokenizer, tmp, model_max_length=model_cfg.seq_len)
        write_weights(_hf_tensors(arch, model_cfg, flat, np_dtype), tmp, max_shard_bytes)
        _write_json(tmp / "config.json", hf_config(arch, model_cfg, special["bos"], special["eos"], dtype))
        _write_json(tmp / "generation_config.json", {"bos_token_id": special["bos"], "eos_token_id": special["eos"]})
    return Path(out_dir)


def export_safetensors(model_cfg: ModelConfig, params: dict, out_dir: Path, max_shard_bytes: int = 5 * 2**30, *,
                       dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write Meshtron's own consolidated weights (model.safetensors, dotted names such as
    "blocks.attn.q", layers stacked, vocabulary padded) and model_config.json; returns out_dir."""
    np_dtype = _np_dtype(dtype)
    flat = _checked_params(model_cfg, params)
    with atomic_dir(out_dir, overwrite) as tmp:
        write_weights(((k, v.astype(np_dtype)) for k, v in flat.items()), tmp, max_shard_bytes)
        _write_json(tmp / "model_config.json", dataclasses.asdict(model_cfg))
    return Path(out_dir)


def _export_seq(model_cfg, params, tokenizer_path, out_dir, dtype, overwrite) -> Path:
    from meshtron.configs.objectives import ARCH_OBJECTIVES
    from meshtron.train.data.objectives import PAD_ID
    from meshtron.train.data.tokenizer import Tokenizer
    from meshtron.train.hf import tokenizer as hf_tokenizer
    from meshtron.train.hf.seq_export import export_seq_hf

    tokenizer = Tokenizer(tokenizer_path) if tokenizer_path is not None else None
    specials = {"eos": tokenizer.eos_id if tokenizer else 2, "pad": PAD_ID}
    objective = ARCH_OBJECTIVES[model_cfg.arch][0]  # mlm or span_corruption: its special tokens are exported
    write = (None if tokenizer is None else
             lambda tmp: hf_tokenizer.write_tokenizer(tokenizer, tmp, model_max_length=model_cfg.seq_len,
                                                      objective=objective, vocab_size=model_cfg.vocab_size))
    return export_seq_hf(model_cfg, params, out_dir, dtype=dtype, overwrite=overwrite, specials=specials,
                         write_tokenizer=write)


def _np_dtype(dtype: str):
    """The numpy dtype of a --dtype name (bfloat16 is ml_dtypes', a jax dependency)."""
    import ml_dtypes

    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return np.float32 if dtype == "float32" else ml_dtypes.bfloat16

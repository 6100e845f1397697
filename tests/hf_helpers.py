"""Helpers shared by the Hugging Face tests (library and CLI): tiny models on both sides, their
logits, a SentencePiece model and a GPT-2 style byte-level tokenizer. torch and transformers are
imported inside the helpers that need them, so tokenizer-only tests run without them."""

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import TINY
from meshtron.configs import load_config
from meshtron.configs.schema import ModelConfig
from meshtron.model import build_model

TOLERANCE = 1e-4  # max abs logit difference, float32 on CPU
HELD_OUT = ["tokenize.py", "pprint.py", "calendar.py", "html/parser.py", "csv.py"]  # not in the training corpus
VOCAB = 300  # not a multiple of 128: the imported tables are padded
HF_CONFIGS = {
    "gpt2": lambda **kw: _transformers().GPT2Config(**{
        **dict(vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2), **kw}),
    "llama_gqa": lambda **kw: _transformers().LlamaConfig(**{
        **dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, initializer_range=0.2,
               rope_parameters={"rope_theta": 500.0, "rope_type": "default"}), **kw}),
}


def _transformers():
    return pytest.importorskip("transformers")


def held_out_text(name: str = "pprint.py", chars: int = 4000) -> str:
    """The start of a standard-library file the tokenizers never saw."""
    import sysconfig

    return (Path(sysconfig.get_paths()["stdlib"]) / name).read_text(encoding="utf-8")[:chars]


def byte_level_tokenizer(texts, vocab_size: int, end_token: str = "<|endoftext|>"):
    """A GPT-2 style tokenizers.Tokenizer (byte-level BPE) trained on `texts`, with `end_token` as its last id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_special_tokens([end_token])  # GPT-2's <|endoftext|> is its last id, 50256
    return tokenizer


def hub_tokenizer_dir(kind: str, texts, out: Path, vocab_size: int = 400) -> Path:
    """A folder with a hub-style tokenizer.json trained on `texts`: "bert" (WordPiece, [PAD] [UNK] [CLS] [SEP]
    [MASK] at 0-4, cls / sep named as BOS / EOS in tokenizer_config.json, as Meshtron needs an EOS) or "t5"
    (Unigram: <pad> </s> <unk> at 0-2, its own <extra_id_0..99> on top, extra_id_0 highest, as T5's)."""
    from tokenizers.implementations import BertWordPieceTokenizer, SentencePieceUnigramTokenizer

    out.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        tokenizer = BertWordPieceTokenizer(lowercase=True)
        tokenizer.train_from_iterator(texts, vocab_size=vocab_size, show_progress=False,
                                      special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        (out / "tokenizer_config.json").write_text('{"bos_token": "[CLS]", "eos_token": "[SEP]"}\n')
    else:
        tokenizer = SentencePieceUnigramTokenizer()
        tokenizer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
        tokenizer.add_special_tokens([f"<extra_id_{i}>" for i in range(99, -1, -1)])
    tokenizer.save(str(out / "tokenizer.json"))
    return out / "tokenizer.json"


# -- Meshtron side --------------------------------------------------------------------------------
def tiny_cfg(*overrides: str) -> ModelConfig:
    """A 2-layer, d_model 64, seq 32 model config; init_std 0.2 so logits are far from zero."""
    return load_config("tiny", [*TINY, "model.init_std=0.2", *overrides]).model


def meshtron_model(cfg: ModelConfig, params: dict | None = None, seed: int = 0):
    """build_model, with `params` (a pure dict) loaded when given."""
    with nnx.use_eager_sharding(False):  # no mesh in these tests
        model = build_model(cfg, seed)
    if params is not None:
        state = nnx.state(model)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(model, state)
    return model


def params_of(model) -> dict:
    """The model's params as a nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model))


def perturbed(model, seed: int = 0) -> dict:
    """The model's params plus noise, so zero biases and unit norm scales are exercised too."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                        params_of(model))


def logits_fn(model):
    """A jitted tokens (B, T) -> float32 logits over the true vocabulary (B, T, V), as numpy."""
    graphdef, state = nnx.split(model)
    vocab = model.cfg.vocab_size
    forward = jax.jit(lambda s, tokens: nnx.merge(graphdef, s)(tokens)[0][..., :vocab])
    return lambda tokens: np.asarray(forward(state, tokens))


def random_tokens(cfg: ModelConfig, batch: int = 2, seed: int = 1) -> np.ndarray:
    """(batch, seq_len) token ids of the true vocabulary."""
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, cfg.seq_len))


# -- transformers side ----------------------------------------------------------------------------
def load_hf(path, **kwargs):
    """A transformers causal LM from a directory, float32 unless told otherwise, in eval mode."""
    import torch

    return _transformers().AutoModelForCausalLM.from_pretrained(path, **{"dtype": torch.float32, **kwargs}).eval()


def hf_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    """transformers' logits for token ids (B, T), as numpy."""
    import torch

    with torch.no_grad():
        return hf_model(torch.as_tensor(tokens)).logits.float().numpy()


def save_hf_model(kind: str, path, seed: int = 0, **config):
    """A random transformers model (noise on every weight, biases and norms included) saved with save_pretrained."""
    import torch

    torch.manual_seed(seed)
    model = _transformers().AutoModelForCausalLM.from_config(HF_CONFIGS[kind](**config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model

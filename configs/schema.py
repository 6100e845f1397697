"""Every config key Meshtron understands: typed, frozen dataclasses, one docstring per field.

A YAML preset plus `key=value` overrides is turned into a `Config` by `configs.loader`.
Fields left as `None` are filled from the model family (see `FAMILY_DEFAULTS`) or derived
from other fields when the config is resolved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Switches by which GPT-2, GPT-3, LLaMA and PaLM differ. A preset or override wins over these.
FAMILY_DEFAULTS = {
    "gpt2": dict(position="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True,
                 parallel_block=False),
    "gpt3": dict(position="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True,
                 parallel_block=False),
    "llama": dict(position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
                  parallel_block=False),
    "palm": dict(position="rope", norm="layernorm", mlp="swiglu", bias=False, tie_embeddings=True,
                 parallel_block=True),
    # encoder-only and encoder-decoder families (model.arch follows the family)
    "bert": dict(arch="encoder", position="learned", norm="layernorm", mlp="gelu_exact", bias=True,
                 tie_embeddings=True, parallel_block=False, post_norm=True, embed_norm=True, type_vocab_size=2,
                 norm_eps=1e-12),
    "t5": dict(arch="encoder_decoder", position="relative", norm="rmsnorm", mlp="relu", bias=False,
               tie_embeddings=True, parallel_block=False, norm_eps=1e-6),
    "transformer": dict(arch="encoder_decoder", position="sinusoidal", norm="layernorm", mlp="relu", bias=True,
                        tie_embeddings=True, parallel_block=False, post_norm=True),
}


@dataclass(frozen=True)
class Check:
    """A key's own constraint: `ok(value)`, else the message (with {value}) after "config key 'KEY': "."""

    ok: Callable[[Any], bool]
    message: str


POSITIVE = Check(lambda v: v > 0, "must be positive, got {value}")
POSITIVE_OR_UNSET = Check(lambda v: v > 0, "must be positive (or unset), got {value}")
NON_NEGATIVE = Check(lambda v: v >= 0, "must be >= 0, got {value}")
AT_LEAST_ONE = Check(lambda v: v >= 1, "must be >= 1, got {value}")
FRACTION = Check(lambda v: 0.0 <= v < 1.0, "must be in [0, 1), got {value}")


def learned_positions(model) -> bool:
    """seq_len shapes the parameters only through a learned position table."""
    return model.position == "learned"


def key(default, *, choices: tuple = (), check: Check | None = None, shape=False):
    """A config field with its rules beside it: the values it may take (`choices`), its own constraint
    (`check`, never applied to an unset None), and whether it defines the parameters' shapes (`shape`: True, or
    a predicate of the ModelConfig), so that a checkpoint cannot resume under a change to it."""
    return field(default=default, metadata={"choices": choices, "check": check, "shape": shape})


@dataclass(frozen=True)
class ModelConfig:
    family: str = key("gpt2", choices=tuple(FAMILY_DEFAULTS))
    """Model family whose defaults fill the switches below: gpt2 | gpt3 | llama | palm (decoders) | bert (encoder) |
    t5 | transformer (Vaswani et al.) (encoder-decoders)."""
    n_layers: int = key(2, check=POSITIVE, shape=True)
    """Number of transformer blocks."""
    d_model: int = key(128, check=POSITIVE, shape=True)
    """Width of the residual stream."""
    n_heads: int = key(4, check=POSITIVE, shape=True)
    """Query heads per attention layer."""
    n_kv_heads: int | None = key(None, check=POSITIVE_OR_UNSET, shape=True)
    """Key/value heads (grouped-query attention); default n_heads (multi-head); 1 is multi-query."""
    head_dim: int | None = key(None, check=POSITIVE_OR_UNSET, shape=True)
    """Width of one head; default d_model / n_heads (GPT-3 style configs may set it apart)."""
    d_ff: int | None = key(None, check=POSITIVE_OR_UNSET, shape=True)
    """Hidden width of the MLP; default 4*d_model (gelu) or LLaMA's 8/3*d_model rounded up to 256 (swiglu)."""
    vocab_size: int = key(2048, check=POSITIVE, shape=True)
    """Tokenizer vocabulary; the embedding is padded to a multiple of vocab_multiple x tensor degree."""
    seq_len: int = key(128, check=POSITIVE, shape=learned_positions)
    """Context length in tokens (training window and the longest generation)."""
    position: str | None = key(None, choices=("learned", "rope", "sinusoidal", "relative"), shape=True)
    """Positions: learned | rope | sinusoidal | relative (T5's bucketed bias; encoder, encoder_decoder) (family default)."""
    norm: str | None = key(None, choices=("layernorm", "rmsnorm"), shape=True)
    """Normalisation: layernorm | rmsnorm (family default)."""
    norm_eps: float = key(1e-5, check=POSITIVE)
    """Epsilon of the normalisation layers."""
    mlp: str | None = key(None, choices=("gelu", "swiglu", "gelu_exact", "relu", "geglu"), shape=True)
    """MLP: gelu (tanh approximation, GPT-2) | swiglu (LLaMA, PaLM) | gelu_exact (BERT) | relu (T5, Transformer) |
    geglu (T5 v1.1) (family default)."""
    bias: bool | None = key(None, shape=True)
    """Biases in linear layers and LayerNorm (family default)."""
    tie_embeddings: bool | None = key(None, shape=True)
    """Output layer shares the token embedding matrix (family default)."""
    parallel_block: bool | None = key(None, shape=True)
    """PaLM-style block: attention and MLP read the same normalised input (family default)."""
    dropout: float = key(0.0, check=FRACTION)
    """Dropout rate on embeddings and residual branches during training."""
    rope_theta: float = key(10000.0, check=POSITIVE)
    """Base of the rotary position frequencies."""
    init: str = key("gpt2", choices=("gpt2", "xavier", "kaiming"))
    """Initialisation: gpt2 (normal(init_std), residual outputs / sqrt(2 n_layers)) | xavier | kaiming."""
    init_std: float = key(0.02, check=POSITIVE)
    """Standard deviation of the gpt2 initialisation."""
    param_dtype: str = key("float32", choices=("float32", "bfloat16"))
    """Storage dtype of parameters (the master weights): float32 | bfloat16."""
    compute_dtype: str = key("auto", choices=("auto", "float32", "bfloat16"))
    """Dtype of matmuls and activations: auto (float32 on CPU, bfloat16 on GPU/TPU) | float32 | bfloat16."""
    remat: str = key("none", choices=("none", "full", "dots"))
    """Activation checkpointing per block: none | full (recompute all) | dots (save matmul outputs only)."""
    scan_layers: bool = key(True, shape=True)
    """Stack the blocks and run them with a scan, so compile time does not grow with depth."""
    scan_unroll: int = key(0, check=NON_NEGATIVE)
    """Layers per iteration of that scan: 0 = auto (on CPU without remat or ZeRO-3: all of them up to 8 layers, which XLA:CPU runs faster; else 1), or a count."""
    attention: str = key("auto", choices=("auto", "xla", "cudnn"))
    """Attention kernel: auto (cuDNN flash attention when usable; on a CPU, causal attention in 2-4 query blocks that
    skip the masked upper triangle) | xla (jax.nn.dot_product_attention over the whole square) | cudnn."""
    logits_chunk: int = key(0, check=NON_NEGATIVE)
    """Compute the output layer and loss over this many positions at a time (0: all at once)."""
    vocab_multiple: int = key(128, check=POSITIVE)
    """Pad the embedding rows to a multiple of this times the tensor degree (Megatron style)."""
    arch: str = key("decoder", choices=("decoder", "encoder", "encoder_decoder"), shape=True)
    """Architecture: decoder | encoder (bidirectional, MLM head) | encoder_decoder; set by model.family."""
    n_decoder_layers: int | None = key(None, check=POSITIVE_OR_UNSET, shape=True)
    """Decoder blocks of an encoder_decoder; default n_layers (n_layers counts the encoder's)."""
    post_norm: bool = key(False, shape=True)
    """Normalise after each residual add (BERT, the original Transformer) instead of before (encoder archs)."""
    embed_norm: bool = key(False, shape=True)
    """Normalise the embeddings before the first block (BERT) (encoder archs)."""
    type_vocab_size: int = key(0, check=NON_NEGATIVE, shape=True)
    """Token-type (segment) embeddings of an encoder (BERT: 2); 0 for none."""
    max_positions: int | None = key(None, check=POSITIVE_OR_UNSET, shape=True)
    """Rows of a learned position table of an encoder (BERT: 512); default seq_len."""
    relative_buckets: int = key(32, check=POSITIVE, shape=True)
    """Buckets of T5's relative position bias (model.position=relative)."""
    relative_max_distance: int = key(128, check=POSITIVE)
    """Distance from which T5's relative position buckets stop growing (model.position=relative)."""
    parametrization: str = key("standard", choices=("standard", "mup"))
    """standard | mup (Tensor Programs V, Table 3: learning rate and init tuned at mup_base_width carry over)."""
    mup_base_width: int | None = key(None, check=POSITIVE_OR_UNSET)
    """The d_model hyper-parameters were tuned at, for muP (default: this d_model, so muP changes only attention
    scale and the output init)."""

    @property
    def kv_heads(self) -> int:
        """Key/value heads after defaults."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def dim_per_head(self) -> int:
        """Head width after defaults."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        """MLP hidden width after defaults."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":
            return 256 * -(-int(8 * self.d_model / 3) // 256)
        return 4 * self.d_model

    def padded_vocab(self, tensor_degree: int = 1) -> int:
        """Rows of the embedding table: vocab_size rounded up to vocab_multiple * tensor_degree."""
        multiple = self.vocab_multiple * tensor_degree
        return multiple * -(-self.vocab_size // multiple)


@dataclass(frozen=True)
class ParallelConfig:
    replica: int = key(1, check=AT_LEAST_ONE)
    """Replica groups (hybrid sharding): ZeRO partitions inside a group and replicates across groups."""
    data: int = key(-1, check=Check(lambda v: v == -1 or v >= 1,
                                    "must be >= 1 or -1 (use the remaining devices), got {value}"))
    """Data-parallel degree inside a replica group; -1 takes the devices left over."""
    tensor: int = key(1, check=AT_LEAST_ONE)
    """Megatron tensor-parallel degree (heads, MLP and vocabulary split across devices)."""
    zero_stage: int = key(0, check=Check(lambda v: v in (0, 1, 2, 3), "must be 0, 1, 2 or 3, got {value}"))
    """ZeRO stage over the data axis: 0 none, 1 optimizer state, 2 + gradients, 3 + parameters."""
    pipeline: int = key(1, check=AT_LEAST_ONE)
    """Pipeline stages P: the layers are split evenly over a `stage` mesh axis (must divide model.n_layers)."""
    microbatches: int = key(1, check=AT_LEAST_ONE)
    """Micro-batches M per step through the pipeline (pipeline > 1); must divide the per-replica batch."""
    schedule: str = key("1f1b", choices=("gpipe", "1f1b", "interleaved"))
    """Pipeline schedule: gpipe | 1f1b (at most P micro-batches' activations in flight; needs M >= P) |
    interleaved (v virtual stages per device, bubble (P-1)/(vM+P-1))."""
    virtual_stages: int = key(1, check=AT_LEAST_ONE)
    """Model chunks per device for the interleaved schedule; must divide the layers per stage."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = key(100, check=POSITIVE)
    """Optimizer steps to run."""
    batch_size: int = key(8, check=POSITIVE)
    """Global batch in sequences per optimizer step (all devices, all micro-batches)."""
    grad_accum: int = key(1, check=POSITIVE)
    """Micro-batches per step: gradients of batch_size / grad_accum sequences are accumulated."""
    lr: float = key(3e-4, check=POSITIVE)
    """Peak learning rate."""
    min_lr_ratio: float = key(0.1, check=Check(lambda v: 0.0 <= v <= 1.0, "must be in [0, 1], got {value}"))
    """Final learning rate as a fraction of lr (cosine and linear schedules)."""
    warmup_steps: int = key(10, check=NON_NEGATIVE)
    """Linear warm-up steps from 0 to lr."""
    schedule: str = key("cosine", choices=("cosine", "linear", "constant"))
    """Learning-rate decay after warm-up: cosine | linear | constant."""
    weight_decay: float = key(0.1, check=NON_NEGATIVE)
    """AdamW weight decay, applied to matrices and embeddings only (never norms or biases)."""
    beta1: float = key(0.9, check=FRACTION)
    """AdamW first-moment decay."""
    beta2: float = key(0.95, check=FRACTION)
    """AdamW second-moment decay."""
    eps: float = key(1e-8, check=POSITIVE)
    """AdamW epsilon."""
    grad_clip: float = key(1.0, check=Check(lambda v: v >= 0, "must be >= 0 (0 disables clipping), got {value}"))
    """Clip gradients to this global L2 norm (0 disables)."""
    seed: int = key(0, check=NON_NEGATIVE)
    """Seed of parameter initialisation, data order and dropout."""
    objective: str | None = key(None, choices=("causal", "mlm", "span_corruption", "prefix_lm"))
    """Objective: causal | prefix_lm (decoder) | mlm (encoder) | span_corruption (encoder_decoder); default the
    architecture's first."""
    max_bad_steps: int = key(5, check=POSITIVE)
    """Stop after this many consecutive steps with a NaN/Inf loss or gradient (each one is skipped)."""
    log_every: int = key(10, check=POSITIVE)
    """Write a metrics line every this many steps."""
    eval_every: int = key(0, check=NON_NEGATIVE)
    """Evaluate on the validation split every this many steps (0: only at the end)."""
    eval_batches: int = key(4, check=POSITIVE)
    """Batches of the validation split per evaluation."""
    sample_prompt: str = "def "
    """Prompt of the text sample printed at the end of training ('' for none)."""
    sample_tokens: int = key(64, check=NON_NEGATIVE)
    """Tokens generated for that sample (0 for none); more than half the context (model.seq_len) is clamped."""
    skip_memory_check: bool = False
    """Train even when the planner's per-device memory estimate exceeds the device's memory."""
    scaling_fit: str = key("")
    """A fit file from `meshtron scaling fit --out` to plan and predict this run with (default: Chinchilla's constants)."""


@dataclass(frozen=True)
class DataConfig:
    source: str = key("stdlib", check=Check(lambda v: bool(v.strip()),
                                            "is empty; give stdlib, a text file or folder, or tfds:NAME"))
    """Training text: stdlib (this Python's standard library source), a text file or folder, or tfds:NAME."""
    tokenizer: str = ""
    """A SentencePiece .model or Hugging Face tokenizer.json to use; empty: train one on the training text (cached)."""
    val_fraction: float = key(0.05, check=Check(lambda v: 0.0 < v < 1.0, "must be in (0, 1), got {value}"))
    """Fraction of documents held out for validation (sources without a validation split)."""
    tokenizer_chars: int = key(4_000_000, check=POSITIVE)
    """Characters of training text the tokenizer is trained on."""
    max_documents: int = key(0, check=NON_NEGATIVE)
    """Use at most this many documents per split (0: all)."""
    text_key: str = "text"
    """Feature holding the text in a tfds:NAME dataset."""
    cache_dir: str = ""
    """Where prepared datasets, tokenizers and token caches live; default $MESHTRON_CACHE or ~/.cache/meshtron."""
    prefetch: int = key(2, check=NON_NEGATIVE)
    """Batches prepared ahead of the step on the host."""


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = key(0, check=Check(lambda v: v >= 0, "must be >= 0 (0: only at the end), got {value}"))
    """Save every this many steps (0: only at the end)."""
    keep: int = key(3, check=AT_LEAST_ONE)
    """Keep the last this many checkpoints."""
    async_save: bool = True
    """Write checkpoints in the background while training continues."""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    name: str = "custom"
    """Name of the preset (or file) this config came from."""


SECTION_CLASSES = {"model": ModelConfig, "parallel": ParallelConfig, "train": TrainConfig,
                   "data": DataConfig, "checkpoint": CheckpointConfig}
# "section.key" -> the values it may take, read from the fields above
CHOICES = {f"{s}.{f.name}": f.metadata["choices"] for s, cls in SECTION_CLASSES.items()
           for f in dataclasses.fields(cls) if f.metadata.get("choices")}


def shape_keys(model: ModelConfig) -> tuple[str, ...]:
    """The ModelConfig fields that define the parameters' shapes or structure under `model`, from the schema."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig)
                 if f.metadata.get("shape") is True or (callable(f.metadata.get("shape")) and f.metadata["shape"](model)))


def field_docs(cls) -> dict[str, str]:
    """Field name -> its docstring, read from this module's source (the README table uses it)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs

"""Every config key Meshtron understands: typed, frozen dataclasses, one docstring per field.

A YAML preset plus `key=value` overrides is turned into a `Config` by `configs.loader`.
Fields left as `None` are filled from the model family (see `FAMILY_DEFAULTS`) or derived
from other fields when the config is resolved.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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
}

CHOICES = {
    "model.family": tuple(FAMILY_DEFAULTS),
    "model.position": ("learned", "rope", "sinusoidal", "relative"),
    "model.arch": ("decoder", "encoder", "encoder_decoder"),
    "train.objective": ("causal", "mlm", "span_corruption", "prefix_lm"),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.mlp": ("gelu", "swiglu", "gelu_exact", "relu", "geglu"),
    "model.init": ("gpt2", "xavier", "kaiming"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.compute_dtype": ("auto", "float32", "bfloat16"),
    "model.remat": ("none", "full", "dots"),
    "model.attention": ("auto", "xla", "cudnn"),
    "train.schedule": ("cosine", "linear", "constant"),
}


@dataclass(frozen=True)
class ModelConfig:
    family: str = "gpt2"
    """Model family whose defaults fill the switches below: gpt2 | gpt3 | llama | palm."""
    n_layers: int = 2
    """Number of transformer blocks."""
    d_model: int = 128
    """Width of the residual stream."""
    n_heads: int = 4
    """Query heads per attention layer."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); default n_heads (multi-head); 1 is multi-query."""
    head_dim: int | None = None
    """Width of one head; default d_model / n_heads (GPT-3 style configs may set it apart)."""
    d_ff: int | None = None
    """Hidden width of the MLP; default 4*d_model (gelu) or LLaMA's 8/3*d_model rounded up to 256 (swiglu)."""
    vocab_size: int = 2048
    """Tokenizer vocabulary; the embedding is padded to a multiple of vocab_multiple x tensor degree."""
    seq_len: int = 128
    """Context length in tokens (training window and the longest generation)."""
    position: str | None = None
    """Positions: learned | rope | sinusoidal | relative (T5's bucketed bias; encoder, encoder_decoder) (family default)."""
    norm: str | None = None
    """Normalisation: layernorm | rmsnorm (family default)."""
    norm_eps: float = 1e-5
    """Epsilon of the normalisation layers."""
    mlp: str | None = None
    """MLP: gelu (tanh approximation, GPT-2) | swiglu (LLaMA, PaLM) | gelu_exact (BERT) | relu (T5, Transformer) |
    geglu (T5 v1.1) (family default)."""
    bias: bool | None = None
    """Biases in linear layers and LayerNorm (family default)."""
    tie_embeddings: bool | None = None
    """Output layer shares the token embedding matrix (family default)."""
    parallel_block: bool | None = None
    """PaLM-style block: attention and MLP read the same normalised input (family default)."""
    dropout: float = 0.0
    """Dropout rate on embeddings and residual branches during training."""
    rope_theta: float = 10000.0
    """Base of the rotary position frequencies."""
    init: str = "gpt2"
    """Initialisation: gpt2 (normal(init_std), residual outputs / sqrt(2 n_layers)) | xavier | kaiming."""
    init_std: float = 0.02
    """Standard deviation of the gpt2 initialisation."""
    param_dtype: str = "float32"
    """Storage dtype of parameters (the master weights): float32 | bfloat16."""
    compute_dtype: str = "auto"
    """Dtype of matmuls and activations: auto (float32 on CPU, bfloat16 on GPU/TPU) | float32 | bfloat16."""
    remat: str = "none"
    """Activation checkpointing per block: none | full (recompute all) | dots (save matmul outputs only)."""
    scan_layers: bool = True
    """Stack the blocks and run them with a scan, so compile time does not grow with depth."""
    attention: str = "auto"
    """Attention kernel for jax.nn.dot_product_attention: auto (cuDNN flash attention when usable) | xla | cudnn."""
    logits_chunk: int = 0
    """Compute the output layer and loss over this many positions at a time (0: all at once)."""
    vocab_multiple: int = 128
    """Pad the embedding rows to a multiple of this times the tensor degree (Megatron style)."""
    arch: str = "decoder"
    """Architecture: decoder (GPT, LLaMA) | encoder (BERT: bidirectional, MLM head) | encoder_decoder (T5, Transformer)."""
    n_decoder_layers: int | None = None
    """Decoder blocks of an encoder_decoder; default n_layers (n_layers counts the encoder's)."""
    post_norm: bool = False
    """Normalise after each residual add (BERT, the original Transformer) instead of before (encoder archs)."""
    embed_norm: bool = False
    """Normalise the embeddings before the first block (BERT) (encoder archs)."""
    type_vocab_size: int = 0
    """Token-type (segment) embeddings of an encoder (BERT: 2); 0 for none."""
    max_positions: int | None = None
    """Rows of a learned position table of an encoder (BERT: 512); default seq_len."""
    relative_buckets: int = 32
    """Buckets of T5's relative position bias (model.position=relative)."""
    relative_max_distance: int = 128
    """Distance from which T5's relative position buckets stop growing (model.position=relative)."""

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
    replica: int = 1
    """Replica groups (hybrid sharding): ZeRO partitions inside a group and replicates across groups."""
    data: int = -1
    """Data-parallel degree inside a replica group; -1 takes the devices left over."""
    tensor: int = 1
    """Megatron tensor-parallel degree (heads, MLP and vocabulary split across devices)."""
    zero_stage: int = 0
    """ZeRO stage over the data axis: 0 none, 1 optimizer state, 2 + gradients, 3 + parameters."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    """Optimizer steps to run."""
    batch_size: int = 8
    """Global batch in sequences per optimizer step (all devices, all micro-batches)."""
    grad_accum: int = 1
    """Micro-batches per step: gradients of batch_size / grad_accum sequences are accumulated."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine and linear schedules)."""
    warmup_steps: int = 10
    """Linear warm-up steps from 0 to lr."""
    schedule: str = "cosine"
    """Learning-rate decay after warm-up: cosine | linear | constant."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices and embeddings only (never norms or biases)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip gradients to this global L2 norm (0 disables)."""
    seed: int = 0
    """Seed of parameter initialisation, data order and dropout."""
    objective: str | None = None
    """Objective: causal | prefix_lm (decoder) | mlm (encoder) | span_corruption (encoder_decoder); default the
    architecture's first."""
    max_bad_steps: int = 5
    """Stop after this many consecutive steps with a NaN/Inf loss or gradient (each one is skipped)."""
    log_every: int = 10
    """Write a metrics line every this many steps."""
    eval_every: int = 0
    """Evaluate on the validation split every this many steps (0: only at the end)."""
    eval_batches: int = 4
    """Batches of the validation split per evaluation."""
    sample_prompt: str = "def "
    """Prompt of the text sample printed at the end of training ('' for none)."""
    sample_tokens: int = 64
    """Tokens generated for that sample (0 for none)."""


@dataclass(frozen=True)
class DataConfig:
    source: str = "stdlib"
    """Training text: stdlib (this Python's standard library source), a text file or folder, or tfds:NAME."""
    tokenizer: str = ""
    """A SentencePiece .model or Hugging Face tokenizer.json to use; empty: train one on the training text (cached)."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation (sources without a validation split)."""
    tokenizer_chars: int = 4_000_000
    """Characters of training text the tokenizer is trained on."""
    max_documents: int = 0
    """Use at most this many documents per split (0: all)."""
    text_key: str = "text"
    """Feature holding the text in a tfds:NAME dataset."""
    cache_dir: str = ""
    """Where prepared datasets, tokenizers and token caches live; default $MESHTRON_CACHE or ~/.cache/meshtron."""
    prefetch: int = 2
    """Batches prepared ahead of the step on the host."""


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 0
    """Save every this many steps (0: only at the end)."""
    keep: int = 3
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


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}
SECTION_CLASSES = {"model": ModelConfig, "parallel": ParallelConfig, "train": TrainConfig,
                   "data": DataConfig, "checkpoint": CheckpointConfig}


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

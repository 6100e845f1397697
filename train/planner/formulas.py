"""The planner's formulas: per-device bytes and per-step communication of one config on one mesh.

Model state is counted by walking the real parameter and optimizer-state shapes (from
`nnx.eval_shape` of the model and `jax.eval_shape` of the optimizer, nothing allocated) and
splitting each tensor by its logical axis names through the rule tables of parallel/rules.py
and the mesh degrees: the same route the sharded step takes, so it is exact.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation", §4), term by term, from the model's
shapes, in the variant Meshtron runs: tensor parallel WITHOUT sequence parallelism, so the
norms' inputs and outputs and the residual dropout masks are not split by the tensor degree. They are
counted per stack of blocks (train/planner/stacks.py): a decoder's or encoder's one, an encoder-decoder's
encoder over its input tokens and decoder (with cross-attention) over its target tokens.

Communication is what parallel/zero.py and parallel/spmd.py write, in ring volumes per device
(all-reduce of n elements 2n(N-1)/N, all-gather / reduce-scatter n(N-1)/N), as train/planner/hlo.py
reads the compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from meshtron.configs.schema import Config, ModelConfig, TrainConfig
from meshtron.model.activations import GATED
from meshtron.model.families import family
from meshtron.model.layers import compute_dtype
from meshtron.parallel.mesh import MeshShape
from meshtron.parallel.rules import MEGATRON, PIPELINE, Rules, partition_spec, zero_dim
from meshtron.parallel import zero
from meshtron.parallel.zero import logical_names
from meshtron.train.planner.stacks import (Stack, embedding_uses, model_stacks, output_positions, outside_values,
                                          relative_bias_elements)
from meshtron.train.run import objective_step
from meshtron.train.run.optim import make_optimizer

STEP_BYTES = 4  # the int32 step counter argument of the train step


@dataclass(frozen=True)
class Precision:
    """Bytes per element the plan counts with: `config` reads the tensors' own dtypes, `mixed` is the
    ZeRO paper's accounting (2 bytes params + 2 grads + 12 optimizer per parameter, 16-bit activations)."""

    name: str
    param_bytes: int | None  # per parameter element; None: the parameter's own dtype
    grad_bytes: int | None  # per gradient element; None: the parameter's dtype (grads take it)
    optimizer_bytes: int | None  # per parameter (fp32 master + Adam m, v); None: the optimizer's own tensors
    activation_bytes: int  # per activation element (the compute dtype)


def precision_for(name: str, model: ModelConfig) -> Precision:
    """`config`: the run's dtypes (compute `auto` resolves on this machine's backend); `mixed`: the paper's."""
    if name == "mixed":
        return Precision("mixed", 2, 2, 12, 2)
    return Precision("config", None, None, None, jnp.dtype(compute_dtype(model)).itemsize)


@dataclass(frozen=True)
class StateTensor:
    """One leaf of the parameters or optimizer state: global shape, bytes per element, logical axis names."""

    path: str
    shape: tuple
    itemsize: int
    names: tuple

    @property
    def stack(self) -> str:
        """The stack of blocks this tensor belongs to ('blocks', 'encoder_blocks', 'decoder_blocks'), or ''."""
        top = self.path.split("/")[0]
        return top if top.endswith("blocks") else ""

    @property
    def in_blocks(self) -> bool:
        """True for the transformer blocks' weights (ZeRO-3 gathers them per layer, forward and backward)."""
        return bool(self.stack)

    @property
    def is_bias(self) -> bool:
        """Additive biases: the backward pass never needs their values (so ZeRO-3 does not re-gather them)."""
        name = self.path.split("/")[-1]
        return name == "bias" or name.endswith("_bias")


def _leaves(tree) -> tuple[StateTensor, ...]:
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_var)[0]:
        names = logical_names(leaf) if is_var(leaf) else ()
        value = leaf.get_value() if is_var(leaf) else leaf  # a ShapeDtypeStruct under eval_shape
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out.append(StateTensor(key, tuple(value.shape), jnp.dtype(value.dtype).itemsize, names))
    return tuple(out)


def state_tensors(model: ModelConfig, train: TrainConfig, vocab_rows: int):
    """(parameters, optimizer state) of a config as StateTensors, from abstract shapes only (no allocation)."""
    # remat and grad_accum change no shape: one evaluation serves every variant the planner tries
    return _state_tensors(dataclasses.replace(model, remat="none"), dataclasses.replace(train, grad_accum=1),
                          vocab_rows)


@functools.lru_cache(maxsize=32)
def _state_tensors(model: ModelConfig, train: TrainConfig, vocab_rows: int):
    abstract = nnx.eval_shape(lambda: family(model).module(model, nnx.Rngs(params=0), vocab_rows))
    params = nnx.split(abstract)[1]
    opt_state = jax.eval_shape(make_optimizer(train).init, params)
    return _leaves(params), _leaves(opt_state)


def shard_elements(tensor: StateTensor, table: dict, degrees: dict[str, int]) -> int:
    """Elements of one device's shard of `tensor` when its logical names are split by `table` over a mesh
    of these degrees (uneven splits round up, as jax pads them)."""
    spec = tuple(partition_spec(tensor.names, table)) if tensor.names else ()
    elements = 1
    for dim, size in enumerate(tensor.shape):
        entry = spec[dim] if dim < len(spec) else None
        axes = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
        elements *= -(-size // math.prod(degrees[a] for a in axes))
    return elements


# -- model state -------------------------------------------------------------------------------
def model_state_bytes(params, opt_state, rules: Rules, degrees: dict, precision: Precision) -> dict[str, int]:
    """Per-device bytes of parameters, gradients (the buffer the step accumulates and reduces: whole
    local shards at stages 0-1, a 1/N_data slice at stages 2-3) and optimizer state."""
    def total(tensors, table, per_element):
        return sum(shard_elements(t, table, degrees) * (per_element or t.itemsize) for t in tensors)

    if precision.optimizer_bytes is None:
        optimizer = total(opt_state, rules.opt_state, None)
    else:  # the paper's 12 bytes per parameter: fp32 master copy, Adam m and v, no step counters
        optimizer = total(params, rules.opt_state, precision.optimizer_bytes)
    return {"params_bytes": total(params, rules.params, precision.param_bytes),
            "grads_bytes": total(params, rules.grads, precision.grad_bytes),
            "optimizer_bytes": optimizer}


def stack_layers(model: ModelConfig) -> dict[str, int]:
    """Blocks in each stack of the model (model_stacks), by the name its parameters live under: `blocks` for a
    decoder's or encoder's one stack, `encoder_blocks` and `decoder_blocks` for an encoder-decoder's."""
    stacks = model_stacks(model)
    if len(stacks) == 1:
        return {"blocks": stacks[0].layers}
    return {f"{s.name}_blocks": s.layers for s in stacks}


def gathered_weight_bytes(params, rules: Rules, degrees: dict, model: ModelConfig, precision: Precision) -> int:
    """ZeRO-3's working set: the embedding, final norm and head gathered for the whole step, plus one
    block's gathered weights (the largest block: an encoder-decoder's decoder block, with cross-attention),
    in the compute dtype (0 below stage 3)."""
    if not zero.splits("params", rules.zero_stage):
        return 0
    outer = sum(shard_elements(t, MEGATRON, degrees) for t in params if not t.in_blocks)
    block = max(sum(shard_elements(t, MEGATRON, degrees) for t in params if t.stack == name) // layers
                for name, layers in stack_layers(model).items())
    return (outer + block) * precision.activation_bytes


def batch_bytes(config: Config, shape: MeshShape) -> int:
    """One device's rows of the batch (whole over the tensor axis): the token windows (B, T+1) int32, or the
    objective's arrays (inputs, decoder inputs, targets, weights: train/run/objective_step.py)."""
    rows = config.train.batch_size // shape.batch_shards
    arrays = jax.tree.leaves(objective_step.batch_shapes(config))
    return sum(rows * math.prod(a.shape[1:]) * jnp.dtype(a.dtype).itemsize for a in arrays)


def step_argument_bytes(config: Config) -> int:
    """The step counter only seeds dropout; without dropout jit drops the unused argument."""
    return STEP_BYTES if config.model.dropout > 0 else 0


# -- activations (Korthikanti et al. 2022, without sequence parallelism) ------------------------
def mlp_values(model: ModelConfig) -> int:
    """Values an MLP keeps per hidden unit: gated MLPs (SwiGLU, GEGLU) the gate, up and their product; GELU
    its input and output; ReLU only its output (and a 1-byte mask of the positive inputs, `mlp_mask_bytes`)."""
    return 3 if model.mlp in GATED else 1 if model.mlp == "relu" else 2


def mlp_mask_bytes(model: ModelConfig) -> int:
    """Bytes per hidden unit of ReLU's mask (XLA keeps the sign of the input, not the input itself)."""
    return 1 if model.mlp == "relu" else 0


def mlp_matmuls(model: ModelConfig) -> int:
    """MLP matmul outputs per hidden unit (up, and the gate of a gated MLP): what remat dots saves."""
    return 2 if model.mlp in GATED else 1


def activation_bytes_per_layer(model: ModelConfig, micro_batch: int, tensor: int, activation_bytes: int,
                               remat: str | None = None, stack: Stack | None = None) -> int:
    """Bytes one block of `stack` (default: the model's first) keeps for its backward pass on one device.

    none: norms' inputs and outputs (4sbh, whole), q, k, v and the attention output (split by t),
    softmax output a·s²·b (split), MLP hidden values (2 or 3 x s·b·d_ff, split), and 1-byte residual
    dropout masks (2sbh) when dropout is on. For GPT (MHA, d_ff = 4h, gelu) at 16 bits this is
    sbh(10 + 24/t + 2as/(ht)): Korthikanti's sbh(10 + 24/t + 5as/(ht)) less the attention-probability
    dropout (mask and output, 3as²b), which Meshtron does not have. A cross-attention block (an
    encoder-decoder's decoder, over m encoder positions) adds its norm (2sbh), queries and output input
    (2 x s·b·heads), keys and values of the m positions (2 x m·b·kv), scores a·s·m·b and a dropout mask.
    full: the layer input only, sbh elements (Korthikanti's 2sbh at 16 bits); the encoder output a
    decoder block also reads is kept once for all of them (outside the layers).
    dots: the layer input and every matmul output (q, k, v, attention and MLP projections).
    """
    remat = remat or model.remat
    stack = stack or model_stacks(model)[0]
    c, s, m, b, t = activation_bytes, stack.tokens, stack.memory, micro_batch, tensor
    sbh, cross = s * b * model.d_model, 1 if stack.memory else 0
    heads, kv = model.n_heads * model.dim_per_head, model.kv_heads * model.dim_per_head
    cross_matmuls = cross * (s * b * heads + m * b * 2 * kv)  # cross-attention's queries, keys and values
    if remat == "full":
        return c * sbh
    if remat == "dots":
        # input, q/k/v, attention-out and MLP-down (partial sums, whole over t), MLP up (and gate)
        return c * ((3 + cross) * sbh + (s * b * (heads + 2 * kv) + cross_matmuls) // t
                    + s * b * model.ff_dim * mlp_matmuls(model) // t)
    norms = (2 if model.parallel_block else 4 + 2 * cross) * c * sbh
    masks = (1 if model.parallel_block else 2 + cross) * sbh if model.dropout > 0 else 0
    attention = c * (s * b * (2 * heads + 2 * kv) + cross_matmuls + cross * s * b * heads) // t
    scores = c * model.n_heads * s * (s + m) * b // t  # softmax outputs
    mlp = (c * mlp_values(model) + mlp_mask_bytes(model)) * s * b * model.ff_dim // t
    return norms + masks + attention + scores + mlp


def activation_bytes_outside_layers(model: ModelConfig, micro_batch: int, tensor: int, vocab_rows: int,
                                    activation_bytes: int) -> int:
    """What the model keeps outside its blocks (train/planner/stacks.py: a decoder's final norm input and
    output; BERT's embedding norm and MLM head; an encoder-decoder's final norms and relative-position
    biases), and the float32 logits of the vocabulary shard (one chunk of positions at a time when
    model.logits_chunk is set)."""
    s, b = output_positions(model), micro_batch
    positions = model.logits_chunk if 0 < model.logits_chunk < s else s
    values = outside_values(model, b) + relative_bias_elements(model, tensor)
    return activation_bytes * values + 4 * b * positions * (vocab_rows // tensor)


# -- communication ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommTerm:
    """One kind of collective traffic: ring-volume elements one device sends per step over one axis."""

    axis: str
    kind: str
    elements: float
    bytes_per_element: int
    what: str

    @property
    def bytes(self) -> float:
        """Bytes one device sends per step for this term."""
        return self.elements * self.bytes_per_element


def stored_bytes(params) -> int:
    """Bytes per parameter element as stored (model.param_dtype; gradients take the same dtype)."""
    return params[0].itemsize


def _ring(kind: str, elements: float, group: int) -> float:
    factor = 2.0 if kind == "all-reduce" else 1.0
    return factor * elements * (group - 1) / group


def data_axis_terms(params, config: Config, shape: MeshShape, precision: Precision) -> list[CommTerm]:
    """ZeRO over `data` (parallel/zero.py): stage 0 all-reduces the gradient; 1-2 reduce-scatter it and
    all-gather the updated parameters (stage 2 reduce-scatters every micro-batch); 3 gathers each block
    in the forward and again in the backward (all but the additive biases, whose values no gradient
    needs) and reduce-scatters its gradient per micro-batch, and gathers the embedding, final norm and
    head once per step (XLA hoists that gather out of the micro-batch loop); an encoder's or
    encoder-decoder's token table is gathered once but its gradient reduce-scattered once per use.
    Tensors with no `embed` axis (q/k/v and MLP-in biases) stay whole and are all-reduced."""
    n, stage, accum = shape.data, config.parallel.zero_stage, config.train.grad_accum
    if n == 1:
        return []
    degrees = shape.as_dict()
    table = MEGATRON
    if shape.stage > 1:  # a stage holds its own layers and runs every pipeline micro-batch through them
        table, accum = {**MEGATRON, **PIPELINE}, accum * config.parallel.microbatches
    local = lambda keep: sum(shard_elements(t, table, degrees) for t in params if keep(t))  # noqa: E731
    split_blocks = local(lambda t: zero_dim(t.names) is not None and t.in_blocks)
    regathered = local(lambda t: zero_dim(t.names) is not None and t.in_blocks and not t.is_bias)
    split_outer = local(lambda t: zero_dim(t.names) is not None and not t.in_blocks)
    whole = local(lambda t: zero_dim(t.names) is None)
    reused = (embedding_uses(config.model) - 1) * local(lambda t: t.path == "embed/tokens")
    grad = precision.grad_bytes or stored_bytes(params)
    param = precision.param_bytes or stored_bytes(params)
    gather = precision.activation_bytes  # ZeRO-3 gathers weights cast to the compute dtype
    def term(kind, elements, nbytes, what):
        return CommTerm("data", kind, _ring(kind, elements, n), nbytes, what)

    split = split_blocks + split_outer
    if not zero.partitions_anything(stage):
        return [term("all-reduce", split + whole, grad, "gradient, once per step")]
    per_micro = accum if zero.reduces_every_microbatch(stage) else 1
    terms = [term("all-reduce", per_micro * whole, grad, "tensors without an embed axis (biases)")]
    if zero.updates_a_slice(stage):
        terms += [term("reduce-scatter", per_micro * split, grad,
                       "gradient" + (", every micro-batch" if zero.reduces_every_microbatch(stage) else ", once per step")),
                  term("all-gather", split, param, "updated parameters")]
    else:
        terms += [term("all-gather", accum * split_blocks, gather, "block weights, forward"),
                  term("all-gather", accum * regathered, gather, "block weights but biases, again in the backward"),
                  term("all-gather", split_outer, gather, "embedding, final norm, head: once per step"),
                  term("reduce-scatter", accum * split, gather, "gradient, every micro-batch"),
                  term("reduce-scatter", accum * reused, gather, "token table's gradient again for each further "
                       "use (BERT: lookup and MLM output; T5: two lookups and output)")]
    return [t for t in terms if t.elements]


def replica_axis_terms(params, config: Config, shape: MeshShape, rules: Rules, precision: Precision) -> list[CommTerm]:
    """Hybrid sharding: the gradient, already partitioned over data at stages 1-3, is all-reduced
    across replica groups once per step."""
    if shape.replica == 1:
        return []
    elements = sum(shard_elements(t, rules.opt_state, shape.as_dict()) for t in params)
    grad = precision.grad_bytes or stored_bytes(params)
    return [CommTerm("replica", "all-reduce", _ring("all-reduce", elements, shape.replica), grad,
                     "partitioned gradient, once per step")]


def tensor_axis_terms(model: ModelConfig, micro_batch: int, grad_accum: int, tensor: int,
                      activation_bytes: int) -> list[CommTerm]:
    """Megatron (parallel/spmd.py), per micro-batch: per layer 2 all-reduces of b·s·h forward and 2
    backward (1 and 1 for PaLM's parallel block), plus one forward again under remat (the attention
    output, recomputed to rebuild the MLP's input); the embedding's forward all-reduce, the output
    layer's backward all-reduce, and the vocab-parallel loss's (b, s) max and sums. No parameter
    gradient crosses the tensor axis. An encoder-decoder's decoder blocks add cross-attention: one more
    forward and backward all-reduce over its u positions (two recomputed under remat; post-norm blocks
    recompute every forward all-reduce, the last norm needs the MLP's output), and in the
    backward the encoder output's gradient through its keys and values (b·S·h per layer); each stack's
    embedding lookup is reduced, and the output layer and loss run over the u target positions."""
    if tensor == 1:
        return []
    b, h, stacks = micro_batch, model.d_model, model_stacks(model)
    per_layer = 1 if model.parallel_block else 2
    recompute = 1 if model.remat != "none" and not model.parallel_block else 0
    out = stacks[-1].tokens
    # chunked logits are recomputed in the backward pass: the max and the sum of exponentials again
    loss_reductions = 3 + (2 if 0 < model.logits_chunk < out else 0)
    term = lambda count, elements, nbytes, what: CommTerm(  # noqa: E731
        "tensor", "all-reduce", _ring("all-reduce", grad_accum * count * elements, tensor), nbytes, what)
    terms = []
    for stack in stacks:
        name, bsh, cross = (stack.name + " " if len(stacks) > 1 else ""), b * stack.tokens * h, bool(stack.memory)
        terms += [term(stack.layers * (per_layer + cross), bsh, activation_bytes, f"{name}blocks' outputs, forward"),
                  term(stack.layers * (per_layer + cross), bsh, activation_bytes,
                       f"{name}blocks' inputs' gradients, backward"),
                  term(stack.layers * recompute * (per_layer + cross if model.post_norm else 1 + cross), bsh,
                       activation_bytes, f"{name}attention outputs recomputed (remat)"),
                  term(stack.layers * cross, b * stack.memory * h, activation_bytes,
                       "encoder output's gradient through each cross-attention's keys and values, backward")]
    lookups = sum(stack.tokens for stack in stacks)
    lookup = "embedding lookups (each stack's)" if len(stacks) > 1 else "embedding lookup"
    terms += [term(1, b * lookups * h, activation_bytes, f"{lookup}, forward"),
              term(1, b * out * h, activation_bytes, "output layer's input gradient, backward"),
              term(loss_reductions, b * out, 4, "vocab-parallel cross-entropy (b, s) max and sums, float32")]
    return [t for t in terms if t.elements]

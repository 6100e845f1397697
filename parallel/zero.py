"""ZeRO over the data axis, written as explicit collectives inside the sharded step.

Per step and device, for Ψ parameters and data-parallel degree N (ring volumes, times (N-1)/N):

stage 0  gradients all-reduced over data (2Ψ); every device updates the whole model.
stage 1  gradients reduce-scattered once per step (Ψ); each device updates its 1/N of the
         optimizer state and parameters; updated parameters all-gathered (Ψ).
stage 2  as stage 1, but the reduce-scatter follows every micro-batch, so only 1/N of the
         gradient is ever accumulated.
stage 3  parameters stay partitioned; each block all-gathers its weights when used, in the
         forward and again in the backward (2Ψ), whose transpose reduce-scatters the
         gradients (Ψ).

With hybrid sharding the `replica` axis then all-reduces the partitioned gradients (stages
1-3) across replica groups. Tensors with no `embed` axis (biases) stay whole and are
all-reduced. The tensor axis never carries parameter gradients: Megatron slicing keeps
every weight's gradient on the device that holds the weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax.ad_checkpoint import checkpoint_name

from meshtron.parallel.jax_compat import NEVER_SAVED, all_gather_invariant, mark_varying, varying_axes
from meshtron.parallel.rules import ZERO, ZERO_AXIS, Rules, partition_spec, rules_for, zero_dim

_is_variable = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
ZERO3_GATHERED = "zero3_gathered"  # name of gathered ZeRO-3 parameters: never saved for backward


# -- what each stage partitions and when it communicates (from the rule table); callers ask these ---------
def splits(kind: str, zero_stage: int) -> bool:
    """Whether `zero_stage` partitions this kind of state ("params", "grads" or "opt_state") over data,
    as the rule table of parallel/rules.py says."""
    return getattr(rules_for(zero_stage), kind).get("embed") == ZERO["embed"]


def partitions_anything(zero_stage: int) -> bool:
    """Stages 1-3: something (the optimizer state first) is split over data, so `embed` must divide by it."""
    return splits("opt_state", zero_stage)


def updates_a_slice(zero_stage: int) -> bool:
    """Stages 1-2: parameters are held whole, but each device updates only its 1/N slice of them."""
    return splits("opt_state", zero_stage) and not splits("params", zero_stage)


def reduces_every_microbatch(zero_stage: int) -> bool:
    """Stages 2-3: gradients are summed over data after every micro-batch, so only 1/N is accumulated."""
    return splits("grads", zero_stage)


def reduces_once_per_step(zero_stage: int, data_degree: int) -> bool:
    """Stages 0-1: gradients are summed over data once, after the last micro-batch (stage 0 on one data
    shard has nothing to sum)."""
    return not reduces_every_microbatch(zero_stage) and (partitions_anything(zero_stage) or data_degree > 1)


def logical_names(variable: nnx.Variable) -> tuple:
    """The logical axis names a parameter was created with."""
    return tuple(variable.get_metadata().get("out_sharding") or ())


def map_variables(fn, tree, *rest):
    """fn(names, value, *rest_values) -> new value, for every nnx.Variable of `tree` (same structure in rest)."""
    def apply(variable, *others):
        return variable.replace(fn(logical_names(variable), variable[...], *(o[...] for o in others)))
    return jax.tree.map(apply, tree, *rest, is_leaf=_is_variable)


def specs(tree, table: dict):
    """PartitionSpec for every leaf: parameters (and optimizer moments shaped like them) by their
    logical names under `table`; anything else (step counters) replicated."""
    def spec(x):
        return partition_spec(logical_names(x), table) if _is_variable(x) else jax.sharding.PartitionSpec()
    return jax.tree.map(spec, tree, is_leaf=_is_variable)


def make_varying(x, axes: tuple):
    """Mark `x` as differing over `axes` (of size > 1), so gradients taken with respect to it stay
    per-device."""
    return mark_varying(x, tuple(a for a in axes if a not in varying_axes(x) and jax.lax.axis_size(a) > 1))


def zeros_varying_like(reference, shape: tuple = None, dtype=None):
    """Zeros (of `shape`, default the reference's) varying over exactly the axes `reference` varies over,
    as scan carries must."""
    x = jnp.zeros(reference.shape if shape is None else shape, dtype or reference.dtype)
    return mark_varying(x, tuple(sorted(varying_axes(reference) - varying_axes(x))))


def reduce_over_data(grads, rules: Rules):
    """Sum per-device gradients over `data`: all-reduce (stage 0, and tensors ZeRO leaves whole),
    reduce-scatter along the ZeRO dim (stages 1-2), nothing more for stage 3 (the transpose of its
    all-gather already reduce-scattered them)."""
    stage = rules.zero_stage

    def reduce(names, g):
        dim = zero_dim(names)
        if dim is None or not partitions_anything(stage):
            return jax.lax.psum(g, ZERO_AXIS)
        if updates_a_slice(stage):
            return jax.lax.psum_scatter(g, ZERO_AXIS, scatter_dimension=dim, tiled=True)
        return g

    return map_variables(reduce, grads)


def reduce_over_replicas(grads):
    """Hybrid sharding: sum the (partitioned) gradients across replica groups."""
    if jax.lax.axis_size("replica") == 1:
        return grads
    return map_variables(lambda names, g: jax.lax.psum(g, "replica"), grads)


def global_norm(grads, table: dict) -> jax.Array:
    """L2 norm of the whole gradient from per-device shards laid out by `table`: each tensor's
    squares are summed over exactly the mesh axes that split it, so replicated tensors count once."""
    groups: dict[tuple, jax.Array] = {}

    def collect(names, g):
        axes = tuple(a for a in partition_spec(names, table) if a is not None)
        flat = tuple(sorted({ax for entry in axes for ax in (entry if isinstance(entry, tuple) else (entry,))}))
        groups[flat] = groups.get(flat, 0.0) + jnp.sum(jnp.square(g.astype(jnp.float32)))
        return g

    map_variables(collect, grads)
    total = sum(jax.lax.psum(v, axes) if axes else v for axes, v in groups.items())
    return jnp.sqrt(total)


def local_update_shard(params, rules: Rules):
    """Stages 1-2: this device's 1/N slice (along the ZeRO dim) of parameters held whole."""
    if not updates_a_slice(rules.zero_stage):
        return params
    index = jax.lax.axis_index(ZERO_AXIS)

    def slice_(names, p):
        dim = zero_dim(names)
        if dim is None:
            return p
        size = p.shape[dim] // jax.lax.axis_size(ZERO_AXIS)
        return jax.lax.dynamic_slice_in_dim(p, index * size, size, axis=dim)

    return map_variables(slice_, params)


def gather_updated(params, rules: Rules):
    """Stages 1-2: all-gather the updated slices back into whole parameters."""
    if not updates_a_slice(rules.zero_stage):
        return params

    def gather(names, p):
        dim = zero_dim(names)
        return p if dim is None else all_gather_invariant(p, ZERO_AXIS, axis=dim, tiled=True)

    return map_variables(gather, params)


def gather_stage3(tree, layout):
    """ZeRO-3: all-gather the parameters of `tree` that `layout` stores split but computes whole.

    Called by the model (through spmd.gathered) right before a block (or the embedding) is used,
    so only one block's full parameters exist at a time. The transpose of this all-gather is a
    reduce-scatter: gradients come back already partitioned. The gathered values are named so
    remat policies recompute them in the backward pass instead of keeping them.
    """
    def gather(variable):
        per_dim = [layout.gathered_axes(name) for name in logical_names(variable)]
        if not any(per_dim):
            return variable
        value = variable[...]
        if layout.gather_dtype is not None:
            value = value.astype(layout.gather_dtype)
        for dim, axes in enumerate(per_dim):
            if axes:
                value = jax.lax.all_gather(value, axes, axis=dim, tiled=True)
                value = checkpoint_name(value, ZERO3_GATHERED)
        return variable.replace(value)

    return jax.tree.map(gather, tree, is_leaf=_is_variable)


def never_save_gathered(policy):
    """Wrap a remat policy so ZeRO-3's all-gathered weights are recomputed (re-gathered) in the
    backward pass, never kept: keeping them would hold the whole model on every device."""
    def wrapped(prim, *args, **params):
        if prim.name in NEVER_SAVED or (params.get("name") == ZERO3_GATHERED):
            return False
        return policy(prim, *args, **params)
    return wrapped

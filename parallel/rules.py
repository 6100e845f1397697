"""Sharding rules: the one place that says how every tensor is split over the mesh.

The mesh has four axes, outermost first: `stage` (pipeline stages), `replica` (hybrid
sharding: groups that hold copies), `data` (data parallel; ZeRO partitions over it) and
`tensor` (Megatron slicing, innermost so it stays inside a host). `stage` is outermost
because it carries the least: one activation (b, s, h) per link per tick, point to point,
while data and replica carry gradients and ZeRO's gathers of the whole model, so on a
cluster stages are the axis that may cross the slowest links (between nodes or pods). Model code names logical axes only; these tables
map them to mesh axes. A logical axis not in a table is replicated.

Megatron tensor slicing (every stage): QKV and the MLP's first layer are split by columns
(`heads`, `kv_heads`, `mlp`), the attention output and MLP's second layer by rows (the
same names on their input side), the embedding and output layer over the vocabulary.

ZeRO (over `data`, by stage): optimizer state from stage 1, gradients from stage 2,
parameters from stage 3 are split along `embed` (every matrix and embedding has it).
"""

from __future__ import annotations

from dataclasses import dataclass

from jax.sharding import PartitionSpec as P

MESH_AXES = ("stage", "replica", "data", "tensor")
STAGE_AXIS = "stage"  # pipeline stages: the stacked blocks' `layers` axis is split over it
BATCH_AXES = ("replica", "data")  # the global batch is split over both
ZERO_AXIS = "data"  # ZeRO partitions within a replica group, never across groups

MEGATRON = {"vocab": ("tensor",), "heads": ("tensor",), "kv_heads": ("tensor",), "mlp": ("tensor",)}
ZERO = {"embed": (ZERO_AXIS,)}
PIPELINE = {"layers": (STAGE_AXIS,)}  # with pipeline stages: every kind of state, in every strategy


@dataclass(frozen=True)
class Rules:
    """Logical axis -> mesh axes, for each kind of state, under one strategy."""

    params: dict
    grads: dict
    opt_state: dict
    compute: dict  # how tensors are split while the model runs (Megatron only)
    zero_stage: int


def rules_for(zero_stage: int, pipeline: bool = False) -> Rules:
    """The rule tables of ZeRO stage 0-3 combined with Megatron slicing (a no-op at tensor degree 1) and, with
    pipeline stages, the stacked layers split over the stage axis."""
    sliced = {**MEGATRON, **PIPELINE} if pipeline else MEGATRON
    with_zero = {**sliced, **ZERO}
    return Rules(
        params=with_zero if zero_stage >= 3 else sliced,
        grads=with_zero if zero_stage >= 2 else sliced,
        opt_state=with_zero if zero_stage >= 1 else sliced,
        compute=sliced,
        zero_stage=zero_stage,
    )


def partition_spec(names, table: dict) -> P:
    """PartitionSpec of a tensor whose dims have these logical names, under one rule table."""
    dims = []
    for name in names or ():
        axes = table.get(name, ()) if name is not None else ()
        dims.append(axes[0] if len(axes) == 1 else (tuple(axes) or None))
    return P(*dims)


def zero_dim(names) -> int | None:
    """Which dim of a tensor ZeRO splits over the data axis (None: the tensor stays whole)."""
    for dim, name in enumerate(names or ()):
        if name in ZERO:
            return dim
    return None


def describe(zero_stage: int) -> list[tuple[str, str, str, str]]:
    """(logical axis, params, grads, optimizer state) rows for docs and `meshtron plan`."""
    rules = rules_for(zero_stage)
    names = sorted(set(MEGATRON) | set(ZERO))
    fmt = lambda table, n: ",".join(table.get(n, ())) or "-"  # noqa: E731
    return [(n, fmt(rules.params, n), fmt(rules.grads, n), fmt(rules.opt_state, n)) for n in names]

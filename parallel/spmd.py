"""The few collective operations model code calls, in terms of logical axes only.

Meshtron runs a sharded step as one `jax.shard_map` over the whole mesh: every device
executes the model on its own shards, and the communication is exactly what is written
here (Megatron's operators for the tensor axis, ZeRO's for the data axis). Outside a
sharded step (one device, generation, tests) no layout is active and each helper is the
identity, so the model reads as plain single-device code.

The active `Layout` maps logical axis names (`heads`, `mlp`, `vocab`, `embed`, ...) to the
mesh axes that split them; it is set by the train step (train/run/step.py) while tracing a sharded function.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from meshtron.parallel import zero
from meshtron.parallel.jax_compat import mark_varying, varying_axes
from meshtron.parallel.zero import never_save_gathered  # noqa: F401  (the model's remat policy reaches it here)

@dataclass(frozen=True)
class Layout:
    """Which mesh axes split each logical axis of parameters, inside a sharded step."""

    params: dict = field(default_factory=dict)  # logical name -> tuple of mesh axes (storage of parameters)
    compute: dict = field(default_factory=dict)  # logical name -> mesh axes while computing (tensor only)
    data_axes: tuple = ()  # mesh axes the batch is split over
    gather_dtype: object = None  # ZeRO-3 gathers weights already cast to the compute dtype
    platform: str = ""  # the platform the step is compiled for (a TPU slice may be compiled on a CPU host)

    @property
    def gathers_params(self) -> bool:
        """True under ZeRO-3: some parameter axis is stored split but computed whole."""
        return any(self.gathered_axes(name) for name in self.params)

    def gathered_axes(self, name: str) -> tuple:
        """Mesh axes the logical axis `name` is stored split over but computed whole (ZeRO-3 gathers them)."""
        return tuple(a for a in self.params.get(name, ()) if a not in self.compute.get(name, ()))

    def mesh_axes(self, *logical: str) -> tuple:
        """Mesh axes that split any of these logical axes while computing."""
        axes = []
        for name in logical:
            for axis in self.compute.get(name, ()):
                if axis not in axes:
                    axes.append(axis)
        return tuple(axes)


_ACTIVE: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("meshtron_layout", default=None)


@contextlib.contextmanager
def active_layout(layout: Layout):
    """Make `layout` the one the helpers below use while tracing a sharded function."""
    token = _ACTIVE.set(layout)
    try:
        yield layout
    finally:
        _ACTIVE.reset(token)


def current_layout() -> Layout | None:
    """The layout of the sharded function being traced, or None."""
    return _ACTIVE.get()


def target_platform() -> str:
    """The platform the function being traced is compiled for: the active layout's mesh (a TPU topology
    compiled on a CPU host says tpu), else JAX's default backend."""
    layout = _ACTIVE.get()
    return layout.platform if layout is not None and layout.platform else jax.default_backend()


def enter_split(x: jax.Array, *logical: str) -> jax.Array:
    """Megatron's "f" operator: `x`, the same on every device that splits `logical`, is about to meet those
    devices' different weights. Marking it once makes the backward pass sum its gradient with one
    all-reduce for the whole sub-block, instead of one per projection that reads it."""
    layout = _ACTIVE.get()
    if layout is None:
        return x
    return mark_varying(x, tuple(a for a in layout.mesh_axes(*logical) if a not in varying_axes(x)))


def sum_over(x: jax.Array, *logical: str) -> jax.Array:
    """Sum partial results over the devices that split `logical` (Megatron's row-parallel all-reduce)."""
    layout = _ACTIVE.get()
    if layout is None:
        return x
    axes = layout.mesh_axes(*logical)
    per_name = {layout.mesh_axes(n) for n in logical}
    if len(per_name) > 1:
        raise ValueError(f"cannot add partial sums split over different mesh axes: {logical}")
    return jax.lax.psum(x, axes) if axes else x


def vocab_offset(local_rows: int) -> jax.Array | int:
    """Index of the first vocabulary row held by this device."""
    layout = _ACTIVE.get()
    axes = layout.mesh_axes("vocab") if layout else ()
    if not axes:
        return 0
    return jax.lax.axis_index(axes) * local_rows


def embedding_lookup(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Rows `ids` of a (vocab, embed) table that may be split over devices by vocabulary.

    Each device looks up the ids it holds, zeros the rest, and one all-reduce assembles
    the result: Megatron's vocab-parallel embedding (one all-reduce of b*s*h, no gather
    of the table).
    """
    layout = _ACTIVE.get()
    axes = layout.mesh_axes("vocab") if layout else ()
    if not axes:
        return jnp.take(table, ids, axis=0)
    rows = table.shape[0]
    local = ids - vocab_offset(rows)
    inside = (local >= 0) & (local < rows)
    out = jnp.take(table, jnp.where(inside, local, 0), axis=0)
    out = jnp.where(inside[..., None], out, jnp.zeros((), out.dtype))
    return jax.lax.psum(out, axes)


def cross_entropy(logits: jax.Array, targets: jax.Array, vocab_size: int) -> jax.Array:
    """Per-token next-token loss from logits that may be split over devices by vocabulary.

    logits: (..., V_local) in float32, targets: (...) int. Padded vocabulary rows (ids >=
    vocab_size) never count; a target outside [0, vocab_size) gives NaN. The full logits are
    never gathered: only (...)-shaped max, sum and target values cross devices.
    """
    layout = _ACTIVE.get()
    axes = layout.mesh_axes("vocab") if layout else ()
    rows = logits.shape[-1]
    valid = (targets >= 0) & (targets < vocab_size)
    if not axes:  # the whole vocabulary here: a gather of the target's logit (its gradient a scatter, not a select)
        if rows > vocab_size:
            logits = jnp.where(jnp.arange(rows) < vocab_size, logits, -jnp.inf)
        target_logit = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
        loss = jax.nn.logsumexp(logits, axis=-1) - target_logit
        return jnp.where(valid, loss, jnp.nan)
    ids = vocab_offset(rows) + jnp.arange(rows)
    logits = jnp.where(ids < vocab_size, logits, -jnp.inf)
    local_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    shifted = logits - jax.lax.pmax(local_max, axes)
    sum_exp = jax.lax.psum(jnp.sum(jnp.exp(shifted), axis=-1), axes)
    target_logit = jax.lax.psum(jnp.sum(jnp.where(ids == targets[..., None], shifted, 0.0), axis=-1), axes)
    loss = jnp.log(sum_exp) - target_logit
    # a target outside the vocabulary is corrupt data: a NaN makes the step count as bad (skipped)
    # instead of training silently on it
    return jnp.where(valid, loss, jnp.nan)


def data_index() -> jax.Array | int:
    """This device's position along the batch axes (0 outside a sharded step); seeds dropout."""
    layout = _ACTIVE.get()
    if layout is None or not layout.data_axes:
        return 0
    return jax.lax.axis_index(layout.data_axes)


def gathered(module):
    """`module` with its ZeRO-3-partitioned parameters all-gathered (itself when none are)."""
    layout = _ACTIVE.get()
    if layout is None or not layout.gathers_params:
        return module
    from flax import nnx

    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, gather_params(state))


def gather_params(tree):
    """ZeRO-3: the parameters of `tree` that are split over the data axis, all-gathered (zero.py says how)."""
    layout = _ACTIVE.get()
    return tree if layout is None else zero.gather_stage3(tree, layout)

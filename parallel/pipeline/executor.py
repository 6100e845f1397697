"""Run a pipeline schedule inside `jax.shard_map`: one SPMD program, every stage in lock step.

Each tick, every device reads its row of the schedule table (indexed by its position on the
stage axis) and takes one branch with `lax.cond`: a forward slot (`jax.vjp` of its stage on one
micro-batch, the residuals stashed in a slot of a fixed buffer), a backward slot (the stashed
residuals turned back into the vjp function and applied to the received gradient), or nothing.
Then one `ppermute` moves the tick's outputs to the neighbours. The backward of a micro-batch
is thus explicit, not autodiff of the whole loop, so a schedule may interleave forwards and
backwards of different micro-batches (1F1B) and bound the stashed activations to what its
table needs.

The model is passed in as three functions (parallel/ knows nothing of model/):
  first_fn(shared, inputs_mb) -> x         on virtual stage 0 (the embedding)
  stage_fn(chunk_params, x, mb, k) -> x    every virtual stage k (its slice of the layers)
  last_fn(shared, y, targets_mb) -> loss   on the last virtual stage (head and loss)
Collectives inside them may span any axis but the stage axis (all devices of a tensor or
data group share a stage, so they take the same branch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from meshtron.parallel.pipeline.schedule import BWD, FIELDS, FWD, Schedule
from meshtron.parallel.spmd import varying_axes


def zeros_like_struct(struct, extra_axes: tuple = ()):
    """Zeros shaped and typed like `struct`, varying over exactly its mesh axes (plus `extra_axes`)."""
    axes = tuple(sorted(set(varying_axes(struct)) | set(extra_axes)))
    out = jnp.zeros(struct.shape, struct.dtype)
    return jax.lax.pcast(out, axes, to="varying") if axes else out


def vary_like(x, axes):
    """`x` marked as varying over `axes` too (what a scan carry or cond branch expects)."""
    missing = tuple(sorted(set(axes) - set(varying_axes(x))))
    return jax.lax.pcast(x, missing, to="varying") if missing else x


class Residuals:
    """A vjp function as arrays that fit a fixed buffer: `jax.vjp`'s function is a pytree whose
    leaves are its residuals; leaves that are the parameters themselves are not stashed but
    re-inserted from the live parameters, so a stash slot holds activations only."""

    def __init__(self):
        self.treedef = None
        self.where = None

    def split(self, fn, params, x):
        """(y, stashable residual leaves) of fn(params, x); remembers how to rebuild the vjp."""
        y, vjp = jax.vjp(fn, params, x)
        leaves, treedef = jax.tree.flatten(vjp)
        param_leaves = jax.tree.leaves(params)
        where = [next((j for j, p in enumerate(param_leaves) if leaf is p), None) for leaf in leaves]
        if self.treedef is None:
            self.treedef, self.where = treedef, where
        return y, [leaf for leaf, w in zip(leaves, where) if w is None]

    def vjp(self, params, stashed):
        """The vjp function of `split`, rebuilt from the live parameters and the stashed leaves."""
        param_leaves, rest = jax.tree.leaves(params), iter(stashed)
        leaves = [param_leaves[w] if w is not None else next(rest) for w in self.where]
        return jax.tree.unflatten(self.treedef, leaves)


def run_schedule(schedule: Schedule, first_fn, stage_fn, last_fn, chunk_params, shared, inputs, targets,
                 axis: str = "stage"):
    """Loss summed over micro-batches, gradients of this device's chunks (leading axis v) and of the
    shared parameters (summed over the stage axis). inputs/targets: (M, ...) micro-batches."""
    shared, inputs, targets = (jax.tree.map(lambda a: vary_like(a, (axis,)), t) for t in (shared, inputs, targets))
    chunk_params = jax.tree.map(lambda a: vary_like(a, (axis,)), chunk_params)
    stage = jax.lax.axis_index(axis)
    table = jnp.asarray(schedule.table)
    P = schedule.stages
    res = Residuals()
    take = lambda tree, i: jax.tree.map(lambda a: a[i], tree)  # noqa: E731
    one_chunk = take(chunk_params, 0)

    def forward(p, x, mb, k):
        return res.split(lambda p_, x_: stage_fn(p_, x_, mb, k), p, x)

    x_struct = jax.eval_shape(first_fn, shared, take(inputs, 0))
    y_struct, res_struct = jax.eval_shape(forward, one_chunk, x_struct, 0, 0)
    head_struct = jax.eval_shape(lambda sh, y, tg: jax.vjp(last_fn, sh, y, tg)[0], shared, y_struct, take(targets, 0))
    flow_axes = tuple(set(varying_axes(x_struct)) | set(varying_axes(y_struct)) | {axis})
    buffers = _buffers(schedule, axis, flow_axes, x_struct, y_struct, res_struct, head_struct, chunk_params, shared)

    def tick(carry, t, perm, ops):
        row = dict(zip(FIELDS, table[t, stage]))
        params_c = take(chunk_params, row["chunk"])
        k = row["chunk"] * P + stage
        slots = ((_forward_slot, (row, carry, params_c, k, shared, inputs, targets, first_fn, last_fn, forward)),
                 (_backward_slot, (row, carry, params_c, k, shared, inputs, first_fn, stage_fn, res)))
        # a slot no stage uses at this tick of the phase is not compiled at all (GPipe's forward phase
        # has no backward slots): zeros of its shapes instead
        f_out, b_out = (slot(*args) if op in ops else _zeros_of(lambda s=slot, a=args: s(*a))() for op, (slot, args)
                        in zip((FWD, BWD), slots))
        carry = dict(carry)
        y, residuals, loss, d_head, dy = f_out
        dx, d_chunk, d_embed = b_out
        carry["stash"] = [b.at[row["stash"]].set(vary_like(r, varying_axes(b)))
                          for b, r in zip(carry["stash"], residuals)]
        carry["grad"] = carry["grad"].at[row["dy"]].set(vary_like(dy, flow_axes))
        carry["grads"] = jax.tree.map(lambda g, d: g.at[row["chunk"]].add(d), carry["grads"], d_chunk)
        carry["shared"] = jax.tree.map(lambda g, a, b: g + a + b, carry["shared"], d_head, d_embed)
        carry["loss"] = carry["loss"] + loss
        out = jnp.where(row["op"] == FWD, vary_like(y, flow_axes), vary_like(dx, flow_axes))
        received = jax.lax.ppermute(out, axis, perm) if perm else out
        carry["act"] = carry["act"].at[row["recv_act"]].set(received)
        carry["grad"] = carry["grad"].at[row["recv_grad"]].set(received)
        return carry

    carry = _run_phases(schedule, tick, buffers)
    loss = jax.lax.psum(carry["loss"], axis)
    shared_grads = jax.tree.map(lambda g: jax.lax.psum(g, axis), carry["shared"])
    return loss, carry["grads"], shared_grads


def _run_phases(schedule: Schedule, tick, carry):
    """Every tick of the schedule, phase by phase: each phase is a scan over `count` repeats of its
    `period` ticks, unrolled within the period; `tick(carry, t, perm, ops)` knows which ops its tick has."""
    op_column = schedule.table[:, :, FIELDS.index("op")]
    for start, period, count in phases(schedule):
        perms = [schedule.perms[schedule.perm_of_tick[start + j]] for j in range(period)]
        ops = [set(np.unique(op_column[start + j:start + period * count:period])) for j in range(period)]

        def body(carry, n, start=start, period=period, perms=perms, ops=ops):
            for j in range(period):
                carry = tick(carry, start + n * period + j, perms[j], ops[j])
            return carry, None

        carry, _ = jax.lax.scan(body, carry, jnp.arange(count))
    return carry


def _buffers(schedule, axis, flow_axes, x_struct, y_struct, res_struct, head_struct, chunk_params, shared):
    """The scan's carry: stash, inboxes (one scratch slot each, for ticks that write nothing), gradient
    accumulators and the loss; sized by the schedule table."""
    def slots(name, struct, axes):
        return jnp.stack([zeros_like_struct(struct, axes)] * (schedule.slots[name] + 1))

    return {
        "stash": [slots("stash", r, (axis,)) for r in res_struct],
        "act": slots("act", x_struct, flow_axes),
        "grad": slots("grad", y_struct, flow_axes),
        "grads": jax.tree.map(jnp.zeros_like, chunk_params),
        "shared": jax.tree.map(jnp.zeros_like, shared),
        "loss": zeros_like_struct(head_struct, (axis,)),
    }


def _zeros_of(fn, *args):
    """A branch returning zeros shaped and varying like fn(*args) (the other side of a lax.cond)."""
    structs = jax.eval_shape(fn, *args)
    return lambda *_: jax.tree.map(zeros_like_struct, structs)


def _forward_slot(row, carry, params_c, k, shared, inputs, targets, first_fn, last_fn, forward):
    """F slot: stage input (embedding on virtual stage 0, else the received activation), the stage's
    output and residuals, and on the last virtual stage the loss and its gradient (kept for B)."""
    mb = row["mb"]

    def run(params_c, act):
        x = jax.lax.cond(row["first"] == 1, lambda: vary_like(first_fn(shared, take_mb(inputs, mb)), varying_axes(act)),
                         lambda: act)
        y, residuals = forward(params_c, x, mb, k)

        def head(y):
            loss, vjp = jax.vjp(last_fn, shared, y, take_mb(targets, mb))
            d_shared, dy, _ = vjp(jnp.ones_like(loss))
            return loss, d_shared, dy

        loss, d_shared, dy = jax.lax.cond(row["last"] == 1, head, _zeros_of(head, y), y)
        return y, residuals, loss, d_shared, dy

    act = carry["act"][row["inbox"]]
    return jax.lax.cond(row["op"] == FWD, run, _zeros_of(run, params_c, act), params_c, act)


def _backward_slot(row, carry, params_c, k, shared, inputs, first_fn, stage_fn, res):
    """B slot: rebuild the stage's vjp from the stashed residuals, apply it to the gradient waiting in
    the inbox; on virtual stage 0 also push the input gradient through the embedding."""
    mb = row["mb"]

    def run(params_c, stashed, ct):
        d_params, dx = res.vjp(params_c, stashed)(ct)

        def embed(dx):
            _, vjp = jax.vjp(lambda sh: first_fn(sh, take_mb(inputs, mb)), shared)
            return vjp(dx.astype(jax.eval_shape(first_fn, shared, take_mb(inputs, mb)).dtype))[0]

        d_shared = jax.lax.cond(row["first"] == 1, embed, _zeros_of(embed, dx), dx)
        return dx, d_params, d_shared

    stashed = [b[row["stash"]] for b in carry["stash"]]
    ct = carry["grad"][row["inbox"]]
    return jax.lax.cond(row["op"] == BWD, run, _zeros_of(run, params_c, stashed, ct), params_c, stashed, ct)


def take_mb(tree, mb):
    """Micro-batch `mb` of (M, ...) arrays."""
    return jax.tree.map(lambda a: a[mb], tree)


def phases(schedule: Schedule) -> list[tuple[int, int, int]]:
    """(first tick, period, repeats): runs of ticks whose permutations repeat with period 1 or 2, each
    run one `lax.scan` with static permutations in its body."""
    ids = list(np.asarray(schedule.perm_of_tick))
    out, t = [], 0
    while t < len(ids):
        run1 = next((n for n in range(t, len(ids)) if ids[n] != ids[t]), len(ids)) - t
        run2 = next((n for n in range(t, len(ids)) if ids[n] != ids[t + (n - t) % 2]), len(ids)) - t
        if run2 >= 4 and run2 // 2 * 2 > run1:
            out.append((t, 2, run2 // 2))
            t += run2 // 2 * 2
        else:
            out.append((t, 1, run1))
            t += run1
    return out

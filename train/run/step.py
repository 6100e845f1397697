"""The jitted, sharded train and eval steps.

One `jax.shard_map` over the whole mesh runs the model on each device's shards. The
communication is explicit: Megatron's all-reduces inside the model (parallel/spmd.py),
ZeRO's reduce-scatter / all-gather around the optimizer update (parallel/zero.py). On one
device every collective is a no-op and this is a plain train step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from meshtron.configs.schema import Config
from meshtron.model.layers import compute_dtype
from meshtron.model.families import family
from meshtron.parallel import spmd, zero
from meshtron.parallel.mesh import MeshShape
from meshtron.parallel.rules import BATCH_AXES, ZERO_AXIS, Rules, rules_for
from meshtron.train.run import objective_step
from meshtron.train.run.optim import make_optimizer
from meshtron.train.run.pipeline_step import PipelineSteps


def _named(mesh, spec_tree):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), spec_tree, is_leaf=lambda x: isinstance(x, P))


@dataclass
class Training:
    """Everything compiled for one config on one mesh: state creation, train step, eval step."""

    config: Config
    mesh: jax.sharding.Mesh
    shape: MeshShape
    rules: Rules
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    param_specs: object
    opt_specs: object
    vocab_rows: int
    grad_specs: object = None  # summed gradients, split like the optimizer state (ZeRO from stage 1)

    @property
    def batch_axes(self) -> tuple:
        """The mesh axes of size > 1 the batch is split over (none on one device)."""
        return tuple(a for a in BATCH_AXES if self.mesh.shape[a] > 1)

    @property
    def batch_spec(self) -> P:
        """Token batches (B, T+1) (or the objective's arrays) are split over the batch axes."""
        return objective_step.batch_spec(self.config.train.objective, self.batch_axes)

    @property
    def batch_sharding(self) -> NamedSharding:
        """Where a global token batch lives on the mesh."""
        return _named(self.mesh, self.batch_spec)

    def abstract_batch(self) -> jax.ShapeDtypeStruct:
        """Shape, dtype and sharding of a global token batch (B, T+1), for compiling ahead of time."""
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            objective_step.batch_shapes(self.config), self.batch_sharding)

    def layout(self) -> spmd.Layout:
        """What the model's collectives need to know while the step is traced."""
        return spmd.Layout(params=self.rules.params, compute=self.rules.compute, data_axes=self.batch_axes,
                           gather_dtype=compute_dtype(self.config.model), platform=self.mesh.devices.flat[0].platform)

    # -- state ---------------------------------------------------------------------------
    def init_params(self):
        """Parameters created directly sharded (no device ever holds what it should not)."""
        cfg, seed, rows = self.config.model, self.config.train.seed, self.vocab_rows

        @partial(jax.jit, out_shardings=_named(self.mesh, self.param_specs))
        def create():
            return nnx.split(family(cfg).module(cfg, nnx.Rngs(params=seed), rows))[1]

        return create()

    def init_opt_state(self, params):
        """Optimizer state, partitioned over data from ZeRO stage 1."""
        return jax.jit(self.tx.init, out_shardings=_named(self.mesh, self.opt_specs))(params)

    def abstract_state(self):
        """Shapes, dtypes and shardings of (params, opt_state) without allocating anything."""
        params = jax.eval_shape(self.init_params)
        opt = jax.eval_shape(self.tx.init, params)
        with_sharding = lambda tree, specs: jax.tree.map(  # noqa: E731
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(self.mesh, s)),
            tree, _expand(specs, tree), is_leaf=lambda x: isinstance(x, P))
        return with_sharding(params, self.param_specs), with_sharding(opt, self.opt_specs)

    # -- steps ---------------------------------------------------------------------------
    def _loss_fn(self):
        graphdef, cfg, t = self.graphdef, self.config.model, self.config.train
        global_tokens = t.batch_size * cfg.seq_len

        def loss(params, batch, key, total=global_tokens):
            model = nnx.merge(graphdef, params)
            if t.objective != "causal":
                return objective_step.weighted_losses(model, batch, t.objective, key) / total
            return jnp.sum(model.token_losses(batch[:, :-1], batch[:, 1:], dropout_key=key)) / total

        return loss

    def _local_step(self, params, opt_state, tokens, key):
        rules, t, accum = self.rules, self.config.train, self.config.train.grad_accum
        use_dropout = self.config.model.dropout > 0
        grad_fn = jax.value_and_grad(self._loss_fn())
        with spmd.active_layout(self.layout()):
            # gradients with respect to per-device copies stay per-device; zero.py reduces them
            local = jax.tree.map(lambda p: zero.make_varying(p, self.batch_axes), params)
            micro = jax.tree.map(lambda a: a.reshape(accum, a.shape[0] // accum, *a.shape[1:]), tokens)
            total = () if t.objective == "causal" else (objective_step.global_weight(tokens, self.batch_axes),)
            key = jax.random.fold_in(key, spmd.data_index())

            def micro_step(i):
                k = jax.random.fold_in(key, i) if use_dropout else None
                loss, grads = grad_fn(local, jax.tree.map(lambda a: a[i], micro), k, *total)
                if zero.reduces_every_microbatch(rules.zero_stage):
                    grads = zero.reduce_over_data(grads, rules)
                return loss, grads

            if accum == 1:
                loss, grads = micro_step(0)
            else:
                # carries: gradients shaped as micro_step returns them, varying like a gradient does
                like = jax.eval_shape(micro_step, 0)
                loss0 = zero.zeros_varying_like(jax.tree.leaves(tokens)[0], (), jnp.float32)
                zeros = jax.tree.map(zero.zeros_varying_like, like[1])

                def body(carry, i):
                    loss, grads = micro_step(i)
                    return (carry[0] + loss, jax.tree.map(jnp.add, carry[1], grads)), None

                (loss, grads), _ = jax.lax.scan(body, (loss0, zeros), jnp.arange(accum))
            if zero.reduces_once_per_step(rules.zero_stage, self.mesh.shape[ZERO_AXIS]):
                grads = zero.reduce_over_data(grads, rules)  # (one device: nothing to sum)
            grads = zero.reduce_over_replicas(grads)
            return self.apply_update(params, opt_state, grads, jax.lax.psum(loss, self.batch_axes))

    def apply_update(self, params, opt_state, grads, loss):
        """Inside the sharded step, from gradients already summed over data and replicas (laid out by
        `grad_specs`): norm, clipping, the optimizer update on this device's shard, NaN/Inf skipping."""
        rules, t = self.rules, self.config.train
        with spmd.active_layout(self.layout()):
            grad_norm = zero.global_norm(grads, rules.opt_state)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            if t.grad_clip > 0:
                scale = jnp.minimum(1.0, t.grad_clip / (grad_norm + 1e-6))
                grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
            shard = zero.local_update_shard(params, rules)
            updates, new_opt = self.tx.update(grads, opt_state, shard)
            new_params = zero.gather_updated(optax.apply_updates(shard, updates), rules)
            # a NaN/Inf anywhere skips the update: parameters and optimizer state stay as they were
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
            metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
            return keep(new_params, params), keep(new_opt, opt_state), metrics

    def jit_train_step(self):
        """jit(params, opt_state, tokens (B, T+1), step) -> (params, opt_state, metrics); buffers donated."""
        if self.shape.stage > 1:
            return PipelineSteps(self).jit_train_step()
        seed = self.config.train.seed
        step_fn = jax.shard_map(
            self._local_step, mesh=self.mesh,
            in_specs=(self.param_specs, self.opt_specs, self.batch_spec, P()),
            out_specs=(self.param_specs, self.opt_specs, P()), check_vma=True)

        def train_step(params, opt_state, tokens, step):
            key = jax.random.fold_in(jax.random.PRNGKey(seed + 1), step)
            return step_fn(params, opt_state, tokens, key)

        return jax.jit(train_step, donate_argnums=(0, 1))

    def jit_eval_step(self):
        """jit(params, tokens (B, T+1)) -> mean next-token loss over the batch."""
        if self.shape.stage > 1:
            return PipelineSteps(self).jit_eval_step()
        graphdef, objective = self.graphdef, self.config.train.objective

        def local_eval(params, tokens):
            with spmd.active_layout(self.layout()):
                model = nnx.merge(graphdef, params)
                if objective != "causal":
                    return jax.lax.psum(objective_step.weighted_losses(model, tokens, objective, None),
                                        self.batch_axes) / objective_step.global_weight(tokens, self.batch_axes)
                losses = model.token_losses(tokens[:, :-1], tokens[:, 1:])
                total = jax.lax.psum(jnp.sum(losses), self.batch_axes)
                count = jax.lax.psum(jnp.asarray(losses.size, jnp.float32), self.batch_axes)
                return total / count

        return jax.jit(jax.shard_map(local_eval, mesh=self.mesh, in_specs=(self.param_specs, self.batch_spec),
                                     out_specs=P(), check_vma=True))

    def shard_batch(self, local_tokens: np.ndarray) -> jax.Array:
        """This process's rows of the global batch -> one global array split over the batch axes."""
        arrays = objective_step.host_arrays(local_tokens, self.config.train.objective)
        return jax.tree.map(jax.make_array_from_process_local_data, self.batch_sharding, arrays)


def _expand(spec_tree, tree):
    """Broadcast a spec tree (a prefix: one spec per Variable) to the leaves of `tree`."""
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), spec_tree, tree,
                        is_leaf=lambda x: isinstance(x, P) or is_var(x))


def live_rules(rules: Rules, mesh: jax.sharding.Mesh) -> Rules:
    """The rule tables without Megatron's mesh axes of size 1: a split over one device is no split, and a
    value never marked as varying over such an axis needs no collective over it, so a one-device or
    pure data-parallel step carries no all-reduce over groups of one (each a copy and a sync on CPU).
    ZeRO's data axis stays: its stages keep their structure at any degree."""
    def live(table: dict) -> dict:
        return {name: tuple(a for a in axes if a == ZERO_AXIS or mesh.shape[a] > 1) for name, axes in table.items()}
    return dataclasses.replace(rules, params=live(rules.params), grads=live(rules.grads),
                               opt_state=live(rules.opt_state), compute=live(rules.compute))


def build_training(config: Config, mesh: jax.sharding.Mesh, shape: MeshShape) -> Training:
    """Abstract model, rule tables and optimizer for `config` on `mesh` (nothing allocated yet)."""
    rules = live_rules(rules_for(config.parallel.zero_stage, pipeline=shape.stage > 1), mesh)
    vocab_rows = config.model.padded_vocab(shape.tensor)
    abstract = nnx.eval_shape(lambda: family(config.model).module(config.model, nnx.Rngs(params=0), vocab_rows))
    graphdef, abstract_params = nnx.split(abstract)
    tx = make_optimizer(config.train, config.model)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    return Training(config=config, mesh=mesh, shape=shape, rules=rules, graphdef=graphdef, tx=tx,
                    param_specs=zero.specs(abstract_params, rules.params),
                    opt_specs=zero.specs(abstract_opt, rules.opt_state), vocab_rows=vocab_rows,
                    grad_specs=zero.specs(abstract_params, rules.opt_state))

"""The train and eval steps with pipeline stages (parallel.pipeline > 1).

The stacked blocks (leading `layers` axis) are split over the `stage` mesh axis; everything
else (embedding, final norm, output layer) is held by every stage, used only where needed:
the embedding on the first virtual stage, the output layer and loss on the last (a tied
embedding is used on both, and its gradient is summed over the stage axis as Megatron does).
parallel/pipeline/executor.py runs the schedule; this file gives it the model as three
functions and wraps the optimizer update around it:

  jit( reorder blocks into (v, P, layers per chunk) chunks   (identity when v = 1)
       shard_map: pipeline forward/backward, ZeRO reduction of the gradients over data/replica
       reorder the block gradients back
       shard_map: gradient norm, clipping, optimizer update (the same code as without pipeline) )
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from meshtron.model.transformer import Transformer, run_blocks
from meshtron.parallel import spmd, zero
from meshtron.parallel.pipeline.executor import run_schedule
from meshtron.parallel.pipeline.schedule import build_schedule
from meshtron.parallel.rules import BATCH_AXES, STAGE_AXIS


def split_blocks(params):
    """(stacked blocks, everything else) of a parameter (or gradient) State."""
    raw = params.raw_mapping
    return nnx.State(raw["blocks"]), nnx.State({k: v for k, v in raw.items() if k != "blocks"})


def join_blocks(blocks, rest):
    """The inverse of split_blocks."""
    return nnx.State({**rest.raw_mapping, "blocks": blocks.raw_mapping})


def to_chunks(blocks, stages: int, virtual: int):
    """(L, ...) -> (v, P, L/(vP), ...): chunk c of stage s holds virtual stage c*P + s."""
    return jax.tree.map(lambda a: a.reshape((virtual, stages, -1) + a.shape[1:]), blocks)


def from_chunks(blocks):
    """(v, P, L/(vP), ...) -> (L, ...)."""
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[3:]), blocks)


def chunk_specs(spec_tree):
    """Specs of chunked blocks: (v, P, layers per chunk, ...) with P over the stage axis."""
    return jax.tree.map(lambda s: P(None, STAGE_AXIS, None, *s[1:]), spec_tree, is_leaf=lambda x: isinstance(x, P))


def _sum_over(x, axes: tuple):
    """psum over the batch axes of size > 1 (none on a pure pipeline)."""
    return jax.lax.psum(x, axes) if axes else x


class PipelineSteps:
    """Train and eval steps of a `Training` whose mesh has a stage axis of size > 1."""

    def __init__(self, training):
        self.training = training
        p = training.config.parallel
        self.schedule = build_schedule(p.schedule, p.pipeline, p.microbatches, p.virtual_stages)
        self.stages, self.virtual = p.pipeline, self.schedule.virtual
        abstract = nnx.eval_shape(lambda: Transformer(training.config.model, nnx.Rngs(params=0), training.vocab_rows))
        self.block_graphdef = nnx.split(abstract.blocks)[0]
        # stand-ins for the blocks when the model is rebuilt around the shared parameters only
        self.no_blocks = jax.tree.map(lambda a: jax.ShapeDtypeStruct((0,), a.dtype), nnx.state(abstract.blocks))

    # -- the model as the executor's three functions --------------------------------------------
    def _model(self, shared):
        """The Transformer around `shared`; its blocks are empty stand-ins (a stage runs its own)."""
        placeholder = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), self.no_blocks)
        return nnx.merge(self.training.graphdef, join_blocks(placeholder, shared))

    def _functions(self, key, global_tokens: int):
        cfg, per_chunk = self.training.config.model, self.training.config.model.n_layers // (self.stages * self.virtual)
        use_dropout = cfg.dropout > 0 and key is not None

        def keys(mb):  # as model.token_losses splits one micro-batch's key: embedding, then one per layer
            return jax.random.split(jax.random.fold_in(key, mb)) if use_dropout else (None, None)

        def first_fn(shared, inputs):
            x, _ = self._model(shared).embed_inputs(inputs["tokens"][:, :-1], dropout_key=keys(inputs["mb"])[0])
            return x

        def stage_fn(chunk, x, mb, k):
            blocks = nnx.merge(self.block_graphdef, chunk)
            positions = jnp.arange(x.shape[1])[None, :]  # the same for every row (see Transformer.embed_inputs)
            layer_keys = None
            if use_dropout:
                every = jax.random.split(keys(mb)[1], cfg.n_layers)
                layer_keys = jax.lax.dynamic_slice_in_dim(every, k * per_chunk, per_chunk)
            return run_blocks(cfg, blocks, x, positions, layer_keys=layer_keys)[0]

        def last_fn(shared, y, targets):
            model = self._model(shared)
            x, out = model.output_projection(y)
            return jnp.sum(model.losses_from_hidden(x, out, targets["tokens"][:, 1:])) / global_tokens

        return first_fn, stage_fn, last_fn

    def _run(self, blocks, shared, tokens, key, global_tokens):
        """Loss, chunk gradients (v, L/(vP), ...) and shared gradients of this device's tokens."""
        M = self.schedule.microbatches
        micro = {"tokens": tokens.reshape(M, tokens.shape[0] // M, tokens.shape[1]), "mb": jnp.arange(M)}
        chunks = jax.tree.map(lambda a: a.reshape((a.shape[0], -1) + a.shape[3:]), blocks)  # (v, 1, c) -> (v, c)
        first_fn, stage_fn, last_fn = self._functions(key, global_tokens)
        return run_schedule(self.schedule, first_fn, stage_fn, last_fn, chunks, shared, micro, micro, STAGE_AXIS)

    # -- train step ----------------------------------------------------------------------------
    def _local_grads(self, blocks, shared, tokens, key):
        tr = self.training
        t = tr.config.train
        with spmd.active_layout(tr.layout()):
            vary = lambda tree: jax.tree.map(lambda p: zero.make_varying(p, BATCH_AXES), tree)  # noqa: E731
            key = jax.random.fold_in(key, spmd.data_index())
            loss, d_chunks, d_shared = self._run(vary(blocks), vary(shared), tokens, key,
                                                 t.batch_size * tr.config.model.seq_len)
            v, per_chunk = jax.tree.leaves(d_chunks)[0].shape[:2]
            flat = jax.tree.map(lambda g: g.reshape((v * per_chunk,) + g.shape[2:]), d_chunks)
            grads = zero.reduce_over_replicas(zero.reduce_over_data(join_blocks(flat, d_shared), tr.rules))
            d_blocks, d_shared = split_blocks(grads)
            d_blocks = jax.tree.map(lambda g: g.reshape((v, 1, per_chunk) + g.shape[1:]), d_blocks)
            return _sum_over(loss, tr.batch_axes), d_blocks, d_shared

    def jit_train_step(self):
        """jit(params, opt_state, tokens (B, T+1), step) -> (params, opt_state, metrics); buffers donated."""
        tr = self.training
        seed = tr.config.train.seed
        p_blocks, p_shared = split_blocks(tr.param_specs)
        g_blocks, g_shared = split_blocks(tr.grad_specs)
        grads_fn = jax.shard_map(
            self._local_grads, mesh=tr.mesh,
            in_specs=(chunk_specs(p_blocks), p_shared, tr.batch_spec, P()),
            out_specs=(P(), chunk_specs(g_blocks), g_shared), check_vma=True)
        update_fn = jax.shard_map(
            tr.apply_update, mesh=tr.mesh, in_specs=(tr.param_specs, tr.opt_specs, tr.grad_specs, P()),
            out_specs=(tr.param_specs, tr.opt_specs, P()), check_vma=True)

        def train_step(params, opt_state, tokens, step):
            key = jax.random.fold_in(jax.random.PRNGKey(seed + 1), step)
            blocks, shared = split_blocks(params)
            loss, d_blocks, d_shared = grads_fn(to_chunks(blocks, self.stages, self.virtual), shared, tokens, key)
            grads = join_blocks(from_chunks(d_blocks), d_shared)
            return update_fn(params, opt_state, grads, loss)

        return jax.jit(train_step, donate_argnums=(0, 1))

    def jit_eval_step(self):
        """jit(params, tokens (B, T+1)) -> mean next-token loss over the batch (the same schedule, gradients
        discarded)."""
        tr = self.training
        p_blocks, p_shared = split_blocks(tr.param_specs)

        def local_eval(blocks, shared, tokens):
            with spmd.active_layout(tr.layout()):
                shards = 1
                for axis in tr.batch_axes:
                    shards *= jax.lax.axis_size(axis)
                global_tokens = tokens.shape[0] * shards * (tokens.shape[1] - 1)
                loss, _, _ = self._run(blocks, shared, tokens, None, global_tokens)
                return _sum_over(loss, tr.batch_axes)

        fn = jax.shard_map(local_eval, mesh=tr.mesh, in_specs=(chunk_specs(p_blocks), p_shared, tr.batch_spec),
                           out_specs=P(), check_vma=True)

        def eval_step(params, tokens):
            blocks, shared = split_blocks(params)
            return fn(to_chunks(blocks, self.stages, self.virtual), shared, tokens)

        return jax.jit(eval_step)

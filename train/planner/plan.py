"""The planner: what a config needs per device on a mesh (memory, communication) before it runs.

`make_plan` evaluates the formulas of train/planner/formulas.py for one config on N devices
(N need not exist); `suggest` searches the nearby layouts (a higher ZeRO stage, a larger tensor
degree, remat, a smaller micro-batch) for the cheapest one that fits a device's memory;
`zero_paper_state` is the ZeRO paper's closed form for a bare parameter count Ψ.
train/planner/compiled.py reads the same figures out of the compiled step.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import jax

from meshtron.configs.errors import ConfigError
from meshtron.configs.loader import config_from_dict, config_to_dict
from meshtron.configs.schema import Config
from meshtron.model.counting import count_params
from meshtron.train.planner import formulas, temporaries
from meshtron.parallel.mesh import MeshShape, resolve_mesh_shape
from meshtron.train.planner.formulas import CommTerm, Precision
from meshtron.parallel import zero
from meshtron.parallel.rules import rules_for
from meshtron.train.planner.pipeline import PipelineFigures, pipeline_figures, stage_axis_terms
from meshtron.train.planner.stacks import model_stacks

STAGES = (0, 1, 2, 3)
REMAT_ORDER = ("none", "dots", "full")  # less memory, more recomputation, left to right


@dataclass(frozen=True)
class StackActivations:
    """One stack's blocks on one device for one micro-batch: how many, over how many positions, the bytes one
    block saves (Korthikanti's count, and what the compiled block keeps beyond it)."""

    name: str
    layers: int
    tokens: int
    cross_tokens: int  # encoder positions each block cross-attends to (0: none)
    per_layer_bytes: int
    kept_bytes: int


def stack_activations(model, micro: int, tensor: int, activation_bytes: int) -> tuple[StackActivations, ...]:
    """The saved activations of each stack of `model` (train/planner/stacks.py)."""
    return tuple(StackActivations(
        s.name, s.layers, s.tokens, s.memory,
        formulas.activation_bytes_per_layer(model, micro, tensor, activation_bytes, stack=s),
        temporaries.kept_bytes_per_layer(model, micro, tensor, activation_bytes, stack=s)) for s in model_stacks(model))


@dataclass(frozen=True)
class Plan:
    """Per-device memory (bytes) and per-step communication of one config on one mesh, from formulas."""

    config: Config
    shape: MeshShape
    precision: Precision
    micro_batch: int  # sequences per device per micro-batch
    params_bytes: int
    grads_bytes: int  # transient: built in the backward pass, never a step argument
    optimizer_bytes: int
    batch_bytes: int
    step_bytes: int
    gathered_bytes: int  # ZeRO-3's gathered weights (embedding/head for the step, one block at a time)
    compute_copy_bytes: int  # the local parameters cast to the compute dtype (planner/temporaries.py)
    working_bytes: int  # one block's backward, the logits' gradient, ZeRO-3's gathered gradients
    activation_bytes_per_layer: int  # Korthikanti et al. 2022's count (a block of the first stack)
    kept_bytes_per_layer: int  # what the compiled block keeps beyond it (float32 copies; temporaries.py)
    activation_bytes_outside_layers: int
    stacks: tuple[StackActivations, ...]  # every stack's blocks: one for a decoder or encoder, two for T5
    comm: tuple[CommTerm, ...]
    stages: dict  # ZeRO stage -> {params_bytes, grads_bytes, optimizer_bytes} on this mesh
    pipeline: PipelineFigures | None = None  # with pipeline stages: bubble, activations in flight

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage planned."""
        return self.config.parallel.zero_stage

    @property
    def activation_bytes(self) -> int:
        """All layers' saved activations (every stack's) plus what lies outside them, for one micro-batch;
        with pipeline stages, this stage's layers for every micro-batch it keeps in flight."""
        layers = sum(s.layers * (s.per_layer_bytes + s.kept_bytes) for s in self.stacks)
        in_flight = self.pipeline.layers_in_flight_per_layer if self.pipeline else 1
        return round(layers * in_flight) + self.activation_bytes_outside_layers

    @property
    def argument_bytes(self) -> int:
        """Bytes of the train step's arguments: what compiled memory_analysis() calls argument_size."""
        return self.params_bytes + self.optimizer_bytes + self.batch_bytes + self.step_bytes

    @property
    def temporary_bytes(self) -> int:
        """Everything that is not an argument: what compiled memory_analysis() calls temp_size."""
        return (self.grads_bytes + self.gathered_bytes + self.compute_copy_bytes + self.activation_bytes
                + self.working_bytes)

    @property
    def total_bytes(self) -> int:
        """Arguments and temporaries: the figure checked against a device."""
        return self.argument_bytes + self.temporary_bytes

    def comm_elements(self) -> dict[str, float]:
        """Elements sent per device per step, by mesh axis."""
        return _by_axis(self.comm, lambda t: t.elements)

    def comm_bytes(self) -> dict[str, float]:
        """Bytes sent per device per step, by mesh axis."""
        return _by_axis(self.comm, lambda t: t.bytes)

    def comm_elements_by_kind(self) -> dict[str, dict[str, float]]:
        """{axis: {collective kind: elements}}, the shape of parallel.hlo.comm_by_axis."""
        out: dict[str, dict[str, float]] = {}
        for t in self.comm:
            kinds = out.setdefault(t.axis, {})
            kinds[t.kind] = kinds.get(t.kind, 0.0) + t.elements
        return out


def _by_axis(terms, value) -> dict[str, float]:
    out: dict[str, float] = {}
    for t in terms:
        out[t.axis] = out.get(t.axis, 0.0) + value(t)
    return out


def micro_batch_size(config: Config, shape: MeshShape) -> int:
    """Sequences one device runs per micro-batch: batch_size / (replica x data) / grad_accum (or / the
    pipeline's micro-batches)."""
    micro = config.parallel.microbatches if shape.stage > 1 else 1
    return config.train.batch_size // shape.batch_shards // config.train.grad_accum // micro


def make_plan(config: Config, n_devices: int, precision: str = "config", platform: str | None = None) -> Plan:
    """Plan `config` on `n_devices` devices (they need not exist) of `platform` (cpu, gpu, tpu; default: this
    machine's); ConfigError if the mesh is impossible."""
    platform = platform or jax.default_backend()
    shape = resolve_mesh_shape(config, n_devices)
    m, t = config.model, config.train
    vocab_rows = m.padded_vocab(shape.tensor)
    params, opt_state = formulas.state_tensors(m, t, vocab_rows)
    prec = formulas.precision_for(precision, m)
    staged = shape.stage > 1
    rules, degrees = rules_for(config.parallel.zero_stage, staged), shape.as_dict()
    micro = micro_batch_size(config, shape)
    stages = {s: formulas.model_state_bytes(params, opt_state, rules_for(s, staged), degrees, prec) for s in STAGES}
    figures = pipeline_figures(config)
    share_model, passes = _stage_share(m, t.grad_accum, figures)
    comm = (formulas.data_axis_terms(params, config, shape, prec)
            + formulas.replica_axis_terms(params, config, shape, rules, prec)
            + formulas.tensor_axis_terms(share_model, micro, passes, shape.tensor, prec.activation_bytes)
            + stage_axis_terms(params, config, shape, rules, micro, prec.activation_bytes, figures))
    gathered = formulas.gathered_weight_bytes(params, rules, degrees, m, prec)
    working = (temporaries.block_working_bytes(m, micro, shape.tensor, prec.activation_bytes, platform)
               + temporaries.logits_gradient_bytes(m, micro, shape.tensor, vocab_rows)
               + temporaries.gathered_gradient_bytes(gathered)
               + temporaries.outside_working_bytes(m, micro, shape.tensor, vocab_rows, prec.activation_bytes))
    stacks = stack_activations(m, micro, shape.tensor, prec.activation_bytes)
    return Plan(
        config=config, shape=shape, precision=prec, micro_batch=micro, **stages[config.parallel.zero_stage],
        batch_bytes=formulas.batch_bytes(config, shape), step_bytes=formulas.step_argument_bytes(config),
        gathered_bytes=gathered, compute_copy_bytes=temporaries.compute_copy_bytes(params, rules, degrees, prec),
        working_bytes=working,
        activation_bytes_per_layer=stacks[0].per_layer_bytes, kept_bytes_per_layer=stacks[0].kept_bytes,
        activation_bytes_outside_layers=formulas.activation_bytes_outside_layers(
            m, micro, shape.tensor, vocab_rows, prec.activation_bytes),
        stacks=stacks, comm=tuple(comm), stages=stages, pipeline=figures)


def _stage_share(model, grad_accum: int, figures: PipelineFigures | None):
    """(model, micro-batch passes) as one device sees them: with pipeline stages, its L/P layers for M
    micro-batches (a bound: the embedding and output layer run on the first and last stage only)."""
    if figures is None:
        return model, grad_accum
    return dataclasses.replace(model, n_layers=model.n_layers // figures.stages), figures.microbatches


def params_total(config: Config) -> int:
    """The model's parameter count (model/counting.py, unpadded vocabulary)."""
    return count_params(config.model).total


# -- the ZeRO paper's closed form -----------------------------------------------------------------
def zero_paper_state(psi: float, data_degree: int, stage: int, bytes_per_param: tuple = (2, 2, 12)) -> dict:
    """Rajbhandari et al. 2020: per-device bytes of Ψ parameters at data-parallel degree N with
    (params, grads, optimizer) bytes per parameter, the formula in Ψ, and the data-axis ring volume."""
    p, g, k = bytes_per_param
    n = data_degree
    per_param = {"params": p, "grads": g, "opt_state": k}
    split = {kind: zero.splits(kind, stage) for kind in per_param}
    state = {"params_bytes": p * psi / (n if split["params"] else 1),
             "grads_bytes": g * psi / (n if split["grads"] else 1),
             "optimizer_bytes": k * psi / (n if split["opt_state"] else 1)}
    state["model_state_bytes"] = sum(state.values())
    # bytes per parameter held whole, and held as a 1/N slice
    whole_bytes = sum(b for kind, b in per_param.items() if not split[kind])
    split_bytes = sum(b for kind, b in per_param.items() if split[kind])
    state["formula"] = " + ".join(([f"{whole_bytes}Ψ"] if whole_bytes else [])
                                  + ([f"{split_bytes}Ψ/N"] if split_bytes else []))
    state["comm_elements"] = {"data": (3 if split["params"] else 2) * psi * (n - 1) / n}
    return state


def bare_mesh_shape(config: Config, n_devices: int) -> MeshShape:
    """Degrees for a bare parameter count: the config's parallel keys on n devices, no model or batch to check."""
    bare = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=n_devices, grad_accum=1),
                               parallel=dataclasses.replace(config.parallel, zero_stage=0))
    return resolve_mesh_shape(bare, n_devices)


# -- what to change when a plan does not fit --------------------------------------------------------
@dataclass(frozen=True)
class Suggestion:
    """The cheapest change that makes a plan fit, and the plan it gives."""

    overrides: tuple[str, ...]  # key=value, as typed on the command line
    description: str
    plan: Plan


def _choices(config: Config, n_devices: int):
    """Every combination of more ZeRO, more tensor degree, more remat and more micro-batches than
    `config`: one (steps along the knob, key=value overrides, words) per knob."""
    p, m, t = config.parallel, config.model, config.train
    stages = [(s - p.zero_stage, (f"parallel.zero_stage={s}",), f"ZeRO stage {s}") for s in STAGES if s >= p.zero_stage]
    tensors, degree = [], p.tensor
    while n_devices % (p.replica * degree) == 0:
        data = n_devices // (p.replica * degree)
        tensors.append((round(math.log2(degree / p.tensor)), (f"parallel.data={data}", f"parallel.tensor={degree}"),
                        f"tensor degree {degree} (data {data})"))
        degree *= 2
    remats = [(REMAT_ORDER.index(r) - REMAT_ORDER.index(m.remat), (f"model.remat={r}",), f"remat {r}")
              for r in REMAT_ORDER[REMAT_ORDER.index(m.remat):]]
    accums, accum = [], t.grad_accum
    while t.batch_size % accum == 0:
        accums.append((round(math.log2(accum / t.grad_accum)), (f"train.grad_accum={accum}",),
                       f"grad_accum {accum} (smaller micro-batches)"))
        accum *= 2
    # knob order is the preference between equally small changes: ZeRO first (stages 1-2 cost no
    # extra traffic), then micro-batches, remat, and last the tensor degree (traffic on every layer)
    return itertools.product(stages, accums, remats, tensors)


def _cost(choice) -> tuple:
    """Fewest knobs turned, then fewest steps along them, then the knob preference."""
    steps = [c[0] for c in choice]
    return sum(1 for s in steps if s), sum(steps), tuple(reversed(steps))


def suggest(config: Config, n_devices: int, device_memory_bytes: float, precision: str = "config",
            platform: str | None = None) -> Suggestion | None:
    """The layout that fits `device_memory_bytes` with the least change (see _cost), planned with the same
    formulas; None if nothing within reach fits or nothing needs to change."""
    as_dict = config_to_dict(config)
    for choice in sorted(_choices(config, n_devices), key=_cost):
        try:  # the overrides applied exactly as the command line would apply them
            changed = config_from_dict(as_dict, [o for c in choice for o in c[1]])
            plan = make_plan(changed, n_devices, precision, platform)
        except ConfigError:  # an impossible layout (heads, batch or width do not divide)
            continue
        if plan.total_bytes <= device_memory_bytes:
            moved = [c for c in choice if c[0]]
            if not moved:
                return None
            return Suggestion(overrides=tuple(o for c in moved for o in c[1]),
                              description=", ".join(c[2] for c in moved), plan=plan)
    return None

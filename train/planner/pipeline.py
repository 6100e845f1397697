"""The planner's pipeline figures: bubble, activations in flight, and the stage axis's traffic.

From the schedule table the step runs (parallel/pipeline/schedule.py), not from a second model
of it: the bubble counted from the table (equal to (P-1)/(M+P-1), or (P-1)/(vM+P-1)
interleaved), the micro-batches one stage keeps activations for (1F1B: P; GPipe: M), and the
point-to-point volume: every tick whose permutation is not empty ships one (b, s, h)
activation or gradient per device, so a step moves ticks_with_sends x b·s·h elements per
device over the stage axis (2(M+P-1)·b·s·h for GPipe and 1F1B with P > 2). The embedding,
final norm and output layer live on every stage: their gradients are summed over the stage
axis once per step (an all-reduce, as Megatron does for a tied embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshtron.configs.schema import Config
from meshtron.parallel.mesh import MeshShape
from meshtron.parallel.pipeline.schedule import bubble_formula, build_schedule
from meshtron.train.planner.formulas import CommTerm, _ring, shard_elements, stored_bytes


@dataclass(frozen=True)
class PipelineFigures:
    """What a pipeline schedule costs on one device, per step."""

    schedule: str
    stages: int
    microbatches: int
    virtual_stages: int
    ticks: int
    bubble_fraction: float  # counted from the table
    bubble_formula: float
    in_flight: int  # micro-batches (chunks when interleaved) whose activations one stage keeps at once
    sends_per_device: int  # ticks that ship a buffer

    @property
    def layers_in_flight_per_layer(self) -> float:
        """Activations kept, in units of one layer's activations for one micro-batch, per layer of the model:
        a stage holds L/(vP) layers for `in_flight` chunks."""
        return self.in_flight / (self.stages * self.virtual_stages)


def pipeline_figures(config: Config) -> PipelineFigures | None:
    """The schedule's figures, or None without pipeline stages."""
    p = config.parallel
    if p.pipeline == 1:
        return None
    s = build_schedule(p.schedule, p.pipeline, p.microbatches, p.virtual_stages)
    return PipelineFigures(
        schedule=p.schedule, stages=p.pipeline, microbatches=p.microbatches, virtual_stages=s.virtual,
        ticks=s.ticks, bubble_fraction=s.bubble_fraction(),
        bubble_formula=bubble_formula(p.schedule, p.pipeline, p.microbatches, s.virtual), in_flight=s.in_flight(),
        sends_per_device=sum(1 for perm in s.perm_of_tick if s.perms[perm]))


def stage_axis_terms(params, config: Config, shape: MeshShape, rules, micro_batch: int,
                     activation_bytes: int, figures: PipelineFigures | None) -> list[CommTerm]:
    """Point-to-point activations and gradients, and the all-reduce of the shared parameters' gradients."""
    if figures is None:
        return []
    m = config.model
    bsh = micro_batch * m.seq_len * m.d_model
    shared = sum(shard_elements(t, rules.params, shape.as_dict()) for t in params if not t.in_blocks)
    return [CommTerm("stage", "collective-permute", figures.sends_per_device * bsh, activation_bytes,
                     "activations forward, their gradients backward: one (b, s, h) buffer per tick"),
            CommTerm("stage", "all-reduce", _ring("all-reduce", shared, shape.stage), stored_bytes(params),
                     "embedding, final norm, head gradients (held by every stage), once per step")]

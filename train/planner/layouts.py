"""How should a model be split over a TPU slice? Every layout the formulas can plan, ranked by a roofline.

`search(config, topology)` tries each tensor degree, ZeRO stage, remat policy and number of
micro-batches (grad_accum) on all of the slice's chips, keeps the layouts whose formula
memory fits a chip's HBM, and ranks them by a predicted step time. The prediction is a
roofline, not a simulation:

    compute  = training FLOPs per chip (model/counting.py, PaLM convention) x recompute factor
               (4/3 under remat full: the forward runs twice) / the chip's peak bf16 FLOP/s
    tensor   = tensor-axis bytes per chip / axis bandwidth (Megatron's all-reduces sit on the
               critical path, so they add to compute)
    data     = data- and replica-axis bytes per chip / axis bandwidth (ZeRO's gathers and
               reductions can overlap compute, so they race it)
    step     = max(compute + tensor, data)

An axis inside a slice gets the links of one torus dimension (ICI per chip / (2 x torus
dimensions), both directions of a ring); replica groups across slices get the chip's DCN
bandwidth (GPUs: NVLink inside a node, InfiniBand between nodes). Real steps are slower (no kernel reaches peak); the ranking is what it is for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from meshtron.configs.errors import ConfigError
from meshtron.configs.loader import config_from_dict, config_to_dict
from meshtron.configs.schema import Config
from meshtron.model.counting import model_flops_per_token
from meshtron.train.planner.plan import REMAT_ORDER, STAGES, Plan, make_plan
from meshtron.train.planner.topology import Topology

RECOMPUTE = {"none": 1.0, "dots": 1.0, "full": 4.0 / 3.0}  # forward+backward = 3 forwards; full adds one


@dataclass(frozen=True)
class Candidate:
    """One layout that fits, with its predicted step time (seconds) and its parts."""

    overrides: tuple[str, ...]  # key=value, as `meshtron train` takes them
    plan: Plan
    compute_seconds: float
    tensor_seconds: float
    data_seconds: float

    @property
    def step_seconds(self) -> float:
        """The roofline step time: max(compute + tensor-axis traffic, data/replica traffic)."""
        return max(self.compute_seconds + self.tensor_seconds, self.data_seconds)


def axis_bandwidth(topology: Topology, axis: str, shape=None) -> float:
    """Bytes per second one chip sends over a mesh axis: one torus dimension's links, or DCN across slices;
    GPUs: half the NVLink bandwidth while the axis stays inside a node, the node's InfiniBand per GPU beyond."""
    chip = topology.chip
    if chip.platform == "cuda":
        span = {"tensor": shape.tensor, "data": shape.tensor * shape.data}.get(axis, shape.devices) if shape else 1
        return chip.ici_bytes_per_s / 2 if span <= chip.per_node else chip.dcn_bytes_per_s
    if axis == "replica" and topology.slices > 1:
        return chip.dcn_bytes_per_s
    return chip.ici_bytes_per_s / (2 * chip.torus_dims)


def roofline(plan: Plan, topology: Topology) -> tuple[float, float, float]:
    """(compute, tensor-axis, data+replica-axis) seconds of one step of `plan` on `topology`."""
    config = plan.config
    tokens = config.train.batch_size * config.model.seq_len
    flops = model_flops_per_token(config.model) * tokens / plan.shape.devices * RECOMPUTE[config.model.remat]
    comm = plan.comm_bytes()
    tensor = comm.get("tensor", 0.0) / axis_bandwidth(topology, "tensor", plan.shape)
    data = sum(comm.get(a, 0.0) / axis_bandwidth(topology, a, plan.shape) for a in ("data", "replica"))
    return flops / topology.chip.peak_bf16_flops, tensor, data


def _overrides(config: Config, chips: int, seq_len: int | None, batch: int | None):
    """Every (key=value, ...) the search tries: tensor degrees, ZeRO stages, remat, micro-batches."""
    m, t = config.model, config.train
    batch = batch or t.batch_size
    fixed = [f"train.batch_size={batch}"] + ([f"model.seq_len={seq_len}"] if seq_len else [])
    tensors = [d for d in (1, 2, 4, 8, 16, 32) if chips % d == 0 and m.n_heads % d == 0]
    accums = [a for a in (1, 2, 4, 8, 16, 32, 64) if batch % a == 0]
    for tensor, stage, remat, accum in itertools.product(tensors, STAGES, REMAT_ORDER, accums):
        yield tuple(fixed + [f"parallel.replica=1", f"parallel.data={chips // tensor}", f"parallel.tensor={tensor}",
                             f"parallel.zero_stage={stage}", f"model.remat={remat}", f"train.grad_accum={accum}"])


def search(config: Config, topology: Topology, seq_len: int | None = None, batch: int | None = None,
           memory_fraction: float = 1.0) -> list[Candidate]:
    """Every layout of `config` on all chips of `topology` whose formula memory fits a chip's HBM
    (times `memory_fraction`), fastest predicted step first."""
    as_dict = config_to_dict(config)
    found = []
    for overrides in _overrides(config, topology.chips, seq_len, batch):
        if topology.slices > 1:
            overrides = _across_slices(overrides, topology)
        try:
            changed = config_from_dict(as_dict, list(overrides))
            plan = make_plan(changed, topology.chips, platform=topology.planner_platform)
        except ConfigError:  # heads, batch or width do not divide: not a layout
            continue
        if plan.total_bytes <= topology.hbm_bytes * memory_fraction:
            found.append(Candidate(overrides, plan, *roofline(plan, topology)))
    # equal roofline times: less traffic first (more room to hide it), then less memory
    return sorted(found, key=lambda c: (round(c.step_seconds, 6), round(c.data_seconds + c.tensor_seconds, 6),
                                        c.plan.total_bytes))


def _across_slices(overrides: tuple, topology: Topology) -> tuple:
    """Several slices: one replica group per slice (ZeRO inside a slice, gradients averaged over DCN)."""
    out = []
    for o in overrides:
        key, value = o.split("=")
        if key == "parallel.replica":
            value = str(topology.slices)
        elif key == "parallel.data":
            value = str(int(value) // topology.slices)
        out.append(f"{key}={value}")
    return tuple(out)


def changed_overrides(config: Config, candidate: Candidate) -> list[str]:
    """The candidate's overrides that differ from `config`: what a user adds to `meshtron train`."""
    current = config_to_dict(config)
    out = []
    for item in candidate.overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        if str(current.get(section, {}).get(name)) != value:
            out.append(item)
    return out

"""Compile Meshtron's real train step for a TPU slice (or GPU nodes) on a machine that has none.

libtpu (the `tpu-compile` extra) carries Google's TPU compiler. `jax.experimental.topologies`
asks it for the devices of a slice ("v5p:4x4x4": 64 compile-only devices); a mesh over them,
the train step lowered with abstract arguments (shapes, dtypes and shardings only) and
`.compile()` give the figures a real pod would: `memory_analysis()` (HBM per chip),
`cost_analysis()` (FLOPs, counting a scanned layer body once) and the optimised HLO with its
collectives. Nothing runs and nothing is allocated; the process keeps using the CPU backend.
GPUs go the same way through the CUDA plugin (the `gpu-compile` extra), given a target
description of the GPU (gpu_target() below): no driver, no CUDA libraries, no GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re
import time
from dataclasses import dataclass

from meshtron.configs.errors import UserError
from meshtron.configs.schema import Config
from meshtron.parallel.mesh import MeshShape
from meshtron.train.planner.compiled import CompiledFigures, lower_train_step, read_figures
from meshtron.train.planner.topology import Topology

INSTALL_HINT = 'pip install "meshtron[tpu-compile]" (it brings libtpu, the TPU compiler; no TPU needed)'
GPU_INSTALL_HINT = ('pip install "meshtron[gpu-compile]" (it brings the CUDA plugin jax-cuda12-plugin/-pjrt; '
                    'no GPU, driver or CUDA libraries needed)')
_ACCELERATOR_TYPES = {"v5e": "v5litepod", "v6e": "v6e", "v5p": "v5p", "v4": "v4"}


def require_libtpu(topology: Topology) -> None:
    """One-line UserError, before anything is compiled, when the compiler for `topology` is not installed
    (libtpu for TPUs, the CUDA plugin for GPUs)."""
    if topology.chip.platform == "cuda":
        if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
            raise UserError(f"--topology {topology.name}: compiling for GPUs needs the CUDA plugin; {GPU_INSTALL_HINT}")
    elif importlib.util.find_spec("libtpu") is None:
        raise UserError(f"--topology {topology.name}: compiling for TPU needs libtpu; {INSTALL_HINT}")


def check_fits_topology(shape: MeshShape, topology: Topology) -> None:
    """One-line UserError when the layout's mesh does not span exactly the slice's chips."""
    if shape.devices != topology.chips:
        more = "more" if shape.devices > topology.chips else "fewer"
        raise UserError(f"the layout stage x replica x data x tensor = {shape.stage} x {shape.replica} x "
                        f"{shape.data} x {shape.tensor} needs {shape.devices} chips, {more} than {topology.name} has ({topology.chips}); use "
                        f"parallel.data=-1 to fill the slice, or another --topology")
    if topology.slices > 1 and shape.replica % topology.slices:
        raise UserError(f"{topology.name} joins {topology.slices} slices over the data-center network: set "
                        f"parallel.replica to a multiple of {topology.slices} (one replica group per slice)")


def tpu_config(config: Config) -> Config:
    """The config as a TPU run resolves it: compute dtype `auto` is bfloat16 there (float32 on this CPU)."""
    if config.model.compute_dtype != "auto":
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, compute_dtype="bfloat16"))


def _quiet_libtpu(topology: Topology) -> None:
    # libtpu looks for a TPU VM's metadata when it starts and warns that TPU_ACCELERATOR_TYPE and
    # TPU_WORKER_HOSTNAMES are unset; for compiling only, these plain values are all it needs
    chips = topology.chips_per_slice * (2 if topology.chip.names_count_cores else 1)
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{_ACCELERATOR_TYPES[topology.chip.generation]}-{chips}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # compiling claims no chip: skip libtpu's one-process-per-machine lock (/tmp/libtpu_lockfile),
    # so two plans (or a plan and the test suite) can compile at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


@functools.lru_cache(maxsize=8)
def topology_devices(topology: Topology) -> tuple:
    """The compile-only devices of a slice (one per chip), from libtpu."""
    require_libtpu(topology)
    from jax.experimental import topologies

    if topology.chip.platform == "cuda":
        desc = topologies.get_topology_desc(platform="cuda", topology_name="", target_config=gpu_target(topology.chip),
                                            topology=topology.libtpu_name)
        return tuple(desc.devices)
    _quiet_libtpu(topology)

    options = {"num_slices": topology.slices} if topology.slices > 1 else {}
    if topology.chip.chip_config:  # v4/v5p: one device per chip, both TensorCores ("megacore")
        options["chip_config_name"] = topology.chip.chip_config
    if topology.chips_per_slice == 1:
        options["chips_per_host_bounds"] = (1, 1, 1)
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name, **options)
    return tuple(desc.devices)


def topology_mesh(shape: MeshShape, topology: Topology):
    """A (stage, replica, data, tensor) mesh over the slice, laid out along its torus (tensor innermost:
    neighbouring chips), replica groups across slices when there are several."""
    import numpy as np
    from jax.experimental import mesh_utils
    from jax.sharding import AxisType, Mesh

    from meshtron.parallel.rules import MESH_AXES

    check_fits_topology(shape, topology)
    devices = list(topology_devices(topology))
    dims = (shape.stage, shape.replica, shape.data, shape.tensor)  # MESH_AXES order
    try:
        if topology.slices > 1:
            grid = mesh_utils.create_hybrid_device_mesh(
                (shape.stage, shape.replica // topology.slices, shape.data, shape.tensor),
                (1, topology.slices, 1, 1), devices)
        else:
            grid = mesh_utils.create_device_mesh(dims, devices)
    except Exception:  # noqa: BLE001  a shape (or GPU devices) the torus helper cannot place: plain order
        grid = np.asarray(devices).reshape(dims)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


class OutOfHbm(Exception):
    """libtpu refused to compile: the step needs more HBM per chip than the chip has."""

    def __init__(self, used_bytes: float, capacity_bytes: float, seconds: float = 0.0):
        super().__init__(f"needs {used_bytes / 2**30:.2f} GiB of {capacity_bytes / 2**30:.2f} GiB HBM per chip")
        self.used_bytes, self.capacity_bytes, self.seconds = used_bytes, capacity_bytes, seconds


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def hbm_overflow(message: str) -> tuple[float, float] | None:
    """(needed, capacity) bytes from libtpu's refusal ('Ran out of memory on HBM, the total memory required
    for HLO temporaries (111.50G) exceeds available HBM (95.74G).' or '... Used 20.51G of 15.75G hbm'),
    or None for any other error."""
    match = (re.search(r"required for HLO temporaries \(([0-9.]+)([KMGT]?)\) exceeds available HBM "
                       r"\(([0-9.]+)([KMGT]?)\)", message)
             or re.search(r"Used ([0-9.]+)([KMGT]?) of ([0-9.]+)([KMGT]?) hbm", message))
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)], float(match.group(3)) * _UNITS[match.group(4)]


def gpu_target(chip) -> str:
    """A GpuTargetConfigProto (text) for the CUDA plugin: what XLA's GPU compiler asks a device for,
    from the chip table (NVIDIA's published figures) instead of a driver."""
    sms, (major, minor), clock_ghz, memory_bytes_per_s, l2_bytes, shared_per_sm = chip.target
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: {shared_per_sm} shared_memory_per_block_optin: {shared_per_sm - 1024}
  threads_per_core_limit: 2048 core_count: {sms} fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {int(memory_bytes_per_s)} l2_cache_size: {l2_bytes} clock_rate_ghz: {clock_ghz}
  device_memory_size: {chip.hbm_bytes} registers_per_core_limit: 65536 registers_per_block_limit: 65536
  cuda_compute_capability {{ major: {major} minor: {minor} }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{chip.device_kind}"
"""


@dataclass(frozen=True)
class TpuFigures:
    """What the TPU compiler says about one train step, per chip."""

    compiled: CompiledFigures
    topology: Topology
    flops: float  # cost_analysis(): a scanned body (layers, micro-batches) counted once
    state_bytes: int  # parameters + optimizer state arguments, unpadded shapes
    state_padding_bytes: int  # what TPU tiled layouts add to them (scalars fill a 128-element tile)
    batch_padding_bytes: int  # the same for the token batch and step counter
    generated_code_bytes: int
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        """HBM one chip needs: arguments, outputs not written over donated arguments, temporaries."""
        c = self.compiled
        return c.argument_bytes + c.output_bytes - c.alias_bytes + c.temp_bytes + self.generated_code_bytes

    @property
    def fits(self) -> bool:
        """True when the step fits one chip's HBM."""
        return self.total_bytes <= self.topology.hbm_bytes


@functools.lru_cache(maxsize=8)
def compile_for_topology(config: Config, shape: MeshShape, topology: Topology) -> TpuFigures:
    """Compile the train step `meshtron train` runs for `config` on the slice and read its figures
    (cached per process). `config` should already be tpu_config(config)."""
    mesh = topology_mesh(shape, topology)
    start = time.perf_counter()
    lowered, n_state = lower_train_step(config, mesh, shape)
    try:
        compiled = lowered.compile()
    except Exception as e:  # jax.errors.JaxRuntimeError; libtpu refuses a program larger than HBM
        overflow = hbm_overflow(str(e))
        if overflow is None:
            raise
        raise OutOfHbm(*overflow, seconds=time.perf_counter() - start) from None
    seconds = time.perf_counter() - start
    figures = read_figures(compiled, shape)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    sizes = argument_sizes(figures.hlo_text)  # [(padded, unpadded)] per argument, in order
    state, rest = sizes[:n_state], sizes[n_state:]
    return TpuFigures(
        compiled=figures, topology=topology, flops=float(cost.get("flops", 0.0)),
        state_bytes=sum(u for _, u in state), state_padding_bytes=sum(p - u for p, u in state),
        batch_padding_bytes=sum(p - u for p, u in rest),
        generated_code_bytes=int(compiled.memory_analysis().generated_code_size_in_bytes), compile_seconds=seconds)


# -- per-argument bytes from the compiled entry layout ----------------------------------------------
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([0-9,]*)\](?:\{([0-9,]*)(?::([^}]*))?\})?")


def argument_sizes(hlo_text: str) -> list[tuple[int, int]]:
    """(padded, unpadded) bytes of each entry argument, from `entry_computation_layout` (its tiles:
    'f32[4,256]{1,0:T(8,128)}' pads the two minor dimensions to 8 x 128). Their padded sum is
    memory_analysis()'s argument size."""
    header = hlo_text.split("\n", 1)[0]
    match = re.search(r"entry_computation_layout=\{\((.*?)\)->", header)
    if not match:
        return []
    return [_tiled_bytes(*m.groups()) for m in _ARRAY.finditer(match.group(1))]


def _tiled_bytes(dtype: str, dims: str, minor_to_major: str | None, layout: str | None) -> tuple[int, int]:
    itemsize = 1 if dtype == "pred" else int(re.sub(r"\D", "", dtype)) // 8
    shape = [int(d) for d in dims.split(",") if d]
    order = [int(d) for d in (minor_to_major or "").split(",") if d] or list(range(len(shape)))[::-1]
    physical = [shape[i] for i in reversed(order)] or [1]  # major to minor; a scalar is one element
    tile = re.search(r"T\(([0-9,]+)\)", layout or "")
    if tile:
        sizes = [int(t) for t in tile.group(1).split(",")]
        physical = [1] * max(0, len(sizes) - len(physical)) + physical
        for i, t in enumerate(reversed(sizes), start=1):
            physical[-i] = -(-physical[-i] // t) * t
    return math.prod(physical) * itemsize, math.prod(shape) * itemsize


def counted_flops(config: Config, shape: MeshShape) -> dict[str, float]:
    """model/counting.py's training FLOPs per chip per step (PaLM convention, with remat's extra
    forward), and the same counted as cost_analysis() counts: one layer body for a scanned stack,
    one micro-batch for an accumulation loop."""
    from meshtron.model.counting import count_params

    m, t = config.model, config.train
    counts = count_params(m)
    attention = 12.0 * m.n_heads * m.dim_per_head * m.seq_len  # per token per layer
    recompute = 4.0 / 3.0 if m.remat == "full" else 1.0
    layer = (6.0 * counts.per_layer + attention) * recompute
    outside = 6.0 * (counts.final_norm + m.d_model * m.vocab_size)
    tokens = t.batch_size * m.seq_len / shape.devices
    body_layers = 1 if m.scan_layers else m.n_layers
    body_tokens = tokens / t.grad_accum if t.grad_accum > 1 else tokens
    return {"model_flops": tokens * (outside + m.n_layers * layer),
            "model_flops_as_compiled": body_tokens * (outside + body_layers * layer)}

"""TPU slices (and GPU nodes) by the names users rent them under, and what one chip of each offers.

`parse_topology("v5p-128")` -> Topology(chips=64, libtpu_name="v5p:4x4x4", ...). Slice names
count TensorCores for v4 and v5p (two per chip, run as one "megacore" device: v5p-128 is 64
chips) and chips for v5e and v6e (v5e-16 is 16 chips). libtpu's own strings ("v5e:4x4",
"v5p:4x4x4") are accepted too, and "2xv5e-256" asks for two slices joined by the data-center
network (DCN). GPUs are named by count: "h100-8" is one node of eight, "h100-64" eight nodes.
Nothing here imports JAX: the planner's formulas use the table without libtpu.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

from meshtron.configs.errors import UserError

GIB = 2**30


@dataclass(frozen=True)
class Chip:
    """One accelerator chip of a generation: memory, peak compute and links (per chip)."""

    generation: str  # the name prefix users type: v5e
    device_kind: str  # what jax reports as device.device_kind
    hbm_bytes: int
    peak_bf16_flops: float  # dense
    ici_bytes_per_s: float  # inter-chip interconnect, bidirectional, all links of one chip
    dcn_bytes_per_s: float  # data-center network per chip (between slices)
    torus_dims: int  # 2: v5e/v6e (2D torus), 3: v4/v5p (3D torus)
    names_count_cores: bool  # True: "v5p-128" counts TensorCores (2 per chip)
    max_chips: int  # largest single slice
    libtpu_prefix: str  # "v5e" in "v5e:4x4"
    chip_config: str | None = None  # libtpu chip_config_name ("megacore": one device per chip)
    platform: str = "tpu"  # "cuda": a GPU, compiled by the CUDA plugin against a target description
    per_node: int = 0  # GPUs per node (NVLink inside, InfiniBand between); 0 for TPUs
    target: tuple = ()  # GPUs: (SMs, compute capability, clock GHz, memory B/s, L2 bytes, shared memory per SM)


# Sources (checked 2026-11-30):
# v4:  cloud.google.com/tpu/docs/v4 - 275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s, 4096-chip pod, 2 TensorCores
#      per chip. ICI: "How to Scale Your Model" (Austin et al. 2025, jax-ml.github.io/scaling-book, part 2):
#      4.5e10 B/s one way per link, 6 links -> 5.4e11 B/s bidirectional per chip. DCN: not published per chip;
#      taken as v5p's 50 Gbps (an assumption).
# v5e: cloud.google.com/tpu/docs/v5e - 197 TFLOP/s bf16, 16 GiB HBM2 (the page writes "16 GB"; the chip has
#      16 GiB), 400 GB/s bidirectional ICI per chip, 256-chip pod, 8 chips and 2 x 100 Gbps NICs per host
#      -> 25 Gbps DCN per chip.
# v5p: cloud.google.com/tpu/docs/v5p - 459 TFLOP/s bf16, 95 GiB HBM2e, 1200 GB/s bidirectional ICI per chip,
#      50 Gbps DCN per chip, 2 TensorCores per chip, largest slice 16x16x24 (6144 chips).
# v6e: cloud.google.com/tpu/docs/v6e - 918 TFLOP/s bf16, 32 GiB HBM (the page writes "32 GB"), 800 GB/s
#      bidirectional ICI per chip, 256-chip pod; DCN per chip not published: taken as v5e's 25 Gbps.
CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275e12, 5.4e11, 50e9 / 8, 3, True, 4096, "v4", "megacore"),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 197e12, 4.0e11, 25e9 / 8, 2, False, 256, "v5e"),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459e12, 1.2e12, 50e9 / 8, 3, True, 6144, "v5p", "megacore"),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, 918e12, 8.0e11, 25e9 / 8, 2, False, 256, "v6e"),
}
# GPUs (NVIDIA datasheets, checked 2026-11-30): H100 SXM5 80GB: 989 TFLOP/s dense bf16 (1,979 with
# sparsity), 3.35 TB/s HBM3, 132 SMs at 1.98 GHz boost, 50 MB L2, NVLink 4 900 GB/s per GPU; A100 SXM4 80GB:
# 312 TFLOP/s dense bf16, 2.04 TB/s HBM2e, 108 SMs at 1.41 GHz, 40 MB L2, NVLink 3 600 GB/s. Between nodes
# one InfiniBand NIC per GPU as in DGX systems: NDR 400 Gb/s (H100), HDR 200 Gb/s (A100). Shared memory per
# SM from the CUDA programming guide (228 KiB on 9.0, 164 KiB on 8.0).
CHIPS.update({
    "h100": Chip("h100", "NVIDIA H100 80GB HBM3", 80 * GIB, 989e12, 9.0e11, 400e9 / 8, 0, False, 1024, "", None,
                 "cuda", 8, (132, (9, 0), 1.98, 3.35e12, 50 * 2**20, 228 * 2**10)),
    "a100": Chip("a100", "NVIDIA A100-SXM4-80GB", 80 * GIB, 312e12, 6.0e11, 200e9 / 8, 0, False, 1024, "", None,
                 "cuda", 8, (108, (8, 0), 1.41, 2.04e12, 40 * 2**20, 164 * 2**10)),
})
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "trillium": "v6e", "v4p": "v4"}

# Slice shapes the TPU documentation lists (chips -> torus dimensions); 3D shapes beyond these
# are any full cubes (multiples of 4 on every side) up to the generation's largest slice.
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8),
              256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16),
              6144: (16, 16, 24)}


@dataclass(frozen=True)
class Topology:
    """A TPU slice (or several joined by DCN) as the planner and libtpu see it."""

    name: str  # canonical user-facing name: "v5p-128", "2xv5e-256"
    chip: Chip
    shape: tuple  # torus dimensions in chips of one slice
    slices: int = 1

    @property
    def planner_platform(self) -> str:
        """The platform the planner's formulas take XLA's choices from: tpu, or gpu for a CUDA target."""
        return "gpu" if self.chip.platform == "cuda" else "tpu"

    @property
    def chips_per_slice(self) -> int:
        """Chips in one slice (the product of the torus dimensions)."""
        return math.prod(self.shape)

    @property
    def chips(self) -> int:
        """Chips in all slices: the devices a Meshtron mesh spans (one device per chip)."""
        return self.chips_per_slice * self.slices

    @property
    def libtpu_name(self) -> str:
        """The topology string the compiler takes: libtpu's 'v5p:4x4x4', the CUDA plugin's '1x2x8' (nodes x GPUs)."""
        if self.chip.platform == "cuda":
            return f"1x{'x'.join(str(d) for d in self.shape)}"
        return f"{self.chip.libtpu_prefix}:{'x'.join(str(d) for d in self.shape)}"

    @property
    def hbm_bytes(self) -> int:
        """HBM of one chip."""
        return self.chip.hbm_bytes

    def describe(self) -> str:
        """'v5p-128: 64 chips (TPU v5, 4x4x4), 95 GiB HBM and 459 TFLOP/s bf16 per chip'."""
        where = f"{self.slices} slices of {self.chips_per_slice}" if self.slices > 1 else str(self.chips)
        return (f"{self.name}: {where} chips ({self.chip.device_kind}, {'x'.join(map(str, self.shape))}), "
                f"{self.chip.hbm_bytes / GIB:.0f} GiB HBM and {self.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s "
                f"bf16 per chip")


def slice_shapes(chip: Chip) -> dict[int, tuple]:
    """chips -> torus dimensions of every slice this planner knows for a generation (GPUs: (nodes, per node))."""
    if chip.platform == "cuda":  # part of one node, or whole nodes
        counts = [n for n in (1, 2, 4) if n < chip.per_node] + list(range(chip.per_node, chip.max_chips + 1,
                                                                           chip.per_node))
        return {n: (max(1, n // chip.per_node), min(n, chip.per_node)) for n in counts}
    table = _SHAPES_2D if chip.torus_dims == 2 else _SHAPES_3D
    shapes = {n: s for n, s in table.items() if n <= chip.max_chips}
    if chip.torus_dims == 3:  # full cubes: 4i x 4j x 4k, i <= j <= k, not listed above
        for i in range(1, 5):
            for j in range(i, 5):
                for k in range(j, 7):
                    dims = (4 * i, 4 * j, 4 * k)
                    if math.prod(dims) <= chip.max_chips:
                        shapes.setdefault(math.prod(dims), dims)
    return dict(sorted(shapes.items()))


def slice_name(chip: Chip, chips: int) -> str:
    """The name users rent `chips` chips of `chip` under: v5p with 64 chips -> 'v5p-128'."""
    return f"{chip.generation}-{chips * (2 if chip.names_count_cores else 1)}"


def known_names() -> list[str]:
    """Every single-slice name this planner accepts, smallest first per generation."""
    return [slice_name(chip, n) for chip in CHIPS.values() for n in slice_shapes(chip)]


_NAME = re.compile(r"^(?:(\d+)x)?([a-z0-9]+?)-(\d+)$")
_LIBTPU = re.compile(r"^([a-z0-9]+):(\d+(?:x\d+){1,2})$")


def parse_topology(text: str) -> Topology:
    """'v5p-128', 'v5e-16', '2xv5e-256' or libtpu's 'v5e:4x4' -> Topology; UserError (one line,
    with the closest names) for anything else."""
    name = str(text).strip().lower()
    raw = _LIBTPU.match(name)
    if raw:
        if _chip(raw.group(1), text).per_node:
            raise UserError(f"--topology {text}: name GPUs by count, like {raw.group(1)}-8 (one node of eight)")
        return _from_libtpu(text, _chip(raw.group(1), text), tuple(int(d) for d in raw.group(2).split("x")))
    match = _NAME.match(name)
    if not match:
        raise UserError(f"--topology {text!r}: not a TPU slice or GPU name; {_closest(name)}")
    slices, chip, count = int(match.group(1) or 1), _chip(match.group(2), text), int(match.group(3))
    if slices < 1:
        raise UserError(f"--topology {text}: give at least one slice")
    chips, odd = divmod(count, 2) if chip.names_count_cores else (count, 0)
    shape = slice_shapes(chip).get(chips)
    if odd or shape is None:
        unit = "TensorCores (2 per chip)" if chip.names_count_cores else "GPUs" if chip.per_node else "chips"
        raise UserError(f"--topology {text}: {chip.generation} slices are named by {unit} and "
                        f"{count} is not one of them; {_closest(name, chip)}")
    canonical = slice_name(chip, chips)
    return Topology(name=f"{slices}x{canonical}" if slices > 1 else canonical, chip=chip, shape=shape,
                    slices=slices)


def _chip(generation: str, text: str) -> Chip:
    generation = ALIASES.get(generation, generation)
    if generation not in CHIPS:
        close = difflib.get_close_matches(generation, list(CHIPS) + list(ALIASES), n=2, cutoff=0.3)
        hint = f"did you mean {' or '.join(close)}?" if close else ""
        raise UserError(f"--topology {text}: unknown accelerator {generation!r}; known: "
                        f"{', '.join(CHIPS)}" + (f"; {hint}" if hint else ""))
    return CHIPS[generation]


def _from_libtpu(text: str, chip: Chip, dims: tuple) -> Topology:
    if len(dims) != chip.torus_dims and not (chip.torus_dims == 2 and len(dims) == 3 and dims[2] == 1):
        raise UserError(f"--topology {text}: {chip.generation} is a {chip.torus_dims}D torus; write "
                        f"{chip.generation}:{'x'.join(['4'] * chip.torus_dims)} or a name like "
                        f"{slice_name(chip, 16)}")
    dims = dims[:chip.torus_dims]
    if math.prod(dims) > chip.max_chips:
        raise UserError(f"--topology {text}: {math.prod(dims)} chips is more than the largest "
                        f"{chip.generation} slice ({chip.max_chips} chips)")
    return Topology(name=slice_name(chip, math.prod(dims)), chip=chip, shape=dims)


def _closest(name: str, chip: Chip | None = None) -> str:
    """'closest: v5p-128, v5p-256' from the known names (of one generation when it is known)."""
    names = [slice_name(chip, n) for n in slice_shapes(chip)] if chip else known_names()
    if chip:  # the nearest sizes above and below, by count
        count = int(re.sub(r"\D", "", name.split("-")[-1]) or 0)
        names.sort(key=lambda n: abs(math.log2(max(int(n.split("-")[1]), 1)) - math.log2(max(count, 1))))
        close = names[:2]
    else:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    return f"closest: {', '.join(close)}" if close else f"known: {', '.join(names[:6])}, ..."

"""Communication read from a compiled program: the truth the planner's formulas must match.

Parses `compiled.as_text()` (optimised HLO): every all-reduce, all-gather, reduce-scatter,
all-to-all and collective-permute, the mesh axes its replica groups span, and how many
times it runs (collectives inside a `while` loop, such as the scan over layers, run once
per iteration).

Volumes are ring-algorithm elements sent per device: all-reduce of n elements 2n(N-1)/N,
all-gather to n elements n(N-1)/N, reduce-scatter from n elements n(N-1)/N, all-to-all
n(N-1)/N, collective-permute n.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?(\S+)\s*=\s*(.*?)\s+(" + "|".join(KINDS) + r")(?:-start)?\((.*)$")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")  # "%name (params) -> type {"
_SHAPE = re.compile(r"\b(pred|s8|s16|s32|s64|u8|u16|u32|u64|f16|bf16|f32|f64|c64|c128)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


@dataclass(frozen=True)
class Collective:
    """One collective instruction as compiled."""

    kind: str
    elements: int  # result elements (all operands of a tuple-shaped op)
    bytes: int
    group_size: int
    axes: tuple  # mesh axes its groups span
    count: int  # executions per step (loop trip counts multiplied in)
    name: str

    @property
    def volume_elements(self) -> float:
        """Elements each device sends per execution (ring algorithms)."""
        n = self.group_size
        if n <= 1:
            return 0.0
        if self.kind == "all-reduce":
            return 2.0 * self.elements * (n - 1) / n
        if self.kind == "reduce-scatter":
            return float(self.elements * (n - 1))  # result is 1/n of the input
        if self.kind == "collective-permute":
            return float(self.elements)
        return self.elements * (n - 1) / n


def _parse_groups(text: str, n_devices: int) -> list[list[int]]:
    iota = re.search(r"replica_groups=\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", text)
    if iota:
        dims = [int(x) for x in iota.group(1).split(",")]
        ids = np.arange(int(np.prod([int(x) for x in iota.group(2).split(",")])))
        ids = ids.reshape([int(x) for x in iota.group(2).split(",")])
        if iota.group(3):
            ids = ids.transpose([int(x) for x in iota.group(3).split(",")])
        return ids.reshape(dims).reshape(dims[0], -1).tolist()
    explicit = re.search(r"replica_groups=\{(\{[0-9,{} ]*\})\}", text)
    if explicit:
        return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([0-9,]*)\}", explicit.group(1))]
    pairs = re.search(r"source_target_pairs=\{([0-9,{} ]*)\}", text)
    if pairs:
        return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)\}", pairs.group(1))]
    return [list(range(n_devices))]


def _axes_of(groups: list[list[int]], mesh_shape: dict[str, int]) -> tuple:
    names, dims = list(mesh_shape), list(mesh_shape.values())
    varying = set()
    for group in groups:
        coords = np.array(np.unravel_index(np.asarray(group), dims)).T
        for i, name in enumerate(names):
            if len(set(coords[:, i])) > 1:
                varying.add(name)
    return tuple(n for n in names if n in varying)


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    """({computation name: its instruction lines}, the ENTRY computation's name)."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        m = _COMP.match(line)
        if m:
            current = m.group(1)
            comps[current] = []
            if line.lstrip().startswith("ENTRY"):
                entry = current
            continue
        if current is not None:
            if line.strip() == "}":
                current = None
            else:
                comps[current].append(line)
    return comps, entry


def _runs_per_step(comps: dict[str, list[str]], entry: str | None) -> dict[str, int]:
    """How many times each computation runs per call of the entry (loop bodies times their trip counts)."""
    calls: dict[str, list[tuple[str, int]]] = defaultdict(list)  # computation -> (callee, multiplier)
    for name, lines in comps.items():
        for line in lines:
            trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
            body = re.search(r"\bbody=%?([\w.\-]+)", line)
            if body:
                calls[name].append((body.group(1), int(trips.group(1)) if trips else 1))
            for key in ("calls", "to_apply", "branch_computations", "condition"):
                for callee in re.findall(key + r"=\{?%?([\w.\-]+(?:, %?[\w.\-]+)*)\}?", line):
                    for c in callee.split(","):
                        calls[name].append((c.strip().lstrip("%"), 1))

    multiplier: dict[str, int] = defaultdict(int)

    def visit(name: str, times: int, depth: int = 0):
        if depth > 64 or name not in comps:
            return
        multiplier[name] += times
        for callee, trips in calls.get(name, ()):
            visit(callee, times * trips, depth + 1)

    visit(entry or next(iter(comps)), 1)
    return multiplier


def _elements(dims: str) -> int:
    return int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1


def shape_bytes(hlo_type: str) -> int:
    """Bytes of every array in an HLO type: one array, or a tuple of them ("(f32[8,64]{1,0}, s32[])")."""
    return sum(_elements(dims) * _BYTES[t] for t, dims in _SHAPE.findall(hlo_type))


def collectives(hlo_text: str, mesh_shape: dict[str, int]) -> list[Collective]:
    """Every collective in an optimised HLO module, with how often it runs per step."""
    n_devices = int(np.prod(list(mesh_shape.values())))
    comps, entry = _computations(hlo_text)
    multiplier = _runs_per_step(comps, entry)
    found = []
    for name, lines in comps.items():
        times = multiplier.get(name, 0)
        if not times:
            continue
        for line in lines:
            m = _INSTR.match(line)
            if not m or "-done(" in line:
                continue
            result_type, kind = m.group(2), m.group(3)
            shapes = _SHAPE.findall(result_type)
            if kind == "all-reduce" or kind == "collective-permute" or "-start" in line:
                # async starts return (operand, result) tuples: count the result half only
                if "-start(" in line and len(shapes) >= 2:
                    shapes = shapes[len(shapes) // 2:]
            elements = sum(_elements(dims) for _, dims in shapes)
            nbytes = sum(_elements(dims) * _BYTES[t] for t, dims in shapes)
            groups = _parse_groups(line, n_devices)
            found.append(Collective(kind=kind, elements=elements, bytes=nbytes, group_size=len(groups[0]),
                                    axes=_axes_of(groups, mesh_shape), count=times, name=m.group(1)))
    return found


def comm_by_axis(found: list[Collective], min_elements: int = 0) -> dict:
    """{axis: {kind: elements sent per device per step}} ; collectives over several axes are keyed 'a+b'."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for c in found:
        if c.elements < min_elements or not c.axes:
            continue
        out["+".join(c.axes)][c.kind] += c.volume_elements * c.count
    return {axis: dict(kinds) for axis, kinds in out.items()}

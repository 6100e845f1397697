"""Pipeline schedules as tables: what every stage does at every tick.

A tick is one slot of work on every stage: a forward (F) of one micro-batch through one
stage's layers, its backward (B), or nothing (a bubble). All stages run in lock step (one
SPMD program), and at the end of each tick every stage sends one buffer to a neighbour with
one static `ppermute`: an activation to the next stage after an F, a gradient to the
previous stage after a B.

With P stages, M micro-batches and v virtual stages (model chunks) per device:

- gpipe: all forwards, then all backwards. 2(M+P-1) ticks; every stage keeps the
  activations of all M micro-batches until their backward.
- 1f1b: stage s runs F of micro-batch i at tick 2i+s and its B at tick 2i+2P-1-s, so F
  and B alternate and every stage keeps at most P-s micro-batches in flight (P, not M).
  The tick parity decides the direction: at even ticks stages (0,1), (2,3)... swap, at
  odd ticks (1,2), (3,4)...; a stage that runs F sends up exactly when its partner runs
  B and sends down. Still 2(M+P-1) ticks.
- interleaved (circular GPipe): device s holds virtual stages s, P+s, ..., (v-1)P+s, and
  activations go around the ring v times. 2(vM+P-1) ticks of 1/v the work each.

The bubble (idle fraction of every stage) is (P-1)/(M+P-1), and (P-1)/(vM+P-1) interleaved.
The table also assigns every buffer slot (stashed residuals, received activations and
gradients), so the executor's memory is exactly what the table needs: see `Schedule.slots`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEDULES = ("gpipe", "1f1b", "interleaved")
IDLE, FWD, BWD = 0, 1, 2
# columns of Schedule.table (ticks, stages, FIELDS)
FIELDS = ("op", "mb", "chunk", "stash", "inbox", "first", "last", "dy", "recv_act", "recv_grad")
F = {name: i for i, name in enumerate(FIELDS)}


@dataclass(frozen=True)
class Schedule:
    """One schedule's tick table and the static permutations that move buffers between ticks."""

    kind: str
    stages: int  # P
    microbatches: int  # M
    virtual: int  # v: model chunks per device
    table: np.ndarray  # (ticks, P, len(FIELDS)) int32; a slot index equal to the buffer size is scratch
    perms: tuple  # distinct permutations, each a tuple of (source stage, destination stage)
    perm_of_tick: np.ndarray  # (ticks,) index into perms
    slots: dict  # buffer -> slots: 'stash' (residuals), 'act' (received activations), 'grad' (gradients)

    @property
    def ticks(self) -> int:
        """Length of the schedule in ticks."""
        return self.table.shape[0]

    def bubble_fraction(self) -> float:
        """Idle ticks over all ticks, counted from the table (the same on every stage)."""
        busy = (self.table[:, :, F["op"]] != IDLE).sum(axis=0)
        fractions = 1.0 - busy / self.ticks
        assert np.allclose(fractions, fractions[0]), fractions
        return float(fractions[0])

    def sends(self) -> int:
        """Buffers moved between stages per step: one per (source, destination) pair per tick."""
        return int(sum(len(self.perms[p]) for p in self.perm_of_tick))

    def in_flight(self) -> int:
        """Most micro-batches whose activations one stage keeps at once (stashed for their backward)."""
        return self.slots["stash"]

    def render(self) -> str:
        """The tick table as text: one row per stage, F3 / B3 / . per tick (chunk as a suffix when v > 1)."""
        rows = []
        for s in range(self.stages):
            cells = []
            for t in range(self.ticks):
                op, mb, chunk = (self.table[t, s, F[k]] for k in ("op", "mb", "chunk"))
                cell = "." if op == IDLE else ("F" if op == FWD else "B") + str(mb)
                cells.append(cell + (chr(ord("a") + chunk) if op != IDLE and self.virtual > 1 else ""))
            width = max(len(c) for c in cells)
            rows.append(f"stage {s}: " + " ".join(c.rjust(width) for c in cells))
        return "\n".join(rows)


def bubble_formula(kind: str, stages: int, microbatches: int, virtual: int = 1) -> float:
    """The published bubble fraction: (P-1)/(M+P-1); interleaved (P-1)/(vM+P-1)."""
    v = virtual if kind == "interleaved" else 1
    return (stages - 1) / (v * microbatches + stages - 1)


def build_schedule(kind: str, stages: int, microbatches: int, virtual: int = 1) -> Schedule:
    """The tick table of `kind` for P stages, M micro-batches and v virtual stages per device."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {kind!r}; one of {SCHEDULES}")
    v = virtual if kind == "interleaved" else 1
    if kind == "1f1b":
        times, perms, perm_of_tick = _one_f_one_b(stages, microbatches)
    else:
        times, perms, perm_of_tick = _circular(stages, microbatches, v)
    return _assemble(kind, stages, microbatches, v, times, perms, perm_of_tick)


def _shift(stages: int, step: int, ring: bool) -> tuple:
    pairs = [(s, s + step) for s in range(stages) if 0 <= s + step < stages]
    if ring:  # the wrap-around link (a device to itself when P = 1)
        pairs.append((stages - 1, 0) if step > 0 else (0, stages - 1))
    return tuple(pairs)


def _circular(P: int, M: int, v: int):
    """GPipe (v = 1) and its circular form: item j = c*M + i (chunk c of micro-batch i) runs F on
    device s at tick j+s, then B in reverse order: tick T_F + (vM-1-j) + (P-1-s)."""
    if v > 1 and M < P:
        raise ValueError(f"interleaved schedules need at least as many micro-batches as stages ({M} < {P})")
    forward_ticks = v * M + P - 1
    times = {}
    for j in range(v * M):
        c, i = divmod(j, M)
        for s in range(P):
            k = c * P + s
            times[("F", k, i)] = j + s
            times[("B", k, i)] = forward_ticks + (v * M - 1 - j) + (P - 1 - s)
    perms = (_shift(P, 1, v > 1), _shift(P, -1, v > 1))
    return times, perms, np.array([0] * forward_ticks + [1] * forward_ticks)


def _one_f_one_b(P: int, M: int):
    """1F1B with F of micro-batch i on stage s at tick 2i+s and B at 2i+2P-1-s; neighbours swap buffers."""
    times = {}
    for i in range(M):
        for s in range(P):
            times[("F", s, i)] = 2 * i + s
            times[("B", s, i)] = 2 * i + 2 * P - 1 - s
    swaps = tuple(tuple(p for s in range(parity, P - 1, 2) for p in ((s, s + 1), (s + 1, s))) for parity in (0, 1))
    ticks = 2 * (M + P - 1)
    return times, swaps, np.arange(ticks) % 2


def _assemble(kind, P, M, v, times, perms, perm_of_tick) -> Schedule:
    """Fill the table from F/B times: check one op per stage per tick and that every buffer a stage
    needs was sent along that tick's permutation, then give every buffer a slot."""
    V, ticks = v * P, len(perm_of_tick)
    table = np.full((ticks, P, len(FIELDS)), -1, np.int32)
    table[:, :, [F["op"], F["mb"], F["chunk"], F["first"], F["last"]]] = 0
    uses = []  # (buffer, device, written at tick, read at tick, field naming the slot when written, when read)
    for (op, k, i), t in times.items():
        s = k % P
        assert table[t, s, F["op"]] == IDLE, f"two ops on stage {s} at tick {t}"
        table[t, s, [F["op"], F["mb"], F["chunk"], F["first"], F["last"]]] = (
            FWD if op == "F" else BWD, i, k // P, k == 0, k == V - 1)
        if op == "F":
            uses.append(("stash", s, t, times[("B", k, i)], "stash", "stash"))
            if k == V - 1:  # the loss gradient waits for this stage's backward, like a received one
                uses.append(("grad", s, t, times[("B", k, i)], "dy", "inbox"))
            else:
                uses.append(("act", (k + 1) % P, t, times[("F", k + 1, i)], "recv_act", "inbox"))
                assert (s, (k + 1) % P) in perms[perm_of_tick[t]], f"F{i} of stage {k} cannot reach the next stage"
        elif k > 0:
            uses.append(("grad", (k - 1) % P, t, times[("B", k - 1, i)], "recv_grad", "inbox"))
            assert (s, (k - 1) % P) in perms[perm_of_tick[t]], f"B{i} of stage {k} cannot reach the previous stage"
    slots = {"stash": 1, "act": 1, "grad": 1}
    for (name, device, start, end, write_field, read_field), slot in zip(uses, _allocate(uses)):
        slots[name] = max(slots[name], slot + 1)
        table[start, device, F[write_field]] = slot
        table[end, device, F[read_field]] = slot
    for field, buffer in (("stash", "stash"), ("dy", "grad"), ("recv_act", "act"), ("recv_grad", "grad")):
        table[:, :, F[field]] = np.where(table[:, :, F[field]] < 0, slots[buffer], table[:, :, F[field]])
    table[:, :, F["inbox"]] = np.maximum(table[:, :, F["inbox"]], 0)  # read only by an op that uses it
    return Schedule(kind, P, M, v, table, tuple(perms), np.asarray(perm_of_tick), slots)


def _allocate(uses) -> list[int]:
    """A slot for every use, by interval colouring per (buffer, device): a slot read at tick r may be
    written again at tick r (reads come first within a tick)."""
    assert all(start < end for _, _, start, end, *_ in uses), "a buffer is read before it is written"
    free_from: dict = {}
    slots = [0] * len(uses)
    for index in sorted(range(len(uses)), key=lambda u: (uses[u][2], uses[u][3])):
        name, device, start, end = uses[index][:4]
        ends = free_from.setdefault((name, device), [])
        slot = next((j for j, until in enumerate(ends) if until <= start), len(ends))
        if slot == len(ends):
            ends.append(end)
        ends[slot] = end
        slots[index] = slot
    return slots

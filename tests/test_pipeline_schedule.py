"""Pipeline schedule tables: bubbles equal the published formulas, 1F1B bounds the activations in flight,
every backward follows its forward, every buffer travels along its tick's permutation."""

import numpy as np
import pytest

from meshtron.parallel.pipeline.schedule import BWD, F, FWD, bubble_formula, build_schedule

GRID = [(kind, p, m, v) for kind, v in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 4))
        for p in (1, 2, 3, 4, 8) for m in (p, 2 * p + 1, 16) if kind != "interleaved" or m >= p]


@pytest.mark.parametrize("kind,stages,micro,virtual", GRID)
def test_bubble_counted_from_the_table_equals_the_formula(kind, stages, micro, virtual):
    schedule = build_schedule(kind, stages, micro, virtual)
    assert schedule.bubble_fraction() == pytest.approx(bubble_formula(kind, stages, micro, virtual), abs=1e-12)


@pytest.mark.parametrize("kind,stages,micro,virtual", GRID)
def test_every_micro_batch_runs_forward_then_backward_once_on_every_virtual_stage(kind, stages, micro, virtual):
    s = build_schedule(kind, stages, micro, virtual)
    op, mb, chunk = (s.table[:, :, F[k]] for k in ("op", "mb", "chunk"))
    for stage in range(stages):
        for c in range(s.virtual):
            for i in range(micro):
                f = np.flatnonzero((op[:, stage] == FWD) & (mb[:, stage] == i) & (chunk[:, stage] == c))
                b = np.flatnonzero((op[:, stage] == BWD) & (mb[:, stage] == i) & (chunk[:, stage] == c))
                assert len(f) == 1 and len(b) == 1 and f[0] < b[0]


@pytest.mark.parametrize("stages,micro", [(2, 8), (4, 16), (4, 8), (8, 32)])
def test_1f1b_keeps_at_most_p_micro_batches_in_flight_and_gpipe_keeps_all(stages, micro):
    one_f_one_b, gpipe = build_schedule("1f1b", stages, micro), build_schedule("gpipe", stages, micro)
    assert one_f_one_b.in_flight() == stages
    assert gpipe.in_flight() == micro
    # stage s of 1F1B: P - s in flight, counted directly from the table
    op = one_f_one_b.table[:, :, F["op"]]
    peak = [(np.cumsum(op[:, s] == FWD) - np.cumsum(op[:, s] == BWD)).max() for s in range(stages)]
    assert peak == [stages - s for s in range(stages)]


@pytest.mark.parametrize("kind,virtual", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2)])
def test_point_to_point_sends_per_step(kind, virtual):
    # one buffer per link per tick: gpipe and 1f1b 2(P-1)(M+P-1); the interleaved ring P per tick
    P, M = 4, 8
    s = build_schedule(kind, P, M, virtual)
    expected = 2 * P * (virtual * M + P - 1) if kind == "interleaved" else 2 * (P - 1) * (M + P - 1)
    assert s.sends() == expected


def test_tick_table_renders_1f1b():
    text = build_schedule("1f1b", 2, 3).render()
    assert text.splitlines() == ["stage 0: F0  . F1 B0 F2 B1  . B2",
                                 "stage 1:  . F0 B0 F1 B1 F2 B2  ."]


def test_interleaved_needs_as_many_micro_batches_as_stages():
    with pytest.raises(ValueError, match="micro-batches"):
        build_schedule("interleaved", 4, 3, 2)

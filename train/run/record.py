"""A resumed run's record is cut back to the restored step, so every step appears once.

A run killed after its last checkpoint has logged steps that the resumed run will log again. On
resume, lines of metrics.jsonl past the restored step (and a line cut short by the crash) move to
metrics.cut.jsonl, and TensorBoard event files are rewritten without the events past that step, their
originals kept in tensorboard.cut/. Nothing is deleted: the cut data stays in the run directory.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

METRICS_CUT = "metrics.cut.jsonl"
EVENTS_CUT = "tensorboard.cut"


def cut_metrics(run_dir: Path, step: int) -> int:
    """Move the lines of RUN_DIR/metrics.jsonl past `step` (or unreadable) to metrics.cut.jsonl; how many moved."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    keep, cut = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            past = not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > step
        except json.JSONDecodeError:
            past = True  # a line cut short by the crash
        (cut if past else keep).append(line if line.endswith("\n") else line + "\n")
    if not cut:
        return 0
    with open(Path(run_dir) / METRICS_CUT, "a", encoding="utf-8") as side:
        side.write(json.dumps({"cut_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_from_step": step}) + "\n")
        side.writelines(cut)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    tmp.replace(path)
    return len(cut)


def cut_events(run_dir: Path, step: int) -> int:
    """Rewrite RUN_DIR/tensorboard's event files without the events past `step`; the originals go to
    tensorboard.cut/. How many events were cut."""
    folder = Path(run_dir) / "tensorboard"
    files = sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []
    plans = []
    for path in files:
        records = list(read_records(path))
        kept = [r for r in records if _event_step(r) <= step]
        if len(kept) != len(records):
            plans.append((path, kept, len(records) - len(kept)))
    if not plans:
        return 0
    side = Path(run_dir) / EVENTS_CUT / f"resumed-at-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    side.mkdir(parents=True, exist_ok=True)
    for path, kept, _ in plans:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            for data in kept:
                f.write(_framed(data))
        path.rename(side / path.name)
        tmp.rename(path)
    return sum(n for _, _, n in plans)


def read_records(path: Path):
    """The serialized records of a TFRecord file (TensorBoard's event format); stops at a torn tail."""
    data = Path(path).read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        end = offset + 12 + length + 4
        if end > len(data):
            return
        yield data[offset + 12:offset + 12 + length]
        offset = end


def _framed(data: bytes) -> bytes:
    from tensorboardX.crc32c import crc32c

    def masked(b: bytes) -> int:
        crc = crc32c(b)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked(header)) + data + struct.pack("<I", masked(data))


def _event_step(record: bytes) -> int:
    from tensorboardX.proto.event_pb2 import Event

    return Event.FromString(record).step

"""Where a run's numbers go: RUN_DIR/metrics.jsonl (one JSON object per line) and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    """Appends metric lines to metrics.jsonl and mirrors scalars to TensorBoard event files.

    Only the main process writes (`enabled=False` elsewhere), so multi-host runs log once.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None):
        """resume_step: the step the run continues from; what the record holds past it is cut (train/run/record.py)."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        self.cut_lines = 0
        if enabled and resume_step is not None:
            from meshtron.train.run.record import cut_events, cut_metrics

            self.cut_lines = cut_metrics(run_dir, resume_step)
            cut_events(run_dir, resume_step)
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), flush_secs=10)

    def write(self, record: dict) -> None:
        """One line of metrics; numbers also go to TensorBoard under their key."""
        if not self.enabled:
            return
        clean = {k: _plain(v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        step = clean.get("step")
        if self._tb is not None and isinstance(step, int):
            for key, value in clean.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush TensorBoard files."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(value):
    """JSON-safe: numpy scalars to Python, NaN/Inf to strings JSON can hold."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(run_dir: Path) -> list[dict]:
    """All lines of RUN_DIR/metrics.jsonl (an empty list if there are none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    return out

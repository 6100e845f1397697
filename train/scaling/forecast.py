"""During a run: forecast the final loss at 25%, 50% and 75% of the steps from the run's own loss
curve, warn once about overfitting, and compare forecasts with the outcome at the end.

The train loop feeds it every evaluation (`observe`) and, at each check, the training losses of
every step so far; `at_step` returns the lines to print and the records to write to metrics.jsonl
(event "forecast" / "overfitting"). Forecasts fit evaluation losses once there are 4 after warm-up,
else the training losses (and then forecast the final training loss, and say so).
"""

from __future__ import annotations

from meshtron.configs.errors import UserError
from meshtron.train.scaling.curve import curve_points, fit_curve, overfitting_start

FRACTIONS = (0.25, 0.5, 0.75)


class Forecaster:
    """Forecasts of the final loss at fixed fractions of a run of `total_steps` steps."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, fractions=FRACTIONS, bootstrap: int = 100):
        self.total = total_steps
        self.warmup = warmup_steps
        self.marks = sorted({max(1, round(f * total_steps)): f for f in fractions}.items())
        self.bootstrap = bootstrap
        self.records: list[dict] = []
        self.forecasts: list[dict] = []
        self.overfit_step: int | None = None
        self.trains: list[tuple] = []
        self._seen = 0

    def observe(self, step: int, eval_loss: float) -> None:
        """Record an evaluation loss at `step`."""
        self.records.append({"step": step, "eval_loss": float(eval_loss)})

    def at_step(self, step: int, train_losses=()) -> tuple[list[str], list[dict]]:
        """(console lines, metrics records) due at `step`: forecasts whose mark was reached, overfitting once.
        train_losses: (step, loss) of the training steps so far."""
        due = bool(self.marks) and self.marks[0][0] <= step < self.total
        new_eval = len(self.records) != self._seen
        if not (due or new_eval):
            return [], []  # nothing to do on most steps
        self._seen = len(self.records)
        self.trains = [(s, float(v)) for s, v in train_losses]
        lines, records = [], []
        while self.marks and step >= self.marks[0][0] and step < self.total:
            _, fraction = self.marks.pop(0)
            record = self._forecast(step, fraction)
            records.append(record)
            lines.append(self._line(record))
        if self.overfit_step is None:
            evals = [(r["step"], r["eval_loss"]) for r in self.records]
            start = overfitting_start(evals, self.trains)
            if start is not None:
                self.overfit_step = start
                lines.append(f"warning: evaluation loss has risen since step {start} while training loss fell: "
                             "overfitting (more data, fewer epochs or a smaller model)")
                records.append({"step": step, "event": "overfitting", "overfitting_since": start})
        return lines, records

    def _forecast(self, step: int, fraction: float) -> dict:
        records = self.records + [{"step": s, "loss": v} for s, v in self.trains]
        steps, losses, kind = curve_points(records, after_step=self.warmup)
        record = {"step": step, "event": "forecast", "fraction": fraction, "forecast_of": f"final {kind} loss"}
        try:
            fit = fit_curve(steps, losses, self.total, bootstrap=self.bootstrap)
        except UserError as e:
            return record | {"forecast": None, "reason": str(e)}
        record |= {"forecast": fit.forecast, "forecast_low": fit.interval[0], "forecast_high": fit.interval[1],
                   "curve_E": fit.E, "curve_A": fit.A, "curve_a": fit.a, "points": fit.points}
        self.forecasts.append(record)
        return record

    @staticmethod
    def _line(r: dict) -> str:
        head = f"forecast at {r['fraction']:.0%} of the steps (step {r['step']})"
        if r.get("forecast") is None:
            return f"{head}: none yet ({r['reason']})"
        return (f"{head}: {r['forecast_of']} {r['forecast']:.3f} (90%: {r['forecast_low']:.3f} .. "
                f"{r['forecast_high']:.3f}), from L(t) = {r['curve_E']:.3f} + {r['curve_A']:.3g} t^-{r['curve_a']:.3f} "
                f"on {r['points']} points")

    def compare(self, final_train: float | None, final_eval: float | None) -> list[str]:
        """End-of-run lines: each forecast against the loss it forecast."""
        lines = []
        for r in self.forecasts:
            actual = final_eval if r["forecast_of"].startswith("final evaluation") else final_train
            if actual is None:
                continue
            inside = "inside" if r["forecast_low"] <= actual <= r["forecast_high"] else "outside"
            lines.append(f"  forecast at {r['fraction']:.0%}: {r['forecast']:.4f} vs {r['forecast_of']} {actual:.4f} "
                         f"({100 * (r['forecast'] / actual - 1):+.1f}%, {inside} its interval)")
        return lines

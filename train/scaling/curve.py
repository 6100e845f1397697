"""Know mid-run where the loss will land: fit the run's own loss curve L(t) = E + A t^(-a).

Fitting by variable projection: for a fixed exponent a the model is linear in (E, A), solved by
least squares; the one remaining parameter is found by a bounded scalar search over log a.
The 90% interval of the forecast L(T) comes from a residual bootstrap (refit on the fitted curve
plus resampled residuals). Points during learning-rate warm-up are left out by the caller: the
power law describes the decay after it.

What the forecast cannot see: a cosine or linear decay of the learning rate makes the last part of
a run fall faster than the power law fitted on its first half, so early forecasts lean high.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from meshtron.configs.errors import UserError

MIN_POINTS = 4
EXPONENT_RANGE = (0.01, 4.0)


@dataclass(frozen=True)
class CurveFit:
    """L(t) = E + A t^(-a) fitted to (step, loss) points, and the forecast at the final step."""

    E: float
    A: float
    a: float
    points: int
    rmse: float
    target_step: int
    forecast: float
    interval: tuple  # (5th, 95th percentile) of the forecast over bootstrap refits

    def loss(self, t):
        """The fitted curve at step(s) t."""
        return self.E + self.A * np.asarray(t, dtype=float) ** (-self.a)

    def as_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return {"E": self.E, "A": self.A, "a": self.a, "points": self.points, "rmse": self.rmse,
                "target_step": self.target_step, "forecast": self.forecast, "interval": list(self.interval)}


def _linear(t: np.ndarray, y: np.ndarray, a: float) -> tuple[float, float, float]:
    """(E, A, sum of squared errors) of the least-squares line y = E + A t^-a (A kept >= 0)."""
    x = t ** (-a)
    xm, ym = x.mean(), y.mean()
    var = ((x - xm) ** 2).sum()
    A = max(0.0, float(((x - xm) * (y - ym)).sum() / var)) if var > 0 else 0.0
    E = float(ym - A * xm)
    if E < 0:  # a loss floor below zero: fit with the floor at its bound, E = 0
        E, A = 0.0, max(0.0, float((x * y).sum() / (x * x).sum()))
    return E, A, float(((y - E - A * x) ** 2).sum())


def _fit(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(E, A, a) minimising squared error; a from a coarse grid then a bounded search in log a."""
    grid = np.geomspace(*EXPONENT_RANGE, 40)
    best = grid[int(np.argmin([_linear(t, y, a)[2] for a in grid]))]
    low, high = np.log(max(EXPONENT_RANGE[0], best / 1.3)), np.log(min(EXPONENT_RANGE[1], best * 1.3))
    result = minimize_scalar(lambda log_a: _linear(t, y, np.exp(log_a))[2], bounds=(low, high), method="bounded",
                             options={"xatol": 1e-4})
    a = float(np.exp(result.x)) if result.fun <= _linear(t, y, best)[2] else float(best)
    E, A, _ = _linear(t, y, a)
    return E, A, a


def fit_curve(steps, losses, target_step: int, bootstrap: int = 200, seed: int = 0) -> CurveFit:
    """Fit L(t) = E + A t^(-a) to (steps, losses) and forecast the loss at `target_step`, with a 90% interval."""
    t = np.asarray(steps, dtype=float)
    y = np.asarray(losses, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y) & (t > 0)
    t, y = t[keep], y[keep]
    if len(t) < MIN_POINTS:
        raise UserError(f"loss-curve fit: {len(t)} usable points; need at least {MIN_POINTS} "
                        "(evaluate more often with train.eval_every)")
    if target_step <= 0:
        raise UserError(f"loss-curve fit: target step {target_step} must be positive")
    E, A, a = _fit(t, y)
    fitted = E + A * t ** (-a)
    residuals = y - fitted
    forecast = float(E + A * target_step ** (-a))
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        e, b, c = _fit(t, fitted + rng.choice(residuals, size=len(t), replace=True))
        samples.append(e + b * target_step ** (-c))
    low, high = (np.percentile(samples, [5, 95]) if samples else (forecast, forecast))
    return CurveFit(E=E, A=A, a=a, points=len(t), rmse=float(np.sqrt(np.mean(residuals**2))),
                    target_step=int(target_step), forecast=forecast,
                    interval=(float(min(low, forecast)), float(max(high, forecast))))


def curve_points(records: list[dict], after_step: int = 0) -> tuple[list, list, str]:
    """(steps, losses, kind) to fit from metrics records: evaluation losses when there are enough after
    `after_step` (the warm-up), else the training losses."""
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))
             and isinstance(r.get("step"), int) and r["step"] > after_step]
    if len(evals) >= MIN_POINTS:
        return [s for s, _ in evals], [v for _, v in evals], "evaluation"
    trains = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))
              and isinstance(r.get("step"), int) and r["step"] > after_step and not r.get("bad_step")]
    return [s for s, _ in trains], [v for _, v in trains], "training"


def overfitting_start(evals: list[tuple], trains: list[tuple], patience: int = 3) -> int | None:
    """Step where evaluation loss began rising for `patience` evaluations in a row while training loss
    fell over the same steps; None if it has not. evals, trains: (step, loss) in step order."""
    if len(evals) <= patience:
        return None
    recent = evals[-(patience + 1):]
    if not all(b[1] > a[1] for a, b in zip(recent, recent[1:])):
        return None
    first, last = recent[0][0], recent[-1][0]
    window = [loss for step, loss in trains if first <= step <= last]
    half = len(window) // 2
    if half < 1 or not sum(window[-half:]) < sum(window[:half]):  # halves' means: per-step losses are noisy
        return None
    return int(first)

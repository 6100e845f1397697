"""Fit scaling laws to your runs: Hoffmann et al.'s Approach 3 (parametric) and Approach 2 (IsoFLOP).

Approach 3 minimises, over theta = (a, b, e, alpha, beta),
    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i ),  delta = 1e-3,
with L-BFGS from a grid of 4,500 starts, and reports E = exp(e), A = exp(a), B = exp(b).
What we do to keep it fast: the objective is evaluated at all 4,500 grid points at once with
numpy, and L-BFGS-B (analytic gradient) runs from the best `starts` of them: default 200, about
1 s for 100 runs; starts="all" runs every one, as the paper did, 15-30 s for 100 runs. On
synthetic data both reach the same minimum (the test checks the recovered constants).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from meshtron.configs.errors import UserError
from meshtron.train.scaling.laws import Law

HUBER_DELTA = 1e-3
# Residuals inside the Huber delta give gradients near 1e-6: scipy's default tolerances stop L-BFGS-B short of
# the minimum there (exact synthetic runs ended at alpha 0.37 for a true 0.35), so they are tightened.
LBFGS_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 2000}
# Hoffmann et al. App. D.2: alpha, beta in {0, .5, ..., 2}, e in {-1, -.5, ..., 1}, a, b in {0, 5, ..., 25}.
_a, _b, _e, _alpha, _beta = np.meshgrid(np.arange(0, 26, 5.0), np.arange(0, 26, 5.0), np.arange(-1, 1.01, 0.5),
                                        np.arange(0, 2.01, 0.5), np.arange(0, 2.01, 0.5), indexing="ij")
GRID = np.stack([_a, _b, _e, _alpha, _beta], axis=-1).reshape(-1, 5)  # (4500, 5): a, b, e, alpha, beta


@dataclass(frozen=True)
class Runs:
    """Training runs as arrays: parameters N, tokens D, final loss (nats), and where each came from."""

    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    sources: tuple = ()

    @property
    def C(self) -> np.ndarray:
        """Training FLOPs of each run, 6ND."""
        return 6.0 * self.N * self.D

    def take(self, index: np.ndarray) -> "Runs":
        """The runs at `index` (a bootstrap resample)."""
        sources = tuple(self.sources[i] for i in index) if self.sources else ()
        return Runs(self.N[index], self.D[index], self.loss[index], sources)


def make_runs(N, D, loss, sources=()) -> Runs:
    """Runs from sequences, checked: same lengths, finite positive values."""
    N, D, loss = (np.asarray(v, dtype=float).ravel() for v in (N, D, loss))
    if not len(N) == len(D) == len(loss):
        raise UserError(f"runs: N, D and loss have different lengths ({len(N)}, {len(D)}, {len(loss)})")
    if len(N) == 0:
        raise UserError("runs: no runs given; give a JSONL of {\"N\":..., \"D\":..., \"loss\":...} or run directories")
    for name, values in (("N", N), ("D", D), ("loss", loss)):
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            i = int(np.argmax(bad))
            where = f" ({sources[i]})" if sources else ""
            raise UserError(f"run {i + 1}{where}: {name}={values[i]!r} must be a positive number")
    return Runs(N, D, loss, tuple(sources))


def huber_objective(theta: np.ndarray, log_N: np.ndarray, log_D: np.ndarray, log_loss: np.ndarray):
    """Approach 3's objective and its gradient for theta = (a, b, e, alpha, beta) of shape (5,) or (K, 5)."""
    theta = np.asarray(theta, dtype=float)
    a, b, e, alpha, beta = (theta[..., i, None] for i in range(5))  # each (..., 1), broadcast over runs
    terms = np.stack(np.broadcast_arrays(a - alpha * log_N, b - beta * log_D, e))  # (3, ..., runs)
    # LSE by hand (scipy's logsumexp costs more than the rest of this function on 100 runs).
    top = terms.max(axis=0)
    softmax = np.exp(terms - top)
    total = softmax.sum(axis=0)
    softmax /= total
    residual = top + np.log(total) - log_loss
    size = np.abs(residual)
    value = np.where(size <= HUBER_DELTA, 0.5 * residual**2, HUBER_DELTA * (size - 0.5 * HUBER_DELTA)).sum(-1)
    # d Huber / d residual = clip(residual); d LSE / d term_k = softmax weight of term k.
    weighted = np.clip(residual, -HUBER_DELTA, HUBER_DELTA) * softmax  # (3, ..., runs)
    grad = np.stack([weighted[0].sum(-1), weighted[1].sum(-1), weighted[2].sum(-1),
                     -(weighted[0] * log_N).sum(-1), -(weighted[1] * log_D).sum(-1)], axis=-1)
    return value, grad


@dataclass(frozen=True)
class Fit3:
    """Result of Approach 3: the fitted law, the objective at the minimum and bootstrap intervals."""

    law: Law
    objective: float
    theta: tuple
    n_runs: int
    starts: int
    intervals: dict = field(default_factory=dict)  # name -> (2.5th, 97.5th percentile) over bootstrap refits
    samples: tuple = ()  # (E, A, B, alpha, beta) of each bootstrap refit: `scaling predict` draws intervals from them

    def as_dict(self) -> dict:
        """Plain JSON-ready dict: E, A, B, alpha, beta, a, b, G, objective, n_runs, intervals."""
        law = self.law
        return {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta, "a": law.a, "b": law.b,
                "G": law.G, "objective": self.objective, "n_runs": self.n_runs, "starts": self.starts,
                "intervals": {k: list(v) for k, v in self.intervals.items()},
                "bootstrap_samples": [list(x) for x in self.samples]}


def _one_blas_thread():
    """Pin BLAS (scipy's and numpy's OpenBLAS) to one thread while L-BFGS-B runs.

    L-BFGS-B makes thousands of BLAS calls on 5-vectors; OpenBLAS's worker threads only spin on
    them, and on a busy 2-core machine that made a fit 50x slower.
    """
    return threadpool_limits(limits=1, user_api="blas")


def _polish(starts: np.ndarray, args: tuple) -> tuple[np.ndarray, float]:
    """Run L-BFGS-B from each start; return the best parameters and objective."""
    best_x, best_f = None, np.inf
    with _one_blas_thread():
        for start in starts:
            result = minimize(huber_objective, start, args=args, jac=True, method="L-BFGS-B", options=LBFGS_OPTIONS)
            if np.isfinite(result.fun) and result.fun < best_f:
                best_x, best_f = result.x, float(result.fun)
    return best_x, best_f


def _best_grid_starts(args: tuple, count: int) -> np.ndarray:
    values, _ = huber_objective(GRID, *args)
    return GRID[np.argsort(values)[:count]]


def _logs(runs: Runs) -> tuple:
    return np.log(runs.N), np.log(runs.D), np.log(runs.loss)


def fit_approach3(runs: Runs, starts: int | str = 200, bootstrap: int = 0, seed: int = 0,
                  bootstrap_starts: int = 2) -> Fit3:
    """Fit E, A, B, alpha, beta to runs (Approach 3); `bootstrap` > 0 adds 95% intervals."""
    if len(runs.N) < 5:
        raise UserError(f"fit: {len(runs.N)} runs cannot determine 5 constants; give at least 5 "
                        "(Hoffmann et al. used 400+)")
    args = _logs(runs)
    count = len(GRID) if starts == "all" else int(starts)
    theta, value = _polish(_best_grid_starts(args, count), args)
    if not (theta[3] > 0 and theta[4] > 0):
        raise UserError(f"fit: the runs do not determine the law (best fit alpha={theta[3]:.3g}, beta={theta[4]:.3g}); "
                        "add model sizes and budgets that bracket the loss minimum")
    law = Law.from_logs(*theta[:3], alpha=theta[3], beta=theta[4], name="fit")
    intervals, samples = _bootstrap(runs, theta, bootstrap, seed, bootstrap_starts) if bootstrap else ({}, ())
    return Fit3(law=law, objective=value, theta=tuple(float(t) for t in theta), n_runs=len(runs.N),
                starts=count, intervals=intervals, samples=samples)


def _bootstrap(runs: Runs, theta: np.ndarray, count: int, seed: int, grid_starts: int) -> tuple[dict, tuple]:
    """Refit `count` resamples (runs drawn with replacement) from the full fit plus a few grid starts."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        args = _logs(runs.take(rng.integers(0, len(runs.N), len(runs.N))))
        # The full-data minimum is near each resample's minimum; a few grid starts guard against a basin change.
        x, _ = _polish(np.vstack([theta, _best_grid_starts(args, grid_starts)]), args)
        if not (x[3] > 0 and x[4] > 0):
            continue  # a resample too narrow to pin an exponent (a few distinct runs): no law, no sample
        law = Law.from_logs(*x[:3], alpha=x[3], beta=x[4])
        samples.append([law.E, law.A, law.B, law.alpha, law.beta, law.a, law.b])
    if len(samples) < 2:
        return {}, ()
    low, high = np.percentile(np.array(samples), [2.5, 97.5], axis=0)
    intervals = {k: (float(lo), float(hi)) for k, lo, hi in zip(("E", "A", "B", "alpha", "beta", "a", "b"), low, high)}
    return intervals, tuple(tuple(float(v) for v in x[:5]) for x in samples)


def group_budgets(C: np.ndarray, tolerance: float = 0.25) -> list[np.ndarray]:
    """Indices of runs grouped by near-equal compute: a group spans at most a factor (1 + tolerance) in C."""
    order = np.argsort(C)
    groups, current = [], [order[0]]
    for i in order[1:]:
        if np.log(C[i]) - np.log(C[current[0]]) <= np.log1p(tolerance):
            current.append(i)
        else:
            groups.append(np.array(current))
            current = [i]
    groups.append(np.array(current))
    return groups


@dataclass(frozen=True)
class Fit2:
    """Result of Approach 2: N_opt(C) per budget and the power laws N_opt = k_N C^a, D_opt = k_D C^b."""

    budgets: list  # one dict per budget: C, N_opt, D_opt, loss_min, runs, extrapolated, parabola
    a: float
    b: float
    k_N: float
    k_D: float

    def optimal(self, C):
        """(N_opt, D_opt) of the fitted power laws at C FLOPs."""
        return self.k_N * np.asarray(C) ** self.a, self.k_D * np.asarray(C) ** self.b

    def as_dict(self) -> dict:
        """Plain JSON-ready dict: a, b, k_N, k_D and the per-budget minima."""
        return {"a": self.a, "b": self.b, "k_N": self.k_N, "k_D": self.k_D, "budgets": self.budgets}


def fit_approach2(runs: Runs, tolerance: float = 0.25) -> Fit2:
    """IsoFLOP profiles: a parabola of loss in log N per budget, its minimum, then log-log fits across budgets."""
    budgets = []
    for index in group_budgets(runs.C, tolerance):
        log_N = np.log(runs.N[index])
        if len(np.unique(log_N)) < 3:
            continue  # a parabola needs three distinct sizes
        p2, p1, p0 = np.polyfit(log_N, runs.loss[index], 2)
        if p2 <= 0:
            continue  # no minimum: the budget's runs do not bracket the optimum
        x_min = -p1 / (2 * p2)
        C = float(np.exp(np.mean(np.log(runs.C[index]))))  # geometric mean of the group's budgets
        N_opt = float(np.exp(x_min))
        budgets.append({"C": C, "N_opt": N_opt, "D_opt": C / (6 * N_opt),
                        "loss_min": float(np.polyval([p2, p1, p0], x_min)), "runs": len(index),
                        "extrapolated": bool(not log_N.min() <= x_min <= log_N.max()),
                        "parabola": [float(p2), float(p1), float(p0)]})
    if len(budgets) < 2:
        raise UserError(f"fit --approach 2: found {len(budgets)} FLOP budget(s) with a loss minimum over >= 3 model "
                        "sizes; need 2 or more (plan them with `meshtron scaling sweep`)")
    log_C = np.log([g["C"] for g in budgets])
    a, log_k_N = np.polyfit(log_C, np.log([g["N_opt"] for g in budgets]), 1)
    b, log_k_D = np.polyfit(log_C, np.log([g["D_opt"] for g in budgets]), 1)
    return Fit2(budgets=budgets, a=float(a), b=float(b), k_N=float(np.exp(log_k_N)), k_D=float(np.exp(log_k_D)))


def load_runs(paths, excluded: list | None = None) -> Runs:
    """Runs from JSONL files of {"N", "D", "loss"} lines and/or Meshtron run directories (or folders of them).

    A sweep folder (`meshtron scaling sweep`) gives its finished runs; runs it leaves out (diverged,
    not trained yet) are appended to `excluded` as (name, reason).
    """
    from meshtron.train.scaling.runner import is_sweep, sweep_rows

    rows = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            rows += _read_jsonl(path)
        elif path.is_dir() and is_sweep(path):
            found, left_out = sweep_rows(path)
            rows += found
            if excluded is not None:
                excluded += left_out
        elif path.is_dir():
            run_dirs = [path] if (path / "config.yaml").exists() else sorted(
                p for p in path.iterdir() if (p / "config.yaml").exists())
            if not run_dirs:
                raise UserError(f"{path}: no config.yaml in it or its subfolders; give Meshtron run directories")
            rows += [read_run_dir(p) for p in run_dirs]
        else:
            raise UserError(f"{path}: no such file or directory")
    N, D, loss, sources = zip(*rows) if rows else ((), (), (), ())
    return make_runs(N, D, loss, sources)


def _read_jsonl(path) -> list:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({e.__class__.__name__})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path} line {number}: not JSON; write one "
                            "{\"N\": ..., \"D\": ..., \"loss\": ...} object per line") from None
        if not isinstance(record, dict) or not {"N", "D", "loss"} <= set(record):
            raise UserError(f"{path} line {number}: needs the keys N, D and loss")
        values = []
        for key in ("N", "D", "loss"):
            value = record[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise UserError(f"{path} line {number}: {key}={value!r} must be a positive number")
            values.append(float(value))
        rows.append((*values, f"{path}:{number}"))
    if not rows:
        raise UserError(f"{path}: no runs in it; each line is {{\"N\": ..., \"D\": ..., \"loss\": ...}}")
    return rows


def read_run_dir(path) -> tuple:
    """(N, D, eval loss, source) of a run directory: N exact from its config, D from steps x batch x seq_len."""
    from meshtron.configs import config_from_dict
    from meshtron.model.counting import count_params  # here: meshtron.model loads Flax, JSONL fits need not
    from meshtron.train.run.metrics import read_metrics

    try:
        raw = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path / 'config.yaml'}: cannot read it as YAML ({e.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path / 'config.yaml'}: not a Meshtron config (expected sections model:, train:, ...)")
    config = config_from_dict(raw)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{path}: no metrics.jsonl; is it a finished Meshtron run?")
    last = None
    for record in read_metrics(path):  # a line cut short by a crash is skipped; the earlier lines still count
        if isinstance(record, dict) and isinstance(record.get("eval_loss"), (int, float)):
            last = record
    if last is None:
        raise UserError(f"{metrics}: no line with eval_loss; the run has not been evaluated")
    train = config.train
    # An evaluation before the last step saw fewer tokens than planned: count the step it was taken at.
    step = last.get("step")
    steps = step if isinstance(step, int) and 0 < step <= train.steps else train.steps
    tokens = steps * train.batch_size * config.model.seq_len
    return float(count_params(config.model).total), float(tokens), float(last["eval_loss"]), str(path)

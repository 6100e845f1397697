"""Predict with your own fit: the loss of a planned run and the compute-optimal size for its budget.

    meshtron scaling fit sweep/ --bootstrap 100 --out fit.json
    meshtron scaling predict --fit fit.json --params 3.2M --tokens 60M   (or --config big.yaml)

A fit file is what `meshtron scaling fit --out` writes (the same object as `fit --json`): the law's
constants and, with --bootstrap, the constants of every bootstrap refit. Intervals of a prediction
are the 2.5th..97.5th percentiles of that prediction over the refits (none without --bootstrap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meshtron.configs.errors import UserError
from meshtron.train.scaling.laws import Law, allocation, optimal_by_compute
from meshtron.train.scaling.repeat import data_constrained

KEYS = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class FitFile:
    """A law fitted by the user: its constants, the bootstrap refits and where it came from."""

    law: Law
    samples: tuple  # Law per bootstrap refit
    path: str
    n_runs: int

    def describe(self) -> str:
        """One phrase naming the fit, for reports."""
        boot = f", {len(self.samples)} bootstrap refits" if self.samples else ", no bootstrap"
        return f"your fit {self.path} ({self.n_runs} runs{boot})"


def load_fit(path) -> FitFile:
    """Read a fit file written by `meshtron scaling fit --out` (or saved from `fit --json`)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--fit {path}: no such file; write one with `meshtron scaling fit RUNS --out {path}`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--fit {path}: cannot read it as JSON ({e.__class__.__name__}); write it with "
                        "`meshtron scaling fit RUNS --out FIT.json`") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), (int, float)) for k in KEYS):
        raise UserError(f"--fit {path}: needs the numbers {', '.join(KEYS)} of an Approach 3 fit "
                        "(`meshtron scaling fit --approach 3 --out FIT.json`)")
    law = Law(**{k: float(raw[k]) for k in KEYS}, name=f"fit:{path.name}")
    samples = []
    for row in raw.get("bootstrap_samples") or []:
        try:
            samples.append(Law(*(float(v) for v in row), name="bootstrap"))
        except (TypeError, ValueError, UserError):
            continue  # a degenerate refit (a constant at 0) says nothing about the interval
    return FitFile(law=law, samples=tuple(samples), path=str(path), n_runs=int(raw.get("n_runs") or 0))


def _interval(values) -> list | None:
    values = np.asarray([v for v in values if np.isfinite(v)])
    return [float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) >= 2 else None


def predict(fit: FitFile, N: float, D: float, unique: float | None = None) -> dict:
    """Predicted loss of N params on D tokens under the fit (data-constrained with `unique`), with intervals,
    and the compute-optimal N, D and loss for the same compute C = 6ND."""
    planned = allocation(N, D, fit.law)
    optimum = optimal_by_compute(planned.C, fit.law)

    def loss_under(law: Law) -> float:
        return data_constrained(N, D, unique, law).loss if unique else float(law.loss(N, D))

    result = {"N": planned.N, "D": planned.D, "C": planned.C, "tokens_per_param": planned.tokens_per_param,
              "loss": loss_under(fit.law), "loss_interval": _interval(loss_under(s) for s in fit.samples),
              "optimal": {"N": optimum.N, "D": optimum.D, "loss": optimum.loss,
                          "N_interval": _interval(optimal_by_compute(planned.C, s).N for s in fit.samples),
                          "D_interval": _interval(optimal_by_compute(planned.C, s).D for s in fit.samples),
                          "loss_interval": _interval(optimal_by_compute(planned.C, s).loss for s in fit.samples)},
              "fit": fit.describe(), "law": fit.law.constants(), "a": fit.law.a, "b": fit.law.b}
    if unique:
        result["data_constrained"] = data_constrained(N, D, unique, fit.law).as_dict()
    return result


def prediction_rows(d: dict) -> list[tuple]:
    """Table rows of a prediction for the console."""
    def span(interval, fmt="{:.4f}"):
        return f"  (95%: {fmt.format(interval[0])} .. {fmt.format(interval[1])})" if interval else ""

    o = d["optimal"]
    rows = [("fit", d["fit"]), ("N (parameters)", f"{d['N']:,.0f}"), ("D (tokens)", f"{d['D']:,.0f}"),
            ("C = 6ND (FLOPs)", f"{d['C']:.4g}"), ("predicted loss", f"{d['loss']:.4f}{span(d['loss_interval'])}")]
    if "data_constrained" in d:
        dc = d["data_constrained"]
        rows.append(("repeated data", f"{dc['epochs']:.2f} epochs over {dc['unique_tokens']:,.0f} unique tokens: "
                                      f"D' {dc['D_effective']:.4g}, N' {dc['N_effective']:.4g} (Muennighoff et al. "
                                      f"2023); {dc['loss_without_repeats']:.4f} without repeats"))
    rows += [("optimal N for this C", f"{o['N']:,.0f}{span(o['N_interval'], '{:,.0f}')}"),
             ("optimal D for this C", f"{o['D']:,.0f}{span(o['D_interval'], '{:,.0f}')}"),
             ("loss at the optimum", f"{o['loss']:.4f}{span(o['loss_interval'])}"),
             ("exponents", f"N_opt ∝ C^{d['a']:.3f}, D_opt ∝ C^{d['b']:.3f} (Chinchilla: about 0.5 each)")]
    return rows

"""Repeated data: the data-constrained law of Muennighoff et al. 2023 ("Scaling Data-Constrained
Language Models", NeurIPS 2023, Eq. 5-7).

With U_D unique tokens seen D / U_D times, R_D = D / U_D - 1 of those passes are repeats, and
repeated tokens are worth exponentially less:
    D' = U_D + U_D R*_D (1 - exp(-R_D / R*_D)),          R*_D = 15.387756
Parameters beyond the compute-optimal size for the unique data, U_N = min(N_opt(U_D), N), decay
the same way with R_N = N / U_N - 1:
    N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N)),          R*_N = 5.309743
and the loss is the Chinchilla form at the effective counts, L = E + A / N'^alpha + B / D'^beta.
Without repeats (D <= U_D), D' = D and N' = N: the plain law (Meshtron applies the parameter decay
only to repeated data, the runs R*_N was fitted on).
N_opt(U_D) uses the law's own frontier (`optimal_by_tokens`), so the rule reads the same under a
published law or the user's fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meshtron.configs.errors import UserError
from meshtron.train.scaling.laws import Law, check_range

# The paper's fitted decay constants (its Eq. 7 fit over 400+ runs; "R*_D ≈ 15.4, R*_N ≈ 5.3").
R_STAR_D = 15.387756
R_STAR_N = 5.309743


def effective(unique: float, total: float, r_star: float) -> float:
    """U + U R* (1 - exp(-R / R*)) with R = total / U - 1 repeats (total <= U: total itself)."""
    repeats = total / unique - 1.0
    if repeats <= 0:
        return float(total)
    return unique + unique * r_star * (1.0 - math.exp(-repeats / r_star))


@dataclass(frozen=True)
class Constrained:
    """A (N, D) run on U unique tokens: its epochs, effective N' and D', and the losses with and without repeats."""

    N: float
    D: float
    unique: float
    epochs: float
    N_eff: float
    D_eff: float
    loss: float
    loss_unconstrained: float
    unique_params: float

    @property
    def repeated(self) -> bool:
        """True when the run sees some of its tokens more than once."""
        return self.D > self.unique

    def as_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return {"N": self.N, "D": self.D, "unique_tokens": self.unique, "epochs": self.epochs,
                "N_effective": self.N_eff, "D_effective": self.D_eff, "loss": self.loss,
                "loss_without_repeats": self.loss_unconstrained, "U_N": self.unique_params,
                "repeated": self.repeated, "R_star_D": R_STAR_D, "R_star_N": R_STAR_N}


def data_constrained(N: float, D: float, unique: float, law: Law) -> Constrained:
    """Muennighoff et al.'s prediction for N parameters trained on D tokens drawn from `unique` unique ones."""
    from meshtron.train.scaling.laws import optimal_by_tokens

    N = check_range(N, "N", "--params")
    D = check_range(D, "D", "--tokens")
    unique = check_range(unique, "D", "--unique-tokens")
    U_D = min(unique, D)
    # Single-epoch runs keep the plain law: R*_N was fitted on repeated-data runs, and Chinchilla's
    # own term already charges an oversized model on fresh data.
    U_N = min(optimal_by_tokens(U_D, law).N, N) if D > unique else N
    N_eff, D_eff = effective(U_N, N, R_STAR_N), effective(U_D, D, R_STAR_D)
    return Constrained(N=N, D=D, unique=unique, epochs=D / unique, N_eff=N_eff, D_eff=D_eff,
                       loss=float(law.loss(N_eff, D_eff)), loss_unconstrained=float(law.loss(N, D)),
                       unique_params=U_N)


def epochs_sentence(D: float, unique: float | None) -> str:
    """How many passes over its data a run of D tokens makes, in words."""
    if not unique:
        return "unique tokens unknown: epochs not counted"
    if unique <= 0:
        raise UserError(f"--unique-tokens {unique}: must be a positive number")
    epochs = D / unique
    if epochs <= 1:
        return f"{epochs:.2f} epochs over {unique:,.0f} unique tokens (no token repeats)"
    return (f"{epochs:.1f} epochs over {unique:,.0f} unique tokens: repeated data, predictions use the "
            "data-constrained law (Muennighoff et al. 2023)")


def optimal_constrained(C: float, unique: float, law: Law) -> dict:
    """The N (and D = C / 6N) that minimise the data-constrained loss for a budget of C FLOPs on
    `unique` unique tokens; with plenty of data it is the ordinary compute-optimal allocation."""
    from scipy.optimize import minimize_scalar

    from meshtron.train.scaling.laws import Allocation, optimal_by_compute

    C = check_range(C, "C", "--compute")
    unique = check_range(unique, "D", "--unique-tokens")
    free = optimal_by_compute(C, law)

    def loss(log_N: float) -> float:
        N = math.exp(log_N)
        return data_constrained(N, C / (6 * N), unique, law).loss

    low, high = math.log(free.N) - math.log(1e3), math.log(free.N) + math.log(1e3)
    best = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    N = math.exp(best.x)
    result = Allocation(N=N, D=C / (6 * N), law=law).as_dict()
    constrained = data_constrained(N, C / (6 * N), unique, law)
    return result | {"loss": constrained.loss, "data_constrained": constrained.as_dict(),
                     "unconstrained": {"N": free.N, "D": free.D, "loss": free.loss}}

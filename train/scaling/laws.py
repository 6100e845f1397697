"""Chinchilla's parametric loss L(N, D) = E + A/N^alpha + B/D^beta and the budgets it implies.

N is parameters, D training tokens, C = 6ND training FLOPs (Hoffmann et al. 2022, "Training
Compute-Optimal Large Language Models"). The compute-optimal frontier in closed form:
    N_opt = G (C/6)^a,  D_opt = (C/6)^b / G,  G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta),  b = alpha/(alpha+beta).
Kaplan et al. 2020 ("Scaling Laws for Neural Language Models") is kept for comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from meshtron.configs.errors import UserError

# 1 PF-day = 1e15 FLOP/s for a day: the compute unit of Kaplan et al.
PF_DAY = 1e15 * 86400

# Ranges a budget may take before it stops being a language model (too small) or an
# extrapolation no fit can vouch for (too large); the laws were fit on 7e7..1.6e10 params.
LIMITS = {"N": (1e3, 1e15), "D": (1e3, 1e18), "C": (1e6, 1e33)}


@dataclass(frozen=True)
class Law:
    """Constants of L(N, D) = E + A / N^alpha + B / D^beta (loss in nats per token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "custom"

    def __post_init__(self):
        for key in ("A", "B", "alpha", "beta"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"scaling law constant {key}={value!r} must be a positive number")
        if not (math.isfinite(self.E) and self.E >= 0):
            raise UserError(f"scaling law constant E={self.E!r} must be a number >= 0")

    @classmethod
    def named(cls, name: str) -> "Law":
        """One of the published constant sets: hoffmann (default), hoffmann-rounded, epoch."""
        if name not in LAWS:
            raise UserError(f"unknown scaling law '{name}'; choose one of {', '.join(LAWS)}")
        return LAWS[name]

    @classmethod
    def from_logs(cls, a: float, b: float, e: float, alpha: float, beta: float, name: str = "fit") -> "Law":
        """Law from the log-space parameters Approach 3 fits (A = exp(a), B = exp(b), E = exp(e))."""
        return cls(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta), name=name)

    def loss(self, N, D):
        """Predicted loss of N parameters trained on D tokens (floats or numpy arrays)."""
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    @property
    def G(self) -> float:
        """Scale of the frontier: N_opt = G (C/6)^a."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    @property
    def a(self) -> float:
        """Exponent of N_opt in C."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt in C (a + b = 1)."""
        return self.alpha / (self.alpha + self.beta)

    def constants(self) -> dict:
        """Plain dict of the constants and the name."""
        return asdict(self)


LAWS = {
    # Full precision from the paper's source (Hoffmann et al. 2022, log A, log B, log E as fitted); reproduces "40B for the Gopher budget".
    "hoffmann": Law.from_logs(a=6.0073404, b=6.0179186, e=0.5267228, alpha=0.33917084, beta=0.2849083,
                              name="hoffmann"),
    # As printed in App. D.2 (Eq. 10); N_opt at the Gopher budget comes out near 32B, not 40B.
    "hoffmann-rounded": Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="hoffmann-rounded"),
    # Besiroglu et al. 2024 (Epoch AI), refit of the paper's own data: about 20 tokens per parameter.
    "epoch": Law(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, name="epoch"),
}
DEFAULT_LAW = "hoffmann"


def get_law(name: str | None = None, **overrides) -> Law:
    """A named law with any of E, A, B, alpha, beta replaced by user values (None keeps the named one)."""
    law = Law.named(name or DEFAULT_LAW)
    given = {k: float(v) for k, v in overrides.items() if v is not None}
    unknown = set(given) - {"E", "A", "B", "alpha", "beta"}
    if unknown:
        raise UserError(f"unknown scaling law constant(s) {', '.join(sorted(unknown))}; use E, A, B, alpha, beta")
    return replace(law, name=f"{law.name}+custom", **given) if given else law


def check_range(value: float, kind: str, flag: str) -> float:
    """`value` as a float if it is a finite number inside LIMITS[kind], else a one-line UserError."""
    low, high = LIMITS[kind]
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} {value!r}: not a number; write it like 5.76e23") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{flag} {value:g}: must be a positive number")
    if not low <= value <= high:
        raise UserError(f"{flag} {value:g}: outside the range a scaling law can speak to ({low:g} to {high:g})")
    return value


@dataclass(frozen=True)
class Allocation:
    """A (parameters, tokens) pair, its compute C = 6ND and its predicted loss under `law`."""

    N: float
    D: float
    law: Law

    @property
    def C(self) -> float:
        """Training FLOPs, 6ND."""
        return 6.0 * self.N * self.D

    @property
    def tokens_per_param(self) -> float:
        """D / N (about 20 on Chinchilla's frontier)."""
        return self.D / self.N

    @property
    def loss(self) -> float:
        """Predicted loss L(N, D)."""
        return float(self.law.loss(self.N, self.D))

    def as_dict(self) -> dict:
        """Plain JSON-ready dict: N, D, C, tokens_per_param, loss, law."""
        return {"N": self.N, "D": self.D, "C": self.C, "tokens_per_param": self.tokens_per_param,
                "loss": self.loss, "law": self.law.constants()}


def optimal_by_compute(C: float, law: Law) -> Allocation:
    """Compute-optimal N and D for a budget of C FLOPs (C = 6ND)."""
    C = check_range(C, "C", "--compute")
    return Allocation(N=law.G * (C / 6) ** law.a, D=(C / 6) ** law.b / law.G, law=law)


def optimal_by_params(N: float, law: Law) -> Allocation:
    """Tokens that make N parameters compute-optimal, D = G^-(1+b/a) N^(b/a), and the compute it implies."""
    N = check_range(N, "N", "--params")
    return Allocation(N=N, D=law.G ** -(1 + law.b / law.a) * N ** (law.b / law.a), law=law)


def optimal_by_tokens(D: float, law: Law) -> Allocation:
    """Parameters that make D tokens compute-optimal, N = G^(1/b) D^(a/b) (the inverse of optimal_by_params)."""
    D = check_range(D, "D", "--tokens")
    return Allocation(N=law.G ** (1 / law.b) * D ** (law.a / law.b), D=D, law=law)


def allocation(N: float, D: float, law: Law) -> Allocation:
    """Any (N, D) pair, checked, with its compute and predicted loss."""
    return Allocation(N=check_range(N, "N", "--params"), D=check_range(D, "D", "--tokens"), law=law)


def predicted_loss(N: float, D: float, law: Law) -> float:
    """L(N, D) under `law`, with N and D checked."""
    return allocation(N, D, law).loss


def cluster_compute(devices: float, peak_flops_per_device: float, mfu: float, seconds: float) -> float:
    """FLOPs a cluster delivers: devices x peak FLOP/s x MFU x seconds."""
    for flag, value in (("devices", devices), ("peak", peak_flops_per_device), ("seconds", seconds)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"--{flag} {value!r}: must be a positive number")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu!r}: model FLOPs utilisation is a fraction in (0, 1], for example 0.4")
    return devices * peak_flops_per_device * mfu * seconds


# Kaplan et al. 2020, for comparison. Their N excludes embeddings; C is in PF-days.
KAPLAN = {"N_c": 8.8e13, "alpha_N": 0.076, "D_c": 5.4e13, "alpha_D": 0.095, "N_opt_scale": 1.3e9,
          "N_opt_exponent": 0.73}


def kaplan_optimal_params(C: float) -> float:
    """Kaplan's compute-optimal non-embedding N for C FLOPs: N_opt ≈ 1.3e9 (C / PF-day)^0.73."""
    return KAPLAN["N_opt_scale"] * (check_range(C, "C", "--compute") / PF_DAY) ** KAPLAN["N_opt_exponent"]


def kaplan_loss_params(N: float) -> float:
    """Kaplan's L(N) = (N_c / N)^0.076: loss of N non-embedding parameters trained to convergence."""
    return (KAPLAN["N_c"] / check_range(N, "N", "--params")) ** KAPLAN["alpha_N"]


def kaplan_loss_tokens(D: float) -> float:
    """Kaplan's L(D) = (D_c / D)^0.095: loss of a large model trained on D tokens with early stopping."""
    return (KAPLAN["D_c"] / check_range(D, "D", "--tokens")) ** KAPLAN["alpha_D"]

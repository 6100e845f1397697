"""PNG figures of a fit (IsoFLOP curves and the frontier) and of a planned sweep (the N-D plane)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meshtron.configs.errors import UserError
from meshtron.train.scaling.fit import Fit2, Fit3, Runs, group_budgets
from meshtron.train.scaling.laws import Law


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in tests
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as e:
        raise UserError(f"--plot {path}: cannot write it ({e.__class__.__name__})") from None
    finally:
        _pyplot().close(fig)
    return path


def plot_fit(runs: Runs, path, fit3: Fit3 | None = None, fit2: Fit2 | None = None,
             reference: Law | None = None) -> Path:
    """Left: loss vs N per FLOP budget (runs, Approach 2 parabolas, Approach 3 curves). Right: N_opt(C)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    groups = group_budgets(runs.C)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(groups)))
    parabolas = {round(np.log(b["C"]), 6): b for b in (fit2.budgets if fit2 else [])}
    for index, color in zip(groups, colors):
        C = float(np.exp(np.mean(np.log(runs.C[index]))))
        left.scatter(runs.N[index], runs.loss[index], color=color, s=18, zorder=3, label=f"C = {C:.1e}")
        N = np.geomspace(runs.N[index].min() / 1.5, runs.N[index].max() * 1.5, 100)
        budget = parabolas.get(round(np.log(C), 6))
        if budget:
            left.plot(N, np.polyval(budget["parabola"], np.log(N)), color=color, lw=1)
            left.scatter([budget["N_opt"]], [budget["loss_min"]], color=color, marker="x", s=50, zorder=4)
        if fit3:
            left.plot(N, fit3.law.loss(N, C / (6 * N)), color=color, lw=1, ls="--")
    left.set(xscale="log", xlabel="parameters N", ylabel="loss (nats)",
             title="IsoFLOP curves: runs, parabolas (Approach 2, x = minimum), fit (Approach 3, dashed)")
    left.title.set_fontsize(9)
    left.legend(fontsize=7)

    C = np.geomspace(runs.C.min() / 10, runs.C.max() * 100, 100)
    if fit3:
        right.plot(C, fit3.law.G * (C / 6) ** fit3.law.a, label=f"Approach 3 fit: N_opt ∝ C^{fit3.law.a:.3f}")
    if fit2:
        right.plot(C, fit2.optimal(C)[0], label=f"Approach 2 fit: N_opt ∝ C^{fit2.a:.3f}")
        right.scatter([b["C"] for b in fit2.budgets], [b["N_opt"] for b in fit2.budgets], marker="x", color="k",
                      zorder=3, label="parabola minima")
    if reference:
        right.plot(C, reference.G * (C / 6) ** reference.a, color="grey", ls=":", label=f"{reference.name} law")
    right.scatter(runs.C, runs.N, s=10, color="tab:red", alpha=0.5, label="your runs")
    right.set(xscale="log", yscale="log", xlabel="training FLOPs C = 6ND", ylabel="parameters N",
              title="compute-optimal frontier N_opt(C)")
    right.legend(fontsize=7)
    return _save(fig, path)


def plot_sweep(plan, law: Law, path) -> Path:
    """Planned configs on the N-D plane with the law's isoloss contours, IsoFLOP lines and frontier."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5.5))
    N_all = np.array([r.params_total for r in plan], dtype=float)
    D_all = np.array([r.tokens for r in plan], dtype=float)
    N = np.geomspace(N_all.min() / 4, N_all.max() * 4, 200)
    D = np.geomspace(D_all.min() / 4, D_all.max() * 4, 200)
    grid_N, grid_D = np.meshgrid(N, D)
    contours = ax.contour(grid_N, grid_D, law.loss(grid_N, grid_D), levels=12, colors="silver", linewidths=0.8)
    ax.clabel(contours, fontsize=6, fmt="%.2f", colors="dimgray")
    budgets = sorted({r.budget for r in plan})
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(budgets)))
    for budget, color in zip(budgets, colors):
        ax.plot(N, budget / (6 * N), color=color, lw=0.8, ls="--")
        points = [r for r in plan if r.budget == budget]
        ax.scatter([r.params_total for r in points], [r.tokens for r in points], color=color, s=25, zorder=3,
                   label=f"C = {budget:.1e}")
    ax.plot(N, law.G ** -(1 + law.b / law.a) * N ** (law.b / law.a), color="k", lw=1.2,
            label=f"compute-optimal D(N), {law.name} law")
    ax.set(xscale="log", yscale="log", xlim=(N[0], N[-1]), ylim=(D[0], D[-1]), xlabel="parameters N",
           ylabel="tokens D", title="planned sweep: IsoFLOP lines (dashed), isoloss contours (grey)")
    ax.legend(fontsize=7)
    return _save(fig, path)

"""PNG figures of the scaling workflow: a sweep's IsoFLOP curves under a fit with a held-out run,
a run's loss curve with its mid-run forecast band, and learning-rate curves across widths (muP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meshtron.configs.errors import UserError
from meshtron.train.scaling.curve import curve_points, fit_curve
from meshtron.train.scaling.fit import group_budgets, load_runs, read_run_dir
from meshtron.train.scaling.plots import _pyplot, _save


def read_metrics(run_dir) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl; a one-line error if it has none."""
    from meshtron.train.run.metrics import read_metrics as read

    if not (Path(run_dir) / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl; give a Meshtron run directory")
    return [r for r in read(run_dir) if isinstance(r, dict)]


def plot_sweep_fit(sweep_dir, out, fit_path=None, held_out=None) -> tuple[Path, dict]:
    """Loss vs N per budget (the sweep's runs), the fit's IsoFLOP curves, and a held-out run against its prediction."""
    from meshtron.train.scaling.predict import load_fit

    runs = load_runs([sweep_dir])
    law = load_fit(fit_path).law if fit_path else None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    groups = group_budgets(runs.C)
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(groups) + (1 if held_out else 0)))
    for index, color in zip(groups, colors):
        C = float(np.exp(np.mean(np.log(runs.C[index]))))
        ax.scatter(runs.N[index], runs.loss[index], color=color, s=22, zorder=3, label=f"C = {C:.2e}")
        if law is not None:
            N = np.geomspace(runs.N[index].min() / 2, runs.N[index].max() * 2, 100)
            ax.plot(N, law.loss(N, C / (6 * N)), color=color, lw=1)
    summary = {"runs": len(runs.N)}
    if held_out:
        N_h, D_h, loss_h, _ = read_run_dir(Path(held_out))
        ax.scatter([N_h], [loss_h], color=colors[-1], marker="*", s=160, zorder=4, edgecolor="k",
                   label=f"held-out run, C = {6 * N_h * D_h:.2e}")
        summary |= {"held_out_N": N_h, "held_out_D": D_h, "held_out_loss": loss_h}
        if law is not None:
            C = 6 * N_h * D_h
            N = np.geomspace(N_h / 4, N_h * 4, 100)
            ax.plot(N, law.loss(N, C / (6 * N)), color=colors[-1], lw=1, ls="--")
            predicted = float(law.loss(N_h, D_h))
            summary |= {"held_out_predicted": predicted, "held_out_error": loss_h / predicted - 1}
    ax.set(xscale="log", xlabel="parameters N", ylabel="final evaluation loss (nats)",
           title="IsoFLOP curves: sweep runs (dots), fit (lines), held-out run (star)")
    ax.legend(fontsize=7)
    return _save(fig, out), summary


def plot_run_forecast(run_dir, out, fractions=(0.25, 0.5, 0.75)) -> tuple[Path, dict]:
    """The run's losses and, for each fraction of its steps, the curve fitted to the points before it
    with its forecast band at the final step."""
    from meshtron.configs.loader import config_from_dict

    import yaml

    records = read_metrics(run_dir)
    config = config_from_dict(yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")))
    total, warmup = config.train.steps, config.train.warmup_steps
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    trains = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float)) and not r.get("event")]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
    if trains:
        ax.plot(*zip(*trains), color="silver", lw=1, label="training loss")
    if evals:
        ax.plot(*zip(*evals), "o-", color="k", ms=3, lw=1, label="evaluation loss")
    summary = {"final_eval_loss": evals[-1][1] if evals else None}
    colors = plt.cm.plasma(np.linspace(0.1, 0.8, len(fractions)))
    for fraction, color in zip(fractions, colors):
        cut = int(round(fraction * total))
        steps, losses, kind = curve_points([r for r in records if r.get("step", 0) <= cut], after_step=warmup)
        try:
            fit = fit_curve(steps, losses, total)
        except UserError:
            continue
        t = np.linspace(max(1, warmup), total, 200)
        ax.plot(t, fit.loss(t), color=color, lw=1, ls="--",
                label=f"fit at {fraction:.0%} ({kind}): {fit.forecast:.3f} [{fit.interval[0]:.3f}, {fit.interval[1]:.3f}]")
        ax.errorbar([total], [fit.forecast], yerr=[[fit.forecast - fit.interval[0]], [fit.interval[1] - fit.forecast]],
                    color=color, capsize=4, fmt="o", ms=4)
        summary[f"forecast_at_{int(fraction * 100)}pct"] = fit.as_dict()
    ax.set(xlabel="step", ylabel="loss (nats)", title=f"{Path(run_dir).name}: loss curve and mid-run forecasts "
                                                      "L(t) = E + A t^-a")
    ax.set_ylim(top=max([v for _, v in evals] + [1]) * 1.15 if evals else None)
    ax.legend(fontsize=7)
    return _save(fig, out), summary


def plot_lr_transfer(rows: list[dict], out) -> Path:
    """Final loss vs learning rate, one line per width, one panel per parametrization (rows: width, lr,
    loss, parametrization); the best learning rate of each width is circled."""
    plt = _pyplot()
    kinds = sorted({r["parametrization"] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        widths = sorted({r["width"] for r in rows if r["parametrization"] == kind})
        colors = plt.cm.viridis(np.linspace(0, 0.85, len(widths)))
        for width, color in zip(widths, colors):
            points = sorted((r["lr"], r["loss"]) for r in rows if r["parametrization"] == kind and r["width"] == width
                            and np.isfinite(r["loss"]))
            if not points:
                continue
            lrs, losses = zip(*points)
            ax.plot(lrs, losses, "o-", color=color, ms=3, label=f"width {width}")
            best = int(np.argmin(losses))
            ax.scatter([lrs[best]], [losses[best]], s=120, facecolors="none", edgecolors=color)
        ax.set(xscale="log", xlabel="learning rate", ylabel="final evaluation loss", title=f"{kind} parametrization")
        ax.legend(fontsize=7)
    return _save(fig, out)

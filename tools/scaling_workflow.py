"""`meshtron scaling run | predict | plot`: the workflow after planning a sweep.

    meshtron scaling run sweep/                                   train every planned run (resumable)
    meshtron scaling fit sweep/ --bootstrap 100 --out fit.json    fit it (final evaluation losses)
    meshtron scaling predict --fit fit.json --compute 3e15        optimal N, D and loss for a budget
    meshtron scaling predict --fit fit.json --params 3.2M --tokens 60M [--unique-tokens 5M]
    meshtron scaling plot RUN_DIR --out curve.png                 the run's loss curve and forecast band
    meshtron scaling plot sweep/ --fit fit.json --held-out RUN_DIR --out isoflop.png
"""

from __future__ import annotations

import sys

from meshtron.configs.errors import UserError


def add_parsers(sub, common, number) -> None:
    """The run, predict and plot subcommands (added to `meshtron scaling`)."""
    p = sub.add_parser("run", parents=[common], help="train every run of a planned sweep (resumes where it stopped)")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p.add_argument("--max-runs", type=int, default=None, metavar="K", help="stop after K runs (continue later)")

    p = sub.add_parser("predict", parents=[common], help="loss and optimal size under your own fit, with intervals")
    p.add_argument("--fit", required=True, metavar="FIT.json", help="written by `meshtron scaling fit --out`")
    p.add_argument("--params", metavar="N")
    p.add_argument("--tokens", metavar="D")
    p.add_argument("--compute", metavar="C", help="a budget: its compute-optimal N, D and loss under the fit")
    p.add_argument("--config", metavar="NAME|PATH", help="a config: its N and D (steps x batch x seq_len)")
    p.add_argument("--unique-tokens", metavar="U", help="unique tokens in the data: repeats follow Muennighoff et al.")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of --config")

    p = sub.add_parser("plot", parents=[common], help="PNG of a run's loss curve and forecast, or of a sweep's fit")
    p.add_argument("path", metavar="RUN_DIR|SWEEP_DIR")
    p.add_argument("--out", required=True, metavar="PNG")
    p.add_argument("--fit", metavar="FIT.json", help="sweep plot: draw this fit's IsoFLOP curves")
    p.add_argument("--held-out", metavar="RUN_DIR", help="sweep plot: mark this run against the fit's prediction")


def run_sweep_command(args, law):
    """`scaling run`: progress lines go to stderr under --json so stdout keeps one JSON object."""
    from meshtron.train.scaling.runner import run_sweep

    if args.max_runs is not None and args.max_runs < 1:
        raise UserError(f"--max-runs {args.max_runs}: must be >= 1")
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    status = run_sweep(args.sweep_dir, log=log, max_runs=args.max_runs)
    done = sum(1 for e in status.values() if e.get("state") == "done")
    result = {"sweep_dir": str(args.sweep_dir), "ended": len(status), "done": done,
              "diverged": len(status) - done, "status": status}
    rows = [("runs ended", f"{len(status)} ({done} done, {len(status) - done} diverged)"),
            ("next", f"meshtron scaling fit {args.sweep_dir} --approach both --bootstrap 100 --out fit.json")]
    return result, rows


def predict_command(args, law, number):
    """`scaling predict`: N and D from flags or a config; a budget alone gives its optimum."""
    from meshtron.train.scaling.predict import load_fit, predict, prediction_rows

    fit = load_fit(args.fit)
    unique = number(args.unique_tokens, "--unique-tokens") if args.unique_tokens else None
    if args.config is not None:
        if args.params or args.tokens or args.compute:
            raise UserError("predict: give --config, or --params with --tokens, or --compute; not several")
        from meshtron.configs import load_config
        from meshtron.model.counting import count_params

        config = load_config(args.config, args.overrides)
        N = count_params(config.model).total
        D = config.train.steps * config.train.batch_size * config.model.seq_len
    elif args.compute is not None:
        if args.params or args.tokens:
            raise UserError("predict: --compute gives the optimum for a budget; drop --params/--tokens")
        from meshtron.train.scaling.laws import optimal_by_compute

        optimum = optimal_by_compute(number(args.compute, "--compute"), fit.law)
        N, D = optimum.N, optimum.D
    elif args.params and args.tokens:
        N, D = number(args.params, "--params"), number(args.tokens, "--tokens")
    else:
        raise UserError("predict: give --params N --tokens D, or --config NAME|PATH, or --compute C")
    result = predict(fit, N, D, unique)
    return result, prediction_rows(result)


def plot_command(args, law):
    """`scaling plot`: a sweep folder gives IsoFLOP curves, a run directory its loss curve and forecast."""
    from meshtron.train.scaling.runner import is_sweep
    from meshtron.train.scaling.workflow_plots import plot_run_forecast, plot_sweep_fit

    if is_sweep(args.path):
        path, summary = plot_sweep_fit(args.path, args.out, fit_path=args.fit, held_out=args.held_out)
    else:
        if args.fit or args.held_out:
            raise UserError("plot: --fit and --held-out are for a sweep folder; a run directory plots its own curve")
        path, summary = plot_run_forecast(args.path, args.out)
    result = {"plot": str(path)} | summary
    return result, [(k, str(v)) for k, v in result.items()]

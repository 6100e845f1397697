"""`meshtron scaling`: Chinchilla budgets, exact FLOP counts, fits of your runs and sweep plans.

    meshtron scaling optimal --compute 5.76e23          compute-optimal N and D for a budget
    meshtron scaling optimal --params 7e9               tokens that make 7B parameters optimal
    meshtron scaling loss --params 70e9 --tokens 1.4e12 predicted loss
    meshtron scaling compute --devices 256 --peak h100 --mfu 0.4 --days 30
    meshtron scaling flops --config llama-7b            exact parameters and FLOPs per token/step
    meshtron scaling fit runs.jsonl RUN_DIR ... --plot fit.png
    meshtron scaling sweep --compute 1e16 3e16 1e17 --out sweep/ --plot sweep.png [--run]
    meshtron scaling run sweep/ | predict --fit fit.json ... | plot RUN_DIR   (tools/scaling_workflow.py)

Every subcommand takes --law (hoffmann, hoffmann-rounded, epoch), --E --A --B --alpha --beta to
override constants, and --json to print one JSON object instead of a table.
"""

from __future__ import annotations

import argparse
import json
import math

from meshtron.configs.errors import UserError
from meshtron.tools.scaling_workflow import add_parsers, plot_command, predict_command, run_sweep_command
from meshtron.train.scaling.laws import (DEFAULT_LAW, LAWS, allocation, cluster_compute, get_law,
                                         kaplan_optimal_params, optimal_by_compute, optimal_by_params,
                                         optimal_by_tokens)

_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def _number(text, flag: str) -> float:
    """'5.76e23', '1_000', '70B', '1.4T' -> float; anything else is a one-line UserError."""
    raw = str(text).strip().replace("_", "").replace(",", "")
    scale = _SUFFIXES.get(raw[-1:].lower(), 1.0) if raw[-1:].isalpha() else 1.0
    try:
        value = float(raw[:-1] if scale != 1.0 else raw) * scale
    except ValueError:
        raise UserError(f"{flag} {text!r}: not a number; write it like 5.76e23 or 70B") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{flag} {text}: must be a positive number")
    return value


def add_arguments(parser) -> None:
    """Subcommands optimal, loss, compute, flops, fit, sweep, each with the law and --json options."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--law", default=DEFAULT_LAW, help=f"constants: {', '.join(LAWS)} (default {DEFAULT_LAW})")
    for name in ("E", "A", "B", "alpha", "beta"):
        common.add_argument(f"--{name}", default=None, metavar="X", help=f"override the law's {name}")
    common.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sub = parser.add_subparsers(dest="scaling_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("optimal", parents=[common], help="compute-optimal N and D for a budget, a size or a dataset")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--compute", metavar="C", help="training FLOPs, e.g. 5.76e23")
    which.add_argument("--params", metavar="N", help="parameters, e.g. 7e9 or 7B")
    which.add_argument("--tokens", metavar="D", help="training tokens, e.g. 1.4e12 or 1.4T")
    p.add_argument("--unique-tokens", metavar="U", help="unique tokens in the data (with --compute: the best N "
                                                        "when D repeats them, Muennighoff et al. 2023)")

    p = sub.add_parser("loss", parents=[common], help="predicted loss of N parameters on D tokens")
    p.add_argument("--params", metavar="N", required=True)
    p.add_argument("--tokens", metavar="D", required=True)
    p.add_argument("--unique-tokens", metavar="U", help="unique tokens in the data: D beyond them repeats "
                                                        "(data-constrained law of Muennighoff et al. 2023)")

    p = sub.add_parser("compute", parents=[common], help="the budget a cluster buys, then its optimal N and D")
    p.add_argument("--devices", metavar="K", required=True)
    p.add_argument("--peak", metavar="FLOPS", required=True,
                   help="peak FLOP/s per device, or a device name (h100, tpu v5p)")
    p.add_argument("--mfu", metavar="U", required=True, help="model FLOPs utilisation, a fraction like 0.4")
    duration = p.add_mutually_exclusive_group(required=True)
    duration.add_argument("--days", metavar="T")
    duration.add_argument("--hours", metavar="T")

    p = sub.add_parser("flops", parents=[common], help="exact parameter count and FLOPs per token and per step")
    p.add_argument("--config", default="tiny", help="preset name or YAML path (default tiny)")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    p = sub.add_parser("fit", parents=[common], help="fit a scaling law to your runs (JSONL or run directories)")
    p.add_argument("runs", nargs="+", metavar="RUNS")
    p.add_argument("--approach", choices=("2", "3", "both"), default="3", help="3 parametric, 2 IsoFLOP (default 3)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N", help="bootstrap refits for 95%% intervals")
    p.add_argument("--starts", default="200", help="grid starts polished by L-BFGS (default 200; 'all' = 4,500)")
    p.add_argument("--plot", metavar="PNG", help="write IsoFLOP curves and the frontier to this PNG")
    p.add_argument("--out", metavar="FIT.json", help="save the fit (with bootstrap refits) for `scaling predict`")

    p = sub.add_parser("sweep", parents=[common], help="plan IsoFLOP sweep configs around N_opt per budget")
    p.add_argument("--compute", nargs="+", required=True, metavar="C", help="FLOP budgets")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the YAML configs and manifest.json")
    p.add_argument("--config", default="tiny", help="base preset or YAML: vocabulary, seq_len, batch (default tiny)")
    p.add_argument("--sizes", type=int, default=7, help="model sizes per budget (default 7)")
    p.add_argument("--span", type=float, default=4.0, help="sizes from N_opt/span to N_opt*span (default 4)")
    p.add_argument("--data", type=int, default=1, help="data-parallel degree the batch must divide by")
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel degree heads and d_ff must divide by")
    p.add_argument("--plot", metavar="PNG", help="write the planned configs on the N-D plane to this PNG")
    p.add_argument("--head-dim", type=int, default=64, help="head width; d_model steps by it (default 64)")
    p.add_argument("--run", action="store_true", help="then train every planned run (as `meshtron scaling run`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the base config")
    add_parsers(sub, common, _number)


def run(args) -> int:
    """Run one scaling subcommand; print a table, or one JSON object with --json."""
    constants = {k: None if getattr(args, k) is None else _number(getattr(args, k), f"--{k}")
                 for k in ("A", "B", "alpha", "beta")}
    constants["E"] = None if args.E is None else _nonnegative(args.E)
    law = get_law(args.law, **constants)
    result, rows = _HANDLERS[args.scaling_command](args, law)
    if args.json:
        from meshtron.tools.cli import json_out

        json_out(result)
    else:
        width = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0


def _nonnegative(text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--E {text!r}: not a number") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"--E {text}: the irreducible loss must be >= 0")
    return value


def _allocation_rows(d: dict) -> list:
    from meshtron.train.scaling.report import human

    return [("N (parameters)", f"{human(d['N'])}  ({d['N']:,.0f})"),
            ("D (tokens)", f"{human(d['D'])}  ({d['D']:,.0f})"), ("C = 6ND (FLOPs)", f"{d['C']:.4g}"),
            ("tokens per parameter", f"{d['tokens_per_param']:.1f}"), ("predicted loss", f"{d['loss']:.4f}"),
            ("law", _law_text(d["law"]))]


def _law_text(c: dict) -> str:
    return f"{c['name']}: E={c['E']:.4g} A={c['A']:.4g} B={c['B']:.4g} alpha={c['alpha']:.4g} beta={c['beta']:.4g}"


def _optimal(args, law):
    unique = getattr(args, "unique_tokens", None)
    if unique is not None:
        if args.compute is None:
            raise UserError("optimal --unique-tokens: give it with --compute (the best N and D for a budget)")
        from meshtron.train.scaling.repeat import optimal_constrained

        result = optimal_constrained(_number(args.compute, "--compute"), _number(unique, "--unique-tokens"), law)
        return result, _allocation_rows(result) + [("repeated data", _repeat_text(result["data_constrained"]))]
    if args.compute is not None:
        result = optimal_by_compute(_number(args.compute, "--compute"), law).as_dict()
        # Kaplan's N excludes embeddings; shown for comparison, not as advice.
        result["kaplan_N"] = kaplan_optimal_params(result["C"])
        rows = _allocation_rows(result) + [("Kaplan et al. N_opt", f"{result['kaplan_N']:.3g} (non-embedding)")]
        return result, rows
    if args.params is not None:
        result = optimal_by_params(_number(args.params, "--params"), law).as_dict()
    else:
        result = optimal_by_tokens(_number(args.tokens, "--tokens"), law).as_dict()
    return result, _allocation_rows(result)


def _loss(args, law):
    from meshtron.train.scaling.report import allocation_sentence

    result = allocation(_number(args.params, "--params"), _number(args.tokens, "--tokens"), law).as_dict()
    optimal = optimal_by_compute(result["C"], law)
    result["optimal"] = {k: v for k, v in optimal.as_dict().items() if k != "law"}
    result["allocation"] = allocation_sentence(result["N"], optimal.N)
    rows = _allocation_rows(result) + [
        ("optimal at this C", f"N {optimal.N:.3g}, D {optimal.D:.3g}, loss {optimal.loss:.4f}"),
        ("allocation", result["allocation"])]
    if args.unique_tokens is not None:
        from meshtron.train.scaling.repeat import data_constrained

        constrained = data_constrained(result["N"], result["D"], _number(args.unique_tokens, "--unique-tokens"), law)
        result |= {"loss_without_repeats": result["loss"], "loss": constrained.loss,
                   "data_constrained": constrained.as_dict()}
        rows[4] = ("predicted loss", f"{constrained.loss:.4f}")
        rows.append(("repeated data", _repeat_text(result["data_constrained"])))
    return result, rows


def _repeat_text(dc: dict) -> str:
    return (f"{dc['epochs']:.2f} epochs over {dc['unique_tokens']:.4g} unique tokens: D' {dc['D_effective']:.4g}, "
            f"N' {dc['N_effective']:.4g} (Muennighoff et al. 2023); {dc['loss_without_repeats']:.4f} without repeats")


def _compute(args, law):
    from meshtron.train.planner.hardware import table_peak

    devices = _number(args.devices, "--devices")
    try:
        peak = _number(args.peak, "--peak")
    except UserError:
        peak = table_peak(args.peak)  # a device name: "h100", "TPU v5p", ...
        if peak is None:
            raise UserError(f"--peak {args.peak!r}: give FLOP/s per device (989e12) or a known device "
                            "(h100, a100, tpu v4, v5e, v5p, v6e)") from None
    seconds = _number(args.days, "--days") * 86400 if args.days is not None else _number(args.hours, "--hours") * 3600
    C = cluster_compute(devices, peak, _number(args.mfu, "--mfu"), seconds)
    result, rows = _optimal(argparse.Namespace(compute=C, params=None, tokens=None), law)
    result |= {"devices": devices, "peak_flops_per_device": peak, "mfu": float(args.mfu), "seconds": seconds}
    rows.insert(0, ("cluster", f"{devices:g} x {peak:.3g} FLOP/s x MFU {float(args.mfu):g} x {seconds:g} s"))
    return result, rows


def _flops(args, law):
    from meshtron.configs import load_config
    from meshtron.model.counting import count_params, flops_per_token

    config = load_config(args.config, args.overrides)
    counts = count_params(config.model)
    per_token = flops_per_token(config.model)
    tokens_per_step = config.train.batch_size * config.model.seq_len
    planned = allocation(counts.total, config.train.steps * tokens_per_step, law).as_dict()
    result = planned | {"config": config.name, "params_total": counts.total,
                        "params_non_embedding": counts.non_embedding, "flops_per_token": per_token,
                        "tokens_per_step": tokens_per_step,
                        "flops_per_step": {k: v * tokens_per_step for k, v in per_token.items()}}
    rows = [("config", config.name), ("parameters", f"{counts.total:,}"),
            ("non-embedding", f"{counts.non_embedding:,}"),
            ("tokens per step",
             f"{tokens_per_step:,} (batch {config.train.batch_size} x seq_len {config.model.seq_len})"),
            ("FLOPs per token / step", "")]
    rows += [(f"  {k}", f"{v:.4g} / {v * tokens_per_step:.4g}") for k, v in per_token.items()]
    rows += [("planned run", f"{config.train.steps} steps: D {planned['D']:.3g}, C = 6ND {planned['C']:.3g}, "
                             f"{planned['tokens_per_param']:.1f} tokens/param, predicted loss {planned['loss']:.4f}")]
    return result, rows


def _fit(args, law):
    from meshtron.train.scaling.fit import fit_approach2, fit_approach3, load_runs

    excluded = []
    runs = load_runs(args.runs, excluded)
    starts = "all" if args.starts == "all" else int(_number(args.starts, "--starts"))
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap {args.bootstrap}: must be >= 0")
    fit3 = fit_approach3(runs, starts=starts, bootstrap=args.bootstrap) if args.approach in ("3", "both") else None
    fit2 = fit_approach2(runs) if args.approach in ("2", "both") else None
    result = {"n_runs": len(runs.N), "loss_used": "final evaluation loss of each run directory",
              "excluded": [{"run": name, "reason": why} for name, why in excluded], "sources": list(runs.sources)}
    rows = [("runs", f"{len(runs.N)} (loss: the final evaluation loss of each run directory)")]
    rows += [(f"  left out {name}", why) for name, why in excluded]
    if fit3:
        result |= fit3.as_dict()
        for key in ("E", "A", "B", "alpha", "beta", "a", "b"):
            interval = fit3.intervals.get(key)
            extra = f"  (95%: {interval[0]:.4g} .. {interval[1]:.4g})" if interval else ""
            rows.append((f"Approach 3 {key}", f"{result[key]:.4g}{extra}"))
    if fit2:
        result["approach2"] = fit2.as_dict()
        if not fit3:
            result |= {"a": fit2.a, "b": fit2.b}
        rows += [("Approach 2 a (N_opt ∝ C^a)", f"{fit2.a:.4f}"), ("Approach 2 b (D_opt ∝ C^b)", f"{fit2.b:.4f}")]
        rows += [(f"  C {b['C']:.3g}", f"N_opt {b['N_opt']:.3g}, D_opt {b['D_opt']:.3g}, loss {b['loss_min']:.4f}"
                  + (" (extrapolated)" if b["extrapolated"] else "")) for b in fit2.budgets]
    if args.plot:
        from meshtron.train.scaling.plots import plot_fit

        result["plot"] = str(plot_fit(runs, args.plot, fit3=fit3, fit2=fit2, reference=law))
        rows.append(("plot", result["plot"]))
    if args.out:
        _save_json(result, args.out)
        rows.append(("saved", f"{args.out} (use it with `meshtron scaling predict --fit {args.out}`)"))
    return result, rows


def _save_json(result: dict, path) -> None:
    from pathlib import Path

    try:
        Path(path).write_text(json.dumps(result, indent=1), encoding="utf-8")
    except OSError as e:
        raise UserError(f"--out {path}: cannot write it ({e.__class__.__name__})") from None


def _sweep(args, law):
    from meshtron.train.scaling.sweep import plan_sweep, write_sweep

    budgets = [_number(c, "--compute") for c in args.compute]
    plan = plan_sweep(budgets, law, base=args.config, sizes=args.sizes, span=args.span, data=args.data,
                      tensor=args.tensor, overrides=args.overrides, head_dim=args.head_dim)
    manifest = write_sweep(plan, args.out, law)
    result = json.loads(manifest.read_text()) | {"manifest": str(manifest)}
    if args.run:
        result["sweep"], _ = run_sweep_command(argparse.Namespace(sweep_dir=args.out, max_runs=None, json=args.json),
                                               law)
    rows = [(f"C {r['budget']:.3g}", f"N {r['N']:>13,}  L{r['n_layers']:<3} d{r['d_model']:<5} steps {r['steps']:>8,}  "
             f"D {r['D']:.3g}  loss {r['predicted_loss']:.3f}") for r in result["runs"]]
    rows.append(("manifest", str(manifest)))
    if args.plot:
        from meshtron.train.scaling.plots import plot_sweep

        result["plot"] = str(plot_sweep(plan, law, args.plot))
        rows.append(("plot", result["plot"]))
    return result, rows


_HANDLERS = {"optimal": _optimal, "loss": _loss, "compute": _compute, "flops": _flops, "fit": _fit, "sweep": _sweep,
             "run": run_sweep_command, "predict": lambda args, law: predict_command(args, law, _number),
             "plot": plot_command}

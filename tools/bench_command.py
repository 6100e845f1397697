"""`meshtron bench [--config NAME|PATH] [key=value ...] [--baseline] [--depths 4,48] [--strategies] [--json]`."""

from __future__ import annotations

import dataclasses

from meshtron.configs.errors import UserError
from meshtron.configs.loader import load_config

STRATEGIES = {  # the layouts of the parallel issue, on 8 devices
    "data=8": dict(replica=1, data=8, tensor=1),
    "data=4 x tensor=2": dict(replica=1, data=4, tensor=2),
    "data=2 x tensor=4": dict(replica=1, data=2, tensor=4),
    "replica=2 x data=2 x tensor=2": dict(replica=2, data=2, tensor=2),
    # pipeline layouts of the pipeline issue: two stages, as many micro-batches
    "pipeline=2 x data=4, 1f1b": dict(pipeline=2, replica=1, data=4, tensor=1, microbatches=2, schedule="1f1b"),
    "pipeline=2 x data=2 x tensor=2, gpipe": dict(pipeline=2, replica=1, data=2, tensor=2, microbatches=2,
                                                  schedule="gpipe"),
}


def add_arguments(parser) -> None:
    """Options of `meshtron bench`."""
    parser.add_argument("--config", default="tiny", metavar="NAME|PATH", help="preset or YAML file (default tiny)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
    parser.add_argument("--baseline", action="store_true",
                        help="also time two plain-JAX steps of the same shapes, interleaved: an independent one "
                             "(tools/baseline.py) and one making Meshtron's choices (tools/baseline_same.py)")
    parser.add_argument("--depths", default=None, metavar="L1,L2",
                        help="compile the step at these depths and report compile times (e.g. 4,48)")
    parser.add_argument("--strategies", action="store_true",
                        help="time each sharding layout on 8 devices beside one device")
    parser.add_argument("--stages", default="0,1,2,3", metavar="S,..", help="ZeRO stages for --strategies")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _with(config, **parallel):
    return dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, **parallel))


def run(args) -> int:
    """Measure, then print a table (or JSON)."""
    import jax

    from meshtron.tools import bench

    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    config = load_config(args.config, args.overrides)
    device = jax.devices()[0]
    seconds, compiled = bench.compile_seconds(config)
    timer, training = bench.meshtron_timer(config)
    timers = {"meshtron": timer}
    if args.baseline:
        if jax.device_count() > 1 and training.shape.devices > 1:
            raise UserError("--baseline compares one device: run it without --cpu-devices / with parallel.data=1")
        independent = bench.baseline_timer(config)
        if independent is not None:
            timers["baseline"] = independent
        timers["same_choices"] = bench.same_choices_timer(config, training)
    times = bench.interleaved(timers, args.steps)
    step_seconds = bench.median(times["meshtron"])
    memory, memory_source = bench.peak_memory_bytes(compiled)
    report = {
        "config": config.name, "platform": device.platform, "device_kind": device.device_kind,
        "devices": training.shape.devices, "mesh": training.shape.as_dict(), "zero_stage": config.parallel.zero_stage,
        "batch_size": config.train.batch_size, "seq_len": config.model.seq_len,
        "compute_dtype": str(jax.numpy.dtype(bench.compute_dtype(config.model))),
        "compile_seconds": seconds, "step_seconds_median": step_seconds,
        "step_seconds_min": min(times["meshtron"]), "step_seconds_max": max(times["meshtron"]),
        **bench.throughput_report(config, step_seconds, training.shape.devices),
        "peak_memory_bytes": memory, "peak_memory_source": memory_source,
    }
    if args.baseline:
        tokens = config.train.batch_size * config.model.seq_len
        for key, name in (("baseline", "baseline"), ("baseline_same_choices", "same_choices")):
            base = bench.median(times[name]) if name in times else None
            report[key] = None if base is None else {
                "step_seconds_median": base, "tokens_per_s": tokens / base, "meshtron_over_baseline": base / step_seconds}
    if args.depths:
        report.update(_depths(config, args.depths))
    if args.strategies:
        try:
            stages = sorted({int(x) for x in args.stages.split(",")})
        except ValueError:
            raise UserError(f"--stages {args.stages}: give ZeRO stages separated by commas, e.g. 0,3") from None
        if not set(stages) <= {0, 1, 2, 3}:
            raise UserError(f"--stages {args.stages}: ZeRO stages are 0, 1, 2 and 3")
        report["strategies"] = _strategies(config, args.steps, stages)
    if args.json:
        from meshtron.tools.cli import json_out

        json_out(report)
    else:
        print(_format(report))
    return 0


def _depths(config, depths_arg: str) -> dict:
    from meshtron.tools import bench

    try:
        depths = [int(d) for d in depths_arg.split(",")]
    except ValueError:
        raise UserError(f"--depths {depths_arg}: give layer counts separated by commas, e.g. 4,48") from None
    compile_times = {d: bench.compile_seconds(dataclasses.replace(
        config, model=dataclasses.replace(config.model, n_layers=d)))[0] for d in depths}
    return {"compile_seconds_by_depth": compile_times,
            "compile_ratio_deepest_to_shallowest": compile_times[max(depths)] / compile_times[min(depths)]}


def _strategies(config, steps: int, stages: list[int]) -> list[dict]:
    import jax

    from meshtron.tools import bench

    if jax.device_count() < 8:
        raise UserError("--strategies needs 8 devices; add --cpu-devices 8 to simulate them")
    rows = []
    single, _ = bench.meshtron_timer(_with(config, replica=1, data=1, tensor=1, zero_stage=0), jax.devices()[:1])
    timers = {"1 device": single}
    for name, layout in STRATEGIES.items():
        for stage in stages:
            timers[f"{name}, ZeRO-{stage}"], _ = bench.meshtron_timer(_with(config, zero_stage=stage, **layout),
                                                                      jax.devices()[:8])
    times = bench.interleaved(timers, steps)
    tokens = config.train.batch_size * config.model.seq_len
    for name, values in times.items():
        rows.append({"layout": name, "step_seconds_median": bench.median(values),
                     "tokens_per_s": tokens / bench.median(values)})
    return rows


def _format(r: dict) -> str:
    gflops = lambda x: f"{x / 1e9:,.1f} GFLOP/s" if x else "n/a"  # noqa: E731
    lines = [
        f"config {r['config']} on {r['devices']} {r['platform']} device(s) ({r['device_kind']}), mesh {r['mesh']}, "
        f"ZeRO-{r['zero_stage']}, {r['compute_dtype']}",
        f"compile           {r['compile_seconds']:.2f} s",
        f"step              {r['step_seconds_median'] * 1000:.1f} ms median "
        f"(min {r['step_seconds_min'] * 1000:.1f}, max {r['step_seconds_max'] * 1000:.1f})",
        f"throughput        {r['tokens_per_s']:,.0f} tokens/s, {gflops(r['achieved_flops_per_s'])} (model FLOPs)",
        f"MFU               {_pct(r['mfu_vs_published'])} of the published peak ({gflops(r['peak_flops_published'])}), "
        f"{_pct(r['mfu_vs_measured'])} of a matmul peak measured now ({gflops(r['peak_flops_measured'])})",
        f"peak memory       {_bytes(r['peak_memory_bytes'])} per device ({r['peak_memory_source']})",
    ]
    for key, what in (("baseline", "independent plain JAX"), ("baseline_same_choices", "same choices as Meshtron")):
        if key in r:
            b = r[key]
            lines.append(f"{key:<17} n/a (the independent baseline writes GPT-2 and LLaMA layouts only)" if b is None
                         else f"{key:<17} {b['tokens_per_s']:,.0f} tokens/s ({what}); Meshtron = "
                         f"{b['meshtron_over_baseline']:.3f}x")
    if "compile_seconds_by_depth" in r:
        depth = ", ".join(f"{d} layers {s:.2f} s" for d, s in r["compile_seconds_by_depth"].items())
        lines.append(f"compile by depth  {depth} (ratio {r['compile_ratio_deepest_to_shallowest']:.2f})")
    for row in r.get("strategies", []):
        lines.append(f"  {row['layout']:<40} {row['step_seconds_median'] * 1000:8.1f} ms  "
                     f"{row['tokens_per_s']:>10,.0f} tokens/s")
    return "\n".join(lines)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _bytes(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:,.1f} MiB"

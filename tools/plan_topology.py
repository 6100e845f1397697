"""`meshtron plan --topology NAME`: a config planned for a TPU slice, its real step compiled for it,
and `--suggest`: the layout to train with.

    meshtron plan --config llama-7b --topology v5p-128 parallel.zero_stage=3           formulas, HBM of the chip
    meshtron plan --config llama-7b --topology v5p-128 parallel.zero_stage=3 --compile  + libtpu's compiled step
    meshtron plan --suggest --topology v5e-256 --config llama2-70b --seq 4096 --batch 256

Compiling needs libtpu (`pip install "meshtron[tpu-compile]"`), not a TPU.
"""

from __future__ import annotations

from meshtron.configs.errors import ConfigError, UserError
from meshtron.configs.loader import load_config

GIB = 2**30


def add_arguments(parser) -> None:
    """The options `meshtron plan` gains for TPU slices."""
    parser.add_argument("--topology", default=None, metavar="NAME",
                        help="plan for a TPU slice: v4-128, v5e-256, v5p-1024, v6e-64, 2xv5e-256 (libtpu's "
                             "v5e:4x4 too); with --compile, compile the real step for it (needs libtpu)")
    parser.add_argument("--suggest", action="store_true",
                        help="with --topology: search tensor degree, ZeRO stage, remat and micro-batches, rank the "
                             "layouts that fit by a roofline step time, compile the best three")
    parser.add_argument("--seq", type=int, default=None, metavar="N", help="with --suggest: sequence length")
    parser.add_argument("--batch", type=int, default=None, metavar="N", help="with --suggest: global batch")


def run(args) -> tuple[dict, list[str]]:
    """The report and its text lines for `--topology` (and `--suggest`)."""
    from meshtron.train.planner.topology import parse_topology
    from meshtron.train.planner.tpu import require_libtpu, tpu_config

    topology = parse_topology(args.topology)
    if args.devices or args.params or args.device_memory:
        raise UserError("--topology sets the devices and their memory; drop --devices, --params and --device-memory")
    overrides = list(args.overrides) + ([f"model.seq_len={args.seq}"] if args.seq else []) + (
        [f"train.batch_size={args.batch}"] if args.batch else [])
    config = tpu_config(load_config(args.config or "tiny", overrides))
    if args.suggest or args.compile:
        require_libtpu(topology)
    if args.suggest:
        return _suggest(config, topology)
    _check_layout(config, topology)
    report = _topology_report(config, topology, args.precision, args.compile)
    return report, _topology_text(report)


def _check_layout(config, topology) -> None:
    """One line, before anything is compiled, when the config's degrees cannot span the slice."""
    p = config.parallel
    fixed = p.pipeline * p.replica * p.tensor * (p.data if p.data != -1 else 1)
    if (p.data != -1 and fixed != topology.chips) or topology.chips % fixed:
        more = "more" if fixed > topology.chips else "other"
        raise UserError(f"the layout replica x data x tensor = {p.replica} x {p.data} x {p.tensor} needs {more} chips "
                        f"than {topology.name} has ({topology.chips}); use parallel.data=-1 to fill the slice, "
                        f"or another --topology")


def _topology_report(config, topology, precision: str, compile_step: bool) -> dict:
    from meshtron.tools.plan_command import _config_report

    try:
        report = _config_report(config, topology.chips, precision, float(topology.hbm_bytes), False,
                                topology.planner_platform)
    except ConfigError as e:  # _config_report's advice about --devices does not apply to a slice
        raise ConfigError(str(e).split("; or plan for another device count")[0]) from None
    chip = topology.chip
    report["topology"] = {"name": topology.name, "compiler_topology": topology.libtpu_name, "chips": topology.chips,
                          "compiler": "libtpu" if chip.platform == "tpu" else "the CUDA plugin",
                          "slices": topology.slices, "device_kind": chip.device_kind, "hbm_bytes": chip.hbm_bytes,
                          "peak_bf16_flops": chip.peak_bf16_flops, "ici_bytes_per_s": chip.ici_bytes_per_s,
                          "dcn_bytes_per_s": chip.dcn_bytes_per_s}
    if compile_step:
        report["compiled"] = compiled_report(config, topology)
    return report


def compiled_report(config, topology) -> dict:
    """The compiled step's figures per chip, as plain numbers."""
    from meshtron.parallel.mesh import resolve_mesh_shape
    from meshtron.train.planner.tpu import OutOfHbm, compile_for_topology, counted_flops

    shape = resolve_mesh_shape(config, topology.chips)
    try:
        figures = compile_for_topology(config, shape, topology)
    except OutOfHbm as e:  # the compiler's own verdict: it does not fit
        return {"fits": False, "total_bytes": e.used_bytes, "hbm_capacity_bytes": e.capacity_bytes,
                "compile_seconds": e.seconds, "out_of_hbm": str(e), **counted_flops(config, shape)}
    c = figures.compiled
    return {"argument_bytes": c.argument_bytes, "temp_bytes": c.temp_bytes, "output_bytes": c.output_bytes,
            "alias_bytes": c.alias_bytes, "generated_code_bytes": figures.generated_code_bytes,
            "total_bytes": figures.total_bytes, "fits": figures.fits, "state_bytes": figures.state_bytes,
            "state_padding_bytes": figures.state_padding_bytes, "batch_padding_bytes": figures.batch_padding_bytes,
            "flops": figures.flops, **counted_flops(config, shape), "compile_seconds": figures.compile_seconds,
            "comm_elements": c.comm_elements(), "comm_bytes": c.comm_bytes(),
            "comm_elements_by_kind": c.comm_elements_by_kind()}


def _topology_text(r: dict) -> list[str]:
    from meshtron.tools.plan_command import _bytes, _config_text

    t, f, c = r["topology"], r["formula"], r["compiled"]
    lines = [f"topology: {t['name']} = {t['compiler']} {t['compiler_topology']}: {t['chips']} x {t['device_kind']}, "
             f"{t['hbm_bytes'] / GIB:.0f} GiB HBM, {t['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16 per chip", ""]
    lines += _config_text({**r, "compiled": None if not c or c.get("out_of_hbm") else c})
    state = f["params_bytes"] + f["optimizer_bytes"]
    if c and c.get("out_of_hbm"):
        lines += ["", f"compiled for {t['name']} by {t['compiler']}: does NOT fit: the compiler {c['out_of_hbm']} "
                      f"(it refuses to build a step larger than HBM)"]
    elif c:
        same = "equal" if c["state_bytes"] == state else f"DIFFER by {c['state_bytes'] - state:+,} B"
        non_argument = f["temporary_bytes"]
        padding = f" (+{c['state_padding_bytes']:,} B of TPU tile padding)" if c["state_padding_bytes"] else ""
        flops = (f"compiler {c['flops']:.4g} (a scanned body counted once); counting.py "
                 f"{c['model_flops_as_compiled']:.4g} counted the same way "
                 f"({_ratio(c['model_flops_as_compiled'], c['flops'])}), " if c["flops"] else
                 "not reported by this compiler; counting.py ")
        lines += ["", f"compiled for {t['name']} by {t['compiler']} in {c['compile_seconds']:.0f} s (per chip):",
                  f"  model state (params + optimizer)  formula {_bytes(state)}, compiled {_bytes(c['state_bytes'])}: "
                  f"{same}{padding}",
                  f"  temporaries                       formula {_bytes(non_argument)}, compiled {_bytes(c['temp_bytes'])} "
                  f"({_ratio(non_argument, c['temp_bytes'])})" + (
                      "; a small step's temporaries fit the chip's on-chip memory, not HBM" if not c["temp_bytes"] else ""),
                  f"  HBM: arguments {_bytes(c['argument_bytes'])} + temporaries {_bytes(c['temp_bytes'])} + code "
                  f"{_bytes(c['generated_code_bytes'])} = {c['total_bytes'] / GIB:.2f} GiB of "
                  f"{t['hbm_bytes'] / GIB:.0f} GiB: " + ("fits" if c["fits"] else "does NOT fit"),
                  f"  FLOPs per chip per step: {flops}{c['model_flops']:.4g} for the whole step"]
    return lines


def _ratio(formula: float, compiled: float) -> str:
    return "formula/compiled -" if not compiled else f"formula/compiled {formula / compiled:.2f}"


# -- --suggest ---------------------------------------------------------------------------------------------
def _suggest(config, topology) -> tuple[dict, list[str]]:
    from meshtron.tools.plan_command import _bytes
    from meshtron.train.planner.layouts import changed_overrides, search

    candidates = search(config, topology)
    if not candidates:
        raise UserError(f"no layout of {config.name} fits {topology.name} ({topology.hbm_bytes / GIB:.0f} GiB per chip) "
                        f"with tensor degree, ZeRO stage, remat and micro-batches; try a larger --topology or a "
                        f"smaller --batch / --seq")
    confirmed, winner = [], None
    for candidate in candidates[:3]:
        compiled = compiled_report(candidate.plan.config, topology)
        confirmed.append(compiled)
        if winner is None and compiled["fits"]:
            winner = candidate
    rows = [_candidate_row(c, config) for c in candidates[:10]]
    for row, compiled in zip(rows, confirmed):
        row["compiled"] = {k: compiled.get(k) for k in ("total_bytes", "fits", "argument_bytes", "temp_bytes")}
    report = {"config": config.name, "topology": topology.name, "chips": topology.chips,
              "hbm_bytes": topology.hbm_bytes, "layouts_fitting": len(candidates), "ranked": rows,
              "winner": None if winner is None else changed_overrides(config, winner)}
    lines = [f"suggest: {config.name} on {topology.describe()}",
             f"{len(candidates)} layouts fit by the formulas; fastest by the roofline (compute at peak + tensor-axis "
             f"traffic, raced against data-axis traffic, at ICI/DCN bandwidth):",
             f"  {'tensor':>6}{'zero':>5}{'remat':>6}{'accum':>6}{'formula':>11}{'compute':>9}{'tensor':>8}"
             f"{'data':>8}{'step':>8}  compiled"]
    for row in rows:
        done = row.get("compiled")
        note = "" if not done else f"{done['total_bytes'] / GIB:.2f} GiB " + ("fits" if done["fits"] else "NO FIT")
        lines.append(f"  {row['tensor']:>6}{row['zero_stage']:>5}{row['remat']:>6}{row['grad_accum']:>6}"
                     f"{_bytes(row['total_bytes']):>11}{_seconds(row['compute_s']):>9}{_seconds(row['tensor_s']):>8}"
                     f"{_seconds(row['data_s']):>8}{_seconds(row['step_s']):>8}  {note}")
    if winner is None:
        lines.append("none of the three fastest fits once compiled; the formulas are short here: try remat or "
                     "more micro-batches")
    else:
        lines += ["", f"winner: meshtron train --config {config.name} " + " ".join(report["winner"])]
    return report, lines


def _seconds(value: float) -> str:
    """0.0123 -> '12.3ms', 1.5 -> '1.50s'."""
    return f"{value * 1e3:.3g}ms" if value < 1 else f"{value:.3g}s"


def _candidate_row(candidate, config) -> dict:
    from meshtron.train.planner.layouts import changed_overrides

    p = candidate.plan
    return {"overrides": list(candidate.overrides), "changed": changed_overrides(config, candidate),
            "tensor": p.shape.tensor, "data": p.shape.data, "replica": p.shape.replica, "zero_stage": p.zero_stage,
            "remat": p.config.model.remat, "grad_accum": p.config.train.grad_accum, "total_bytes": p.total_bytes,
            "compute_s": candidate.compute_seconds, "tensor_s": candidate.tensor_seconds,
            "data_s": candidate.data_seconds, "step_s": candidate.step_seconds}

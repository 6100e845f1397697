"""`meshtron plan`: per-device memory and per-step communication of a config on a mesh.

    meshtron plan --config llama-7b --devices 64 parallel.zero_stage=3       formulas, no devices needed
    meshtron --cpu-devices 8 plan parallel.data=4 parallel.tensor=2 --compile  + the compiled step's figures
    meshtron plan --params 7.5e9 --devices 64 --precision mixed               the ZeRO paper's table
    meshtron plan --config llama-7b --devices 8 --device-memory 16GB          does it fit? what to change

Bytes are decimal (1 GB = 1e9 bytes). Communication is ring-algorithm volume sent per device per step.
"""

from __future__ import annotations

import dataclasses
import re

from meshtron.configs.errors import ConfigError, UserError
from meshtron.configs.loader import load_config
from meshtron.tools import plan_topology

_COUNT_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}
_BYTE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
               "tib": 2**40}


def _positive(text: str, flag: str, units: dict, example: str) -> float:
    """'7.5e9', '7.5B', '80GB', '16GiB' -> float (units lower-cased); anything else is a one-line UserError."""
    match = re.fullmatch(r"\s*([0-9][0-9_.,]*(?:e[+-]?\d+)?)\s*([a-z]*)\s*", str(text).lower())
    scale = units.get(match.group(2)) if match else None
    if match and not match.group(2):
        scale = 1
    try:
        value = float(match.group(1).replace("_", "").replace(",", "")) * scale
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{flag} {text!r}: not understood; write it like {example}") from None
    if not 0 < value < float("inf"):
        raise UserError(f"{flag} {text}: must be a positive, finite number")
    return value


def _device_count(text: str) -> int:
    value = _positive(text, "--devices", {}, "64")
    if not value.is_integer():
        raise UserError(f"--devices {text}: give a whole number of devices")
    return int(value)


def add_arguments(parser) -> None:
    """Options of `meshtron plan`."""
    parser.add_argument("--config", default=None, metavar="NAME|PATH", help="preset or YAML file (default tiny)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. parallel.tensor=2")
    parser.add_argument("--devices", default=None, metavar="N",
                        help="plan for N devices (they need not exist; default: the visible devices)")
    parser.add_argument("--compile", action="store_true",
                        help="also compile the step ahead of time on the devices and read its memory and collectives")
    parser.add_argument("--precision", choices=("config", "mixed"), default="config",
                        help="config: the run's dtypes; mixed: the ZeRO paper's 2+2+12 bytes per parameter")
    parser.add_argument("--params", default=None, metavar="N",
                        help="plan model state for a bare parameter count (e.g. 7.5e9), no model needed")
    parser.add_argument("--device-memory", default=None, metavar="BYTES",
                        help="memory of one device (e.g. 80GB, 16GiB): say whether the plan fits, and what to change")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    plan_topology.add_arguments(parser)


def run(args) -> int:
    """Plan the config (or bare parameter count), print tables or one JSON object."""
    import jax

    if args.topology:
        report, lines = plan_topology.run(args)
        return _print(report, lines, args.json)
    if args.suggest or args.seq or args.batch:
        raise UserError("--suggest, --seq and --batch plan for a TPU slice: add --topology NAME (e.g. v5p-128)")
    config = load_config(args.config or "tiny", args.overrides)
    n_devices = _device_count(args.devices) if args.devices else jax.device_count()
    memory = _positive(args.device_memory, "--device-memory", _BYTE_UNITS, "80GB") if args.device_memory else None
    if args.params is not None:
        if args.compile:
            raise UserError("--compile needs a model config, not a bare --params count; drop one of them")
        report = _bare_report(config, _positive(args.params, "--params", _COUNT_SUFFIXES, "7.5e9"), n_devices,
                              args.precision, memory)
        lines = _bare_text(report)
    else:
        report = _config_report(config, n_devices, args.precision, memory, args.compile)
        lines = _config_text(report)
    return _print(report, lines, args.json)


def _print(report: dict, lines: list[str], as_json: bool) -> int:
    if as_json:
        from meshtron.tools.cli import json_out

        json_out(report)
    else:
        print("\n".join(line.rstrip() for line in lines))
    return 0


# -- a config --------------------------------------------------------------------------------------------
def _config_report(config, n_devices: int, precision: str, memory: float | None, compile_step: bool,
                   platform: str | None = None) -> dict:
    from meshtron.train.planner.plan import make_plan, params_total, suggest
    from meshtron.parallel.rules import describe

    try:
        plan = make_plan(config, n_devices, precision, platform)
    except ConfigError as e:
        raise ConfigError(f"{e}; or plan for another device count with --devices N") from None
    compiled = None
    if compile_step:
        from meshtron.train.planner.compiled import compile_step as compile_figures

        compiled = compile_figures(config, plan.shape)
    m = config.model
    report = {
        "config": config.name, "params_total": params_total(config), "devices": plan.shape.devices,
        "mesh": plan.shape.as_dict(), "zero_stage": plan.zero_stage, "remat": m.remat, "precision": precision,
        "micro_batch": plan.micro_batch, "grad_accum": config.train.grad_accum, "seq_len": m.seq_len,
        "n_layers": m.n_layers, "arch": m.arch, "objective": config.train.objective,
        "stacks": [dataclasses.asdict(s) for s in plan.stacks],
        "activation_bytes_per_element": plan.precision.activation_bytes,
        "formula": _plan_figures(plan),
        "stages": {str(s): {**state, "model_state_bytes": sum(state.values())} for s, state in plan.stages.items()},
        "compiled": None if compiled is None else {
            "argument_bytes": compiled.argument_bytes, "temp_bytes": compiled.temp_bytes,
            "output_bytes": compiled.output_bytes, "alias_bytes": compiled.alias_bytes,
            "comm_elements": compiled.comm_elements(), "comm_bytes": compiled.comm_bytes(),
            "comm_elements_by_kind": compiled.comm_elements_by_kind()},
        "rules": [list(row) for row in describe(plan.zero_stage)],
        "pipeline": _pipeline_report(config, plan, compile_step),
    }
    report.update(_fit(plan.total_bytes, memory))
    if report["fits"] is False:
        found = suggest(config, n_devices, memory, precision, platform)
        report["suggestion"] = None if found is None else {
            "overrides": list(found.overrides), "description": found.description,
            "total_bytes": found.plan.total_bytes, "formula": _plan_figures(found.plan)}
    return report


def _pipeline_report(config, plan, compile_step: bool) -> dict | None:
    """Bubble and activations in flight of the schedule; compiled, the temporaries of GPipe and 1F1B side by side."""
    if plan.pipeline is None:
        return None
    report = dataclasses.asdict(plan.pipeline)
    if compile_step:
        from meshtron.train.planner.compiled import compile_step as compile_figures

        report["compiled_temp_bytes"] = {}
        for schedule in ("gpipe", "1f1b"):
            variant = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, schedule=schedule))
            report["compiled_temp_bytes"][schedule] = compile_figures(variant, plan.shape).temp_bytes
    return report


def _pipeline_text(r: dict) -> list[str]:
    p = r.get("pipeline")
    if not p:
        return []
    lines = [f"pipeline: {p['stages']} stages, {p['microbatches']} micro-batches, schedule {p['schedule']}"
             + (f" with {p['virtual_stages']} virtual stages" if p["virtual_stages"] > 1 else "")
             + f": {p['ticks']} ticks, bubble {p['bubble_fraction']:.1%} (formula {p['bubble_formula']:.1%}), "
             f"activations of {p['in_flight']} micro-batch(es) in flight per stage"]
    for schedule, temp in (p.get("compiled_temp_bytes") or {}).items():
        lines.append(f"  compiled temporaries with {schedule:<6}{_bytes(temp):>12}")
    return lines + [""]


def _plan_figures(plan) -> dict:
    """The formula side of a plan as plain numbers (bytes per device; elements/bytes per step per axis)."""
    return {
        "params_bytes": plan.params_bytes, "grads_bytes": plan.grads_bytes, "optimizer_bytes": plan.optimizer_bytes,
        "batch_bytes": plan.batch_bytes, "step_bytes": plan.step_bytes, "argument_bytes": plan.argument_bytes,
        "gathered_bytes": plan.gathered_bytes, "activation_bytes": plan.activation_bytes,
        "compute_copy_bytes": plan.compute_copy_bytes, "working_bytes": plan.working_bytes,
        "temporary_bytes": plan.temporary_bytes,
        "activation_bytes_per_layer": plan.activation_bytes_per_layer,
        "activation_bytes_outside_layers": plan.activation_bytes_outside_layers, "total_bytes": plan.total_bytes,
        "comm_elements": plan.comm_elements(), "comm_bytes": plan.comm_bytes(),
        "comm_elements_by_kind": plan.comm_elements_by_kind(),
        "comm_terms": [dataclasses.asdict(t) for t in plan.comm],
    }


def _fit(total_bytes: float, memory: float | None) -> dict:
    return {"device_memory_bytes": memory, "fits": None if memory is None else bool(total_bytes <= memory)}


def _tokens_text(r: dict) -> str:
    """'512 tokens', or an encoder-decoder's '512 input + 114 target tokens'."""
    stacks = r["stacks"]
    if r["arch"] == "encoder_decoder":
        return f"{stacks[0]['tokens']} input + {stacks[1]['tokens']} target tokens"
    return f"{r['seq_len']} tokens"


def _config_text(r: dict) -> list[str]:
    b = r["activation_bytes_per_element"]
    lines = [f"plan: {r['config']} ({r['params_total']:,} parameters) on {r['devices']} devices: "
             + " x ".join(f"{k}={v}" for k, v in r["mesh"].items())
             + f", ZeRO stage {r['zero_stage']}, remat {r['remat']}",
             f"micro-batch: {r['micro_batch']} sequences x {_tokens_text(r)} per device, grad_accum "
             f"{r['grad_accum']}; precision {r['precision']} ({b}-byte activations)", ""]
    lines += _pipeline_text(r) + _memory_lines(r) + [""] + _comm_lines(r) + [""]
    lines += [f"ZeRO stages on this mesh (model state per device; {r['precision']} precision):",
              f"  {'stage':<7}{'params':>12}{'grads':>12}{'optimizer':>12}{'total':>12}"]
    for stage, s in r["stages"].items():
        lines.append(f"  {stage:<7}" + "".join(f"{_bytes(s[k]):>12}" for k in
                                              ("params_bytes", "grads_bytes", "optimizer_bytes", "model_state_bytes"))
                     + ("   <- planned" if int(stage) == r["zero_stage"] else ""))
    lines += ["", f"rules of ZeRO stage {r['zero_stage']} (logical axis -> mesh axes):",
              f"  {'axis':<10}{'params':<14}{'grads':<14}{'optimizer state':<14}"]
    lines += [f"  {a:<10}{p:<14}{g:<14}{o:<14}" for a, p, g, o in r["rules"]]
    return lines + _fit_text(r, r["formula"]["total_bytes"])


def _memory_lines(r: dict) -> list[str]:
    f, c = r["formula"], r["compiled"] or {}
    argument_note = ""
    if c:
        gap = c["argument_bytes"] - f["argument_bytes"]
        argument_note = "equal (memory_analysis argument size)" if gap == 0 else f"DIFFERS by {gap:+,} B"
    rows = [  # (label, formula bytes, compiled bytes, note)
        ("parameters", f["params_bytes"], None, ""),
        ("optimizer state", f["optimizer_bytes"], None, ""),
        (("token batch" if r["objective"] == "causal" else "batch") + (" + step counter" if f["step_bytes"] else ""),
         f["batch_bytes"] + f["step_bytes"], None, BATCH_ARRAYS.get(r["objective"], "")),
        ("= step arguments", f["argument_bytes"], c.get("argument_bytes"), argument_note),
        ("gradients", f["grads_bytes"], None, "transient: built in the backward pass, not a step argument"),
        ("gathered weights (ZeRO-3)", f["gathered_bytes"], None, "embedding/head for the step + one block"),
        *_stack_rows(r),
        ("parameters in compute dtype", f["compute_copy_bytes"], None, "cast once for all layers (XLA)"),
        ("backward working set", f["working_bytes"], None, WORKING_NOTES[r["arch"]]),
        ("= temporaries", f["temporary_bytes"], c.get("temp_bytes"), "compiled: memory_analysis temp size" if c else ""),
        ("total", f["total_bytes"], None, ""),
    ]
    lines = [f"{'memory per device':<34}{'formula':>12}{'compiled' if c else '':>12}"]
    for label, value, compiled_value, note in rows:
        if label.startswith(("gathered", "parameters in")) and not value:
            continue
        compiled_text = _bytes(compiled_value) if compiled_value is not None else ""
        lines.append(f"  {label:<32}{_bytes(value):>12}{compiled_text:>12}"
                     + (f"  {note}" if note else ""))
    lines.append("  activations: Korthikanti et al. 2022 per block, tensor parallel without sequence parallelism "
                 "(norm inputs/outputs whole over the tensor axis), no attention-probability dropout")
    return lines + ([f"  {ARCH_NOTES[r['arch']]}"] if r["arch"] in ARCH_NOTES else [])


BATCH_ARRAYS = {"mlm": "inputs, targets, weights", "prefix_lm": "inputs, targets, weights, prefix",
                "span_corruption": "inputs, decoder inputs, targets, weights"}
WORKING_NOTES = {"decoder": "one block, f32 scores, logits grad (+ZeRO-3 grads)",
                 "encoder": "one block, f32 scores, MLM logits grad (+ZeRO-3 grads)",
                 "encoder_decoder": "largest block, f32 scores, logits and encoder-output grads (+ZeRO-3 grads)"}
ARCH_NOTES = {
    "encoder": "encoder: bidirectional s x s scores; outside the layers the embedding norm, the MLM head (dense, "
               "activation, norm) and float32 logits over every position (the weights pick the masked ones)",
    "encoder_decoder": "encoder-decoder: the encoder over the input tokens, the decoder over the target tokens; "
                       "each decoder block adds cross-attention (K/V of the encoder output, target x input scores)",
}


def _stack_rows(r: dict) -> list[tuple]:
    """Activation rows: one block of each stack, then every layer's and what lies outside them."""
    f, stacks = r["formula"], r["stacks"]
    named = len(stacks) > 1
    rows = [(f"activations per {s['name'] + ' ' if named else ''}layer", s["per_layer_bytes"], None,
             f"{s['tokens']} positions" + (f", cross-attends to {s['cross_tokens']}" if s["cross_tokens"] else ""))
            for s in stacks]
    layers = sum(s["layers"] for s in stacks)
    note = " + ".join(f"{s['layers']} {s['name']}" for s in stacks) + " layers" if named else ""
    outside = ("head", "MLM head: dense, activation, norm, logits") if r["arch"] == "encoder" else ("output", note)
    return rows + [(f"activations ({layers} layers + {outside[0]})", f["activation_bytes"], None, outside[1])]


def _comm_lines(r: dict) -> list[str]:
    f, c = r["formula"], r["compiled"] or {}
    formula_kinds, compiled_kinds = f["comm_elements_by_kind"], c.get("comm_elements_by_kind", {})
    lines = [f"{'communication per device per step':<44}{'formula':>16}{'compiled' if c else '':>16}"]
    axes = list(formula_kinds) + [a for a in compiled_kinds if a not in formula_kinds]
    for axis in axes:
        for kind in sorted({**formula_kinds.get(axis, {}), **compiled_kinds.get(axis, {})}):
            formula_el = _elements(formula_kinds.get(axis, {}).get(kind))
            compiled_el = _elements(compiled_kinds.get(axis, {}).get(kind)) if c else ""
            lines.append(f"  {axis:<12}{kind:<16}{formula_el:>16}{compiled_el:>16}")
        compiled_b = _bytes(c["comm_bytes"].get(axis)) if c else ""
        lines.append(f"  {'':<12}{'= bytes':<16}{_bytes(f['comm_bytes'].get(axis)):>16}{compiled_b:>16}")
    if not axes:
        lines.append("  none: one device")
    lines += ["  formula terms:"] if f["comm_terms"] else []
    lines += [f"    {t['axis']:<8}{t['kind']:<16}{_elements(t['elements']):>16}  {t['what']}" for t in f["comm_terms"]]
    if c:
        lines.append("  compiled: collectives over several axes ('a+b') are the loss and gradient-norm scalars")
        if r["precision"] == "mixed":
            lines.append("  compiled: the run's own dtypes; the formula counts --precision mixed")
    return lines


def _fit_text(r: dict, total: float) -> list[str]:
    if r["fits"] is None:
        return []
    memory = r["device_memory_bytes"]
    if r["fits"]:
        return ["", f"fits: {_bytes(total)} of {_bytes(memory)} per device"]
    lines = ["", f"does NOT fit: needs {_bytes(total)} per device, {_bytes(memory)} available"]
    s = r.get("suggestion")
    if s is None:
        lines.append("no layout within reach fits (tried higher ZeRO stages, tensor degrees, remat, grad_accum)")
    else:
        lines.append(f"cheapest change that fits: {s['description']}  ->  {' '.join(s['overrides'])}  "
                     f"({_bytes(s['total_bytes'])} per device)")
    return lines


# -- a bare parameter count ----------------------------------------------------------------------------
def _bare_report(config, psi: float, n_devices: int, precision: str, memory: float | None) -> dict:
    import jax.numpy as jnp

    from meshtron.train.planner.plan import bare_mesh_shape, zero_paper_state

    shape = bare_mesh_shape(config, n_devices)
    if precision == "mixed":
        per_param = (2, 2, 12)
    else:  # the config's parameter dtype; gradients and Adam's two moments take it too
        size = jnp.dtype(config.model.param_dtype).itemsize
        per_param = (size, size, 2 * size)
    local = psi / shape.tensor  # Megatron slices every weight over the tensor axis
    stages = {str(s): zero_paper_state(local, shape.data, s, per_param) for s in (0, 1, 2, 3)}
    stage = config.parallel.zero_stage
    report = {"params_total": int(psi), "devices": shape.devices, "mesh": shape.as_dict(), "zero_stage": stage,
              "precision": precision, "bytes_per_param": dict(zip(("params", "grads", "optimizer"), per_param)),
              "formula": stages[str(stage)], "stages": stages}
    report.update(_fit(stages[str(stage)]["model_state_bytes"], memory))
    if report["fits"] is False:
        fitting = [s for s in (1, 2, 3) if s > stage and stages[str(s)]["model_state_bytes"] <= memory]
        report["suggestion"] = None if not fitting else {
            "overrides": [f"parallel.zero_stage={fitting[0]}"], "description": f"ZeRO stage {fitting[0]}",
            "total_bytes": stages[str(fitting[0])]["model_state_bytes"]}
    return report


def _bare_text(r: dict) -> list[str]:
    p = r["bytes_per_param"]
    lines = [f"ZeRO model state per device for {r['params_total']:.4g} parameters: data-parallel "
             f"N={r['mesh']['data']} (tensor {r['mesh']['tensor']}, replica {r['mesh']['replica']}), precision "
             f"{r['precision']} ({p['params']} + {p['grads']} + {p['optimizer']} bytes per parameter)",
             f"  {'stage':<7}{'paper formula':<16}{'params':>10}{'grads':>10}{'optimizer':>11}{'total':>10}"
             f"{'data comm/step (elements)':>28}"]
    for stage, s in r["stages"].items():
        lines.append(f"  {stage:<7}{s['formula']:<16}" + "".join(
            f"{_bytes(s[k]):>{w}}" for k, w in (("params_bytes", 10), ("grads_bytes", 10), ("optimizer_bytes", 11),
                                                ("model_state_bytes", 10)))
            + f"{s['comm_elements']['data']:>28.4g}" + ("   <- planned" if int(stage) == r["zero_stage"] else ""))
    lines.append("  Ψ = parameters / tensor degree; comm: 2Ψ(N-1)/N (stages 0-2), 3Ψ(N-1)/N (stage 3); "
                 "no activations without a model (use --config)")
    return lines + _fit_text(r, r["formula"]["model_state_bytes"])


# -- numbers ---------------------------------------------------------------------------------------------
def _bytes(n) -> str:
    """1.88e9 -> '1.88 GB' (decimal units, 3 significant digits)."""
    if n is None:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _elements(n) -> str:
    """Element counts: 1,672,896 up to ten digits, 2.417e+13 beyond."""
    return "-" if n is None else f"{n:,.0f}" if abs(n) < 1e10 else f"{n:.4g}"

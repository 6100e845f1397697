"""The GPU measurement, prepared: a ~1B LLaMA at seq 2048 in bf16 with cuDNN flash attention.

    python -m meshtron.tools.gpu_bench --out gpu-results            # on a GPU machine
    python -m meshtron.tools.gpu_bench --dry-run --out /tmp/dry     # anywhere: a tiny model, same code path

Steps: (1) check the packages `meshtron bench` needs and install the missing ones from `--wheels DIR`
(GPU machines have jax, flax, optax but may lack the rest, and reach no registry); (2) measure a bf16
matmul peak; (3) pick the lightest remat policy whose compiled step fits in device memory (none, then
dots, then full); (4) run `meshtron bench --json` with it; (5) trace a few steps with jax.profiler and
sum device time by operation kind; (6) write results.json and summary.md under --out. MFU is reported
against the published peak of the device (hardware table) and against the measured matmul peak.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

NEEDED = {"jax": "jax", "flax": "flax", "optax": "optax", "yaml": "pyyaml", "numpy": "numpy"}
ONE_B = ["model.family=llama", "model.n_layers=18", "model.d_model=2048", "model.n_heads=16", "model.d_ff=5632",
         "model.vocab_size=32000", "model.seq_len=2048", "train.batch_size=8"]  # 1,055,991,808 parameters
TINY = ["model.family=llama", "model.n_layers=2", "model.d_model=64", "model.n_heads=4", "model.d_ff=128",
        "model.vocab_size=512", "model.seq_len=64", "train.batch_size=4"]
SPEED = ["model.compute_dtype=bfloat16", "model.attention=cudnn", "parallel.data=1"]
REMAT_ORDER = ("none", "dots", "full")


def ensure_packages(wheels: str | None) -> list[str]:
    """Install missing packages from a wheel folder (offline); returns what was installed."""
    missing = [pkg for mod, pkg in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if missing and wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels, *missing],
                       check=True)
    if importlib.util.find_spec("meshtron") is None:
        repo = Path(__file__).resolve().parents[1]
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(repo)],
                       check=True)
        missing.append("meshtron (editable)")
    return missing


def fitting_remat(overrides: list[str]) -> tuple[str, dict]:
    """The first policy of REMAT_ORDER whose compiled step needs no more than the device holds."""
    import jax

    from meshtron.configs import load_config
    from meshtron.tools import bench

    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    tried = {}
    for policy in REMAT_ORDER:
        _, compiled = bench.compile_seconds(load_config("tiny", overrides + [f"model.remat={policy}"]))
        need, _ = _compiled_bytes(compiled)
        tried[policy] = need
        if limit is None or (need is not None and need < 0.92 * limit):
            return policy, {"bytes_limit": limit, "compiled_bytes": tried}
    return REMAT_ORDER[-1], {"bytes_limit": limit, "compiled_bytes": tried}


def _compiled_bytes(compiled) -> tuple[int | None, str]:
    m = compiled.memory_analysis()
    if m is None:
        return None, "unavailable"
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes, "compiled"


def run_bench(overrides: list[str], steps: int) -> dict:
    """`meshtron bench --json` (in this process: main() set the default XLA flags before JAX started)."""
    import contextlib
    import io

    from meshtron.tools.cli import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(["bench", "--json", "--steps", str(steps), *overrides])
    if code != 0:
        raise SystemExit(f"meshtron bench failed (exit {code})")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def profile_summary(overrides: list[str], trace_dir: Path, steps: int = 3, top: int = 15) -> dict:
    """Trace `steps` steps; device time summed by operation name (the perfetto trace's complete events)."""
    import jax

    from meshtron.configs import load_config
    from meshtron.tools import bench

    timer, _ = bench.meshtron_timer(load_config("tiny", overrides))
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(steps):
            timer.run()
    files = glob.glob(str(trace_dir / "**" / "*.trace.json.gz"), recursive=True)
    if not files:
        return {"trace_dir": str(trace_dir), "ops": [], "note": "no perfetto trace written"}
    with gzip.open(max(files, key=os.path.getmtime), "rt") as f:
        events = json.load(f)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    by_name, kinds = Counter(), Counter()
    for e in _device_events(events):
        by_name[str(e.get("name", "?"))] += e["dur"]
        kinds[_kind(str(e.get("name", "")))] += e["dur"]
    total = sum(kinds.values()) or 1
    return {"trace_dir": str(trace_dir), "steps": steps,
            "by_kind_percent": {k: round(100 * v / total, 1) for k, v in kinds.most_common()},
            "ops": [{"name": n, "microseconds_per_step": v / steps} for n, v in by_name.most_common(top)]}


def _device_events(events: list) -> list:
    """Complete events of the accelerator's streams; on a CPU, the XLA kernels (not Python or runtime frames)."""
    names = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in names.items() if "/device:" in name and "CPU" not in name}
    timed = [e for e in events if e.get("ph") == "X" and "dur" in e]
    on_devices = [e for e in timed if e.get("pid") in devices]
    if on_devices:  # an accelerator's streams (a device stream with no events, as libtpu may list, is skipped)
        return on_devices
    skip = ("$", "ThunkExecutor", "PjitFunction", "TfrtCpu", "PjRt")
    return [e for e in timed if not str(e.get("name", "")).startswith(skip)]


def _kind(name: str) -> str:
    n = name.lower()
    for kind, keys in (("attention (cuDNN)", ("cudnn", "flash", "fmha")), ("matmul", ("gemm", "dot", "matmul", "cublas", "ynn", "xnn", "onednn")),
                       ("collective", ("all-reduce", "all-gather", "reduce-scatter", "nccl")),
                       ("fusion", ("fusion", "loop_", "input_")), ("copy", ("copy", "memcpy", "transpose"))):
        if any(k in n for k in keys):
            return kind
    return "other"


def summary_markdown(r: dict) -> str:
    b = r["bench"]
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = [f"# GPU bench ({'dry run, tiny model' if r['dry_run'] else '~1B LLaMA, seq 2048, bf16'})", "",
             f"device: {b['device_kind']} ({b['platform']}), remat {r['remat']}, attention {r['attention']}", "",
             "| field | value |", "| --- | --- |",
             f"| tokens/s | {b['tokens_per_s']:,.0f} |", f"| step (median) | {b['step_seconds_median']:.4f} s |",
             f"| MFU vs published peak | {pct(b['mfu_vs_published'])} |",
             f"| MFU vs measured matmul peak (bf16; f32 on a CPU) | {pct(b['mfu_vs_measured'])} |",
             f"| measured matmul peak | {b['peak_flops_measured'] / 1e9:,.1f} GFLOP/s |",
             f"| compile | {b['compile_seconds']:.1f} s |", "", "## Profile (share of traced device time)", ""]
    lines += [f"- {k}: {v}%" for k, v in r["profile"].get("by_kind_percent", {}).items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu-results")
    ap.add_argument("--dry-run", action="store_true", help="tiny model, any backend: checks everything but speed")
    ap.add_argument("--wheels", default=None, help="folder of wheels for packages the machine lacks")
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    installed = ensure_packages(a.wheels)
    from meshtron.parallel.xla_flags import apply_default_flags

    apply_default_flags()  # before JAX starts: the GPU flags `meshtron bench` runs with
    overrides = (TINY if a.dry_run else ONE_B) + SPEED
    remat, memory = fitting_remat(overrides)
    overrides = overrides + [f"model.remat={remat}"]
    result = {"dry_run": a.dry_run, "installed": installed, "overrides": overrides, "remat": remat,
              "remat_memory": memory, "attention": "cudnn", "bench": run_bench(overrides, a.steps),
              "profile": profile_summary(overrides, out / "trace")}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "summary.md").write_text(summary_markdown(result))
    print(summary_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

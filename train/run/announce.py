"""What a run says before its first step: model, mesh and strategy, data, the planned memory per device,
and the peak FLOP/s its MFU is measured against."""

from __future__ import annotations

import jax

from meshtron.configs.schema import Config
from meshtron.model.counting import count_params
from meshtron.parallel import zero
from meshtron.parallel.mesh import describe_mesh
from meshtron.train.planner.plan import make_plan


def announce(config: Config, data, shape, say) -> None:
    """What the run is about to do: model, mesh and strategy, data, the plan's per-device memory."""
    m = config.model
    counts = count_params(m)
    say(f"model: {config.name} ({m.family}), {counts.total:,} parameters ({counts.non_embedding:,} non-embedding)")
    say(f"mesh: {describe_mesh(shape)}; ZeRO stage {config.parallel.zero_stage}; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), {jax.process_count()} process(es)")
    say(f"data: {data.key}, {data.train_tokens:,} training tokens; "
        f"{config.train.batch_size * m.seq_len:,} tokens per step")
    if m.attention == "cudnn" and jax.default_backend() != "gpu":
        say(f"note: model.attention=cudnn needs a GPU; using XLA attention on {jax.default_backend()}")
    plan = make_plan(config, shape.devices)
    say(f"plan per device: params {_mb(plan.params_bytes)}, optimizer {_mb(plan.optimizer_bytes)}, gradients "
        f"{_mb(plan.grads_bytes)}, activations {_mb(plan.activation_bytes)} (remat {m.remat}); total "
        f"{_mb(plan.total_bytes)} (`meshtron plan` for the breakdown)")
    if zero.splits("params", config.parallel.zero_stage) and not m.scan_layers:
        say("warning: ZeRO-3 with model.scan_layers=false lets XLA keep every gathered block for the backward pass "
            "(little memory saved); keep scan_layers=true")


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def peak_for_mfu(say) -> tuple[int, float, str]:
    """(devices, peak FLOP/s per device, source) for MFU. Simulated CPU devices share the host's cores, so
    a CPU run is measured against one host-wide matmul peak."""
    from meshtron.train.planner.hardware import device_peak, peak_devices

    peak, source = device_peak(jax.devices()[0])
    if source == "measured":
        say(f"note: no published peak for {jax.devices()[0].device_kind}; MFU is against a measured matmul "
            f"peak of {peak / 1e9:,.0f} GFLOP/s")
    return peak_devices(jax.device_count(), jax.devices()[0].platform), peak, source


def flat(report: dict) -> dict:
    """Report values that fit one metrics line (nested dicts flattened with a prefix)."""
    out = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, (int, float, str))})
        else:
            out[key] = value
    return out

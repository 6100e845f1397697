"""Before any state is created, `meshtron train` checks that the planner's per-device estimate fits.

The estimate is the planner's (parameters, gradients, optimizer state, gathered weights, activations
under the chosen remat: `Plan.total_bytes`). The memory it is checked against is the accelerator's, as
JAX reports it (`device.memory_stats()["bytes_limit"]`), or on CPU the host memory available to this
process (MemAvailable, and the cgroup limit if lower) shared by the process's simulated devices. A
config that cannot fit is refused in one line with the figures and a layout the planner finds that
fits (ZeRO stage, micro-batches, remat, tensor degree, or more devices); `train.skip_memory_check=true`
goes on anyway.
"""

from __future__ import annotations

from pathlib import Path

from meshtron.configs.errors import UserError
from meshtron.configs.schema import Config


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def host_available_bytes() -> float | None:
    """Host memory this process can still use: /proc/meminfo's MemAvailable, lowered to the cgroup's limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = float(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            free = float(limit) - used
            available = free if available is None else min(available, free)
    except (OSError, ValueError):
        pass
    return available


def device_memory(devices) -> tuple[float | None, str, int]:
    """(bytes one device may use, where the figure comes from, devices sharing it) for this process."""
    device = devices[0]
    stats = {}
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some backends raise instead of returning None
        stats = {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{device.device_kind} memory", 1
    available = host_available_bytes()
    if available is None:
        return None, "", 1
    return available, "available host memory", len(devices)


def check_memory(config: Config, n_devices: int, local_devices) -> None:
    """Refuse (UserError, one line) a config whose planned memory per device exceeds what there is."""
    if config.train.skip_memory_check:
        return
    from meshtron.train.planner.plan import make_plan

    limit, source, sharing = device_memory(local_devices)
    if limit is None:
        return
    plan = make_plan(config, n_devices)
    need = plan.total_bytes * sharing
    if need <= limit:
        return
    per_device = (f"{_gib(plan.total_bytes)} per device x {sharing} devices = {_gib(need)}" if sharing > 1
                  else f"{_gib(need)} per device")
    raise UserError(
        f"not enough memory: the plan needs {per_device} (params {_gib(plan.params_bytes)}, gradients "
        f"{_gib(plan.grads_bytes)}, optimizer {_gib(plan.optimizer_bytes)}, activations {_gib(plan.activation_bytes)} "
        f"with remat {config.model.remat}) but {source} is {_gib(limit)}; {_fix(config, n_devices, limit / sharing)}, "
        "or set train.skip_memory_check=true to try anyway")


def _fits_as_is(config: Config, n_devices: int, per_device: float) -> bool:
    from meshtron.configs.errors import ConfigError
    from meshtron.train.planner.plan import make_plan

    try:
        return make_plan(config, n_devices).total_bytes <= per_device
    except ConfigError:  # a mesh this config cannot use (a fixed data degree, say)
        return False


def _leanest_fits(config: Config, n_devices: int, per_device: float) -> bool:
    """Whether `config` fits with every memory saving the planner knows fully on (ZeRO-3, full remat, the
    smallest micro-batch the mesh allows): a cheap test before searching for the smallest change."""
    import dataclasses

    from meshtron.configs.errors import ConfigError
    from meshtron.train.planner.plan import make_plan

    t = config.train
    lean = dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, zero_stage=3),
                               model=dataclasses.replace(config.model, remat="full"))
    for accum in sorted((a for a in range(1, t.batch_size + 1) if t.batch_size % a == 0), reverse=True):
        try:
            plan = make_plan(dataclasses.replace(lean, train=dataclasses.replace(t, grad_accum=accum)), n_devices)
        except ConfigError:
            continue
        if plan.micro_batch >= 1:
            return plan.total_bytes <= per_device
    return False


def _fix(config: Config, n_devices: int, per_device: float) -> str:
    """The planner's suggestion that fits `per_device` bytes, as words and overrides."""
    from meshtron.train.planner.plan import suggest

    found = suggest(config, n_devices, per_device) if _leanest_fits(config, n_devices, per_device) else None
    if found is not None:
        return (f"{found.description} would need {_gib(found.plan.total_bytes)} per device: add "
                f"{' '.join(found.overrides)}")
    devices = n_devices * 2
    while devices <= 65536:
        if _fits_as_is(config, devices, per_device):
            return f"it would fit on {devices} such devices as configured, or use a smaller model"
        if _leanest_fits(config, devices, per_device):  # only then search for the cheapest change
            found = suggest(config, devices, per_device)
            if found is not None:
                return (f"it would fit on {devices} such devices with {found.description} "
                        f"({' '.join(found.overrides)}), or use a smaller model")
        devices *= 2
    return "no layout the planner knows fits this model on such devices: use a smaller model"

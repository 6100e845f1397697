"""Measurements behind `meshtron bench`: compile time, step time, tokens/s, MFU, memory.

Everything is timed in one process, and comparisons (Meshtron against the hand-written
baseline, 4 against 48 layers) are interleaved or run back to back, so a ratio holds even
when the machine's speed drifts. Token batches are synthetic: this measures the step, not
the data pipeline (which prefetches on the host and overlaps the step).
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import numpy as np
from flax import nnx

from meshtron.configs.schema import Config
from meshtron.model.counting import model_flops_per_token
from meshtron.model.layers import compute_dtype
from meshtron.parallel.mesh import mesh_for
from meshtron.train.planner.hardware import measure_matmul_peak, peak_devices, table_peak
from meshtron.train.run.step import Training, build_training


def _tokens(config: Config, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.model.vocab_size, (config.train.batch_size, config.model.seq_len + 1))


def devices_for(config: Config) -> list:
    """The devices a layout asks for: all of them for parallel.data=-1, else the first replica x data x tensor."""
    p = config.parallel
    if p.data == -1:
        return jax.devices()
    return jax.devices()[:p.replica * p.data * p.tensor]


def compile_seconds(config: Config, devices=None) -> tuple[float, object]:
    """Seconds to lower and compile the train step ahead of time (no arrays allocated), and the executable."""
    shape, mesh = mesh_for(config, devices or devices_for(config))
    training = build_training(config, mesh, shape)
    params, opt = training.abstract_state()
    start = time.perf_counter()
    compiled = training.jit_train_step().lower(params, opt, training.abstract_batch(), 0).compile()
    return time.perf_counter() - start, compiled


@dataclasses.dataclass
class StepTimer:
    """One compiled step with its state, stepping on a fixed batch; `run()` times one step."""

    step: object
    state: list
    batch: object

    def warm_up(self) -> "StepTimer":
        """Two untimed steps: the first compiles; the second catches a recompile for the placement of the
        first step's outputs (which may differ from freshly created inputs)."""
        self.run()
        self.run()
        return self

    def run(self) -> float:
        start = time.perf_counter()
        *self.state, out = self.step(*self.state, self.batch)
        jax.block_until_ready(out)
        return time.perf_counter() - start


def meshtron_timer(config: Config, devices=None) -> tuple[StepTimer, Training]:
    """Meshtron's train step on the given devices (default: those the layout asks for), compiled and warmed up."""
    shape, mesh = mesh_for(config, devices or devices_for(config))
    training = build_training(config, mesh, shape)
    params = training.init_params()
    opt = training.init_opt_state(params)
    train_step = training.jit_train_step()
    counter = [0]

    def step(params, opt, batch):
        counter[0] += 1
        return train_step(params, opt, batch, counter[0])

    timer = StepTimer(step, [params, opt], training.shard_batch(_tokens(config)))
    return timer.warm_up(), training


def baseline_dims(model):
    """The independent baseline's description of a model config, or None when it is neither GPT-2 nor LLaMA
    shaped (the baseline writes those two layouts only)."""
    from meshtron.tools.baseline import Dims

    switches = (model.position, model.norm, model.mlp, model.bias, model.tie_embeddings, model.parallel_block)
    family = {("learned", "layernorm", "gelu", True, True, False): "gpt2",
              ("rope", "rmsnorm", "swiglu", False, False, False): "llama"}.get(switches)
    if family is None or model.dim_per_head * model.n_heads != model.d_model:
        return None
    return Dims(family, model.n_layers, model.d_model, model.n_heads, model.kv_heads, model.ff_dim, model.vocab_size,
                model.seq_len, model.norm_eps, model.rope_theta)


def baseline_timer(config: Config) -> StepTimer | None:
    """The independent plain-JAX step (tools/baseline.py) of the same shapes on one device, or None when the
    config is neither GPT-2 nor LLaMA shaped."""
    from meshtron.tools.baseline import init_params, make_step

    dims = baseline_dims(config.model)
    if dims is None:
        return None
    t = config.train
    init, step = make_step(dims, t.lr, t.grad_clip or 1e9, t.weight_decay)
    params = jax.device_put(init_params(dims, t.seed), jax.devices()[0])
    timer = StepTimer(step, [params, init(params)], jax.device_put(_tokens(config), jax.devices()[0]))
    return timer.warm_up()


def same_choices_timer(config: Config, training: Training) -> StepTimer:
    """The "same choices" baseline (tools/baseline_same.py: Meshtron's attention call and layer scan written in
    plain JAX) on one device, started from Meshtron's own weights."""
    from meshtron.tools.baseline_same import make_step

    init, step = make_step(config.model, compute_dtype(config.model), config.train.lr, config.train.grad_clip or 1e9)
    params = jax.device_put(nnx.to_pure_dict(training.init_params()), jax.devices()[0])
    timer = StepTimer(step, [params, init(params)], jax.device_put(_tokens(config), jax.devices()[0]))
    return timer.warm_up()


def interleaved(timers: dict[str, StepTimer], steps: int) -> dict[str, list[float]]:
    """Step times of several timers taken in turn (A B A B ...), so drift affects them alike."""
    times = {name: [] for name in timers}
    for _ in range(steps):
        for name, timer in timers.items():
            times[name].append(timer.run())
    return times


def peak_memory_bytes(compiled=None) -> tuple[int | None, str]:
    """Peak bytes in use on device 0 (accelerators), or the compiled program's per-device footprint (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device"
    if compiled is not None:
        m = compiled.memory_analysis()
        if m is not None:
            total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
            return int(total), "compiled estimate"
    return None, "unavailable"


def throughput_report(config: Config, step_seconds: float, devices: int) -> dict:
    """tokens/s and MFU against the device's published peak and a matmul peak measured now."""
    device = jax.devices()[0]
    tokens_per_s = config.train.batch_size * config.model.seq_len / step_seconds
    flops_per_s = tokens_per_s * model_flops_per_token(config.model)
    published = table_peak(device.device_kind)
    measured = measure_matmul_peak(compute_dtype(config.model))
    chips = peak_devices(devices, device.platform)
    return {
        "tokens_per_s": tokens_per_s,
        "model_flops_per_token": model_flops_per_token(config.model),
        "achieved_flops_per_s": flops_per_s,
        "peak_flops_published": published,
        "mfu_vs_published": flops_per_s / (chips * published) if published else None,
        "peak_flops_measured": measured,
        "mfu_vs_measured": flops_per_s / (chips * measured),
    }


def median(values: list[float]) -> float:
    """The median (what the report quotes)."""
    return statistics.median(values)

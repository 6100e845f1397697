"""Peak FLOP/s of a device, the denominator of MFU: a table of published dense bf16 peaks, or a measurement.

The table holds vendor peaks for dense (not 2:4 sparse) bf16 matmuls. A device the table does
not know (a CPU, a new accelerator) is measured with a jitted square matmul instead; that
number is a realistic ceiling, not a datasheet peak, so MFU against it reads higher.
"""

from __future__ import annotations

import functools
import re
import time

# (pattern on jax's device.device_kind, lower-cased; dense bf16 FLOP/s). First match wins, so
# the more specific names come first ("v5 lite" before "v5", "h100 pcie" before "h100").
PEAK_BF16_FLOPS = [
    (r"h100.*pcie", 756e12),  # NVIDIA H100 PCIe datasheet: 1,513 TFLOP/s with sparsity, half dense
    (r"h100|h200|gh200", 989e12),  # H100 SXM; H200 and GH200 have the same tensor cores
    (r"a100", 312e12),
    (r"v4", 275e12),  # "TPU v4"
    (r"v5 ?lite|v5e", 197e12),  # "TPU v5 lite", "TPU v5e"
    (r"v5p|v5", 459e12),  # "TPU v5p", "TPU v5"
    (r"v6 ?lite|v6e", 918e12),  # "TPU v6 lite", "TPU v6e"
]


def table_peak(device_kind: str) -> float | None:
    """Published dense bf16 peak FLOP/s for a `device.device_kind` string, or None if unknown."""
    kind = device_kind.lower()
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, kind):
            return flops
    return None


def measure_matmul_peak(dtype=None, size: int | None = None, repeats: int | None = None) -> float:
    """FLOP/s of a jitted size x size matmul on the default device, timed after a warm-up."""
    import jax
    import jax.numpy as jnp

    on_cpu = jax.default_backend() == "cpu"
    dtype = dtype or jnp.float32
    # CPU: 1024^3 takes ~20-50 ms per product on two cores, so the whole measurement stays under ~1 s.
    size = size or (1024 if on_cpu else 8192)
    repeats = repeats or (8 if on_cpu else 50)
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (size, size), dtype)
    b = jax.random.normal(key_b, (size, size), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()  # compile and warm caches outside the timing
    best = float("inf")
    for _ in range(3):  # the best of three trials: a peak is what the hardware can do, not its worst moment
        start = time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, b)
        out.block_until_ready()  # dispatch is asynchronous: wait for the last product only
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 * repeats / best


@functools.lru_cache(maxsize=None)
def _measured(device_kind: str) -> float:
    import jax.numpy as jnp

    # Accelerators are rated in bf16; a CPU runs bf16 matmuls slower than f32, so measure what it does best.
    dtype = jnp.float32 if device_kind.lower() == "cpu" else jnp.bfloat16
    return measure_matmul_peak(dtype)


def peak_devices(devices: int, platform: str) -> int:
    """Devices whose peaks add up for MFU: simulated CPU devices share the host's cores, so a CPU counts once."""
    return 1 if platform == "cpu" else devices


def device_peak(device=None) -> tuple[float, str]:
    """(peak FLOP/s of one device, "table" or "measured"); the caller should warn on "measured"."""
    import jax

    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "") or device.platform
    flops = table_peak(kind)
    if flops is not None:
        return flops, "table"
    return _measured(kind), "measured"

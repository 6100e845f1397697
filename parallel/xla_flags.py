"""XLA flags Meshtron sets before JAX starts, where they help and the user has not chosen their own.

GPU: the latency-hiding scheduler overlaps collectives with compute, and combining small
collectives into larger ones (up to 128 MiB) cuts per-collective launch cost; both are
the settings JAX's GPU performance guide recommends for data/tensor/FSDP training. The
flags are inert on CPU and TPU.
"""

from __future__ import annotations

import os

GPU_FLAGS = {
    "--xla_gpu_enable_latency_hiding_scheduler": "true",
    "--xla_gpu_enable_highest_priority_async_stream": "true",
    "--xla_gpu_all_reduce_combine_threshold_bytes": str(128 * 2**20),
    "--xla_gpu_all_gather_combine_threshold_bytes": str(128 * 2**20),
    "--xla_gpu_reduce_scatter_combine_threshold_bytes": str(128 * 2**20),
}


def apply_default_flags() -> None:
    """Add the flags above to XLA_FLAGS unless already set (MESHTRON_XLA_DEFAULTS=0 turns this off)."""
    if os.environ.get("MESHTRON_XLA_DEFAULTS", "1") == "0":
        return
    current = os.environ.get("XLA_FLAGS", "")
    extra = [f"{flag}={value}" for flag, value in GPU_FLAGS.items() if flag not in current]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()

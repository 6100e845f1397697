"""Peak FLOP/s per device: the published table, matched from jax's device_kind, and the measured fallback."""

import math
from types import SimpleNamespace

import pytest

from meshtron.train.planner.hardware import device_peak, measure_matmul_peak, table_peak


@pytest.mark.parametrize("kind, flops", [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
])
def test_known_device_kinds_get_the_published_dense_bf16_peak(kind, flops):
    assert table_peak(kind) == flops


@pytest.mark.parametrize("kind", ["cpu", "NVIDIA GeForce RTX 3090", "Some future accelerator"])
def test_unknown_device_kinds_have_no_table_peak(kind):
    assert table_peak(kind) is None


def test_a_table_device_reports_table_as_the_source():
    assert device_peak(SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3", platform="gpu")) == (989e12, "table")


def test_matmul_peak_is_measured_on_the_cpu():
    flops = measure_matmul_peak()  # how long it takes is `meshtron bench`'s business, not a unit test's
    assert math.isfinite(flops) and 1e8 < flops < 1e14  # a CPU: more than 0.1 GFLOP/s, less than 100 TFLOP/s


def test_the_cpu_falls_back_to_the_measured_peak():
    flops, source = device_peak()
    assert source == "measured" and flops > 1e8

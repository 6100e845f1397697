"""The device mesh: degrees from the config, checked against the devices and the model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from meshtron.configs.errors import ConfigError
from meshtron.configs.schema import Config
from meshtron.parallel import zero
from meshtron.parallel.rules import MESH_AXES


@dataclass(frozen=True)
class MeshShape:
    """Resolved parallel degrees (no -1 left)."""

    replica: int
    data: int
    tensor: int
    stage: int = 1  # pipeline stages

    @property
    def devices(self) -> int:
        """Devices the mesh spans."""
        return self.stage * self.replica * self.data * self.tensor

    @property
    def batch_shards(self) -> int:
        """How many ways the global batch is split."""
        return self.replica * self.data

    def as_dict(self) -> dict[str, int]:
        """{'replica': r, 'data': d, 'tensor': t}, led by 'stage': p when there are pipeline stages."""
        stages = {"stage": self.stage} if self.stage > 1 else {}
        return {**stages, "replica": self.replica, "data": self.data, "tensor": self.tensor}


def resolve_mesh_shape(config: Config, n_devices: int) -> MeshShape:
    """Degrees for `n_devices` devices, validated against the model and batch; ConfigError if impossible."""
    p, m, t = config.parallel, config.model, config.train
    fixed = p.pipeline * p.replica * p.tensor * (p.data if p.data != -1 else 1)
    if p.data == -1:
        if n_devices % fixed:
            raise ConfigError(f"config key 'parallel.tensor': pipeline x replica x tensor = {fixed} does not divide "
                              f"the {n_devices} devices; choose degrees whose product divides {n_devices}")
        data = n_devices // fixed
    else:
        data = p.data
        if fixed != n_devices:
            raise ConfigError(f"config key 'parallel.data': pipeline x replica x data x tensor = {p.pipeline} x "
                              f"{p.replica} x {p.data} x {p.tensor} = {fixed}, but {n_devices} devices are visible; "
                              f"make the product {n_devices} (parallel.data=-1 fills it in)")
    shape = MeshShape(p.replica, data, p.tensor, p.pipeline)
    micro = t.grad_accum * (p.microbatches if p.pipeline > 1 else 1)
    shards = shape.batch_shards * micro
    if t.batch_size % shards:
        key = "parallel.microbatches" if p.pipeline > 1 else "train.batch_size"
        raise ConfigError(f"config key '{key}': train.batch_size={t.batch_size} sequences do not split into "
                          f"{micro} micro-batch(es) over {shape.batch_shards} data shards; use a batch size that is "
                          f"a multiple of {shards}")
    if zero.partitions_anything(p.zero_stage) and m.d_model % data:
        raise ConfigError(f"config key 'parallel.zero_stage': ZeRO splits d_model={m.d_model} over data={data} "
                          f"devices, which does not divide it; use zero_stage=0 or a data degree dividing d_model")
    return shape


def build_mesh(shape: MeshShape, devices=None) -> Mesh:
    """A (stage, replica, data, tensor) mesh over `devices` (default: all), tensor innermost."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != shape.devices:
        raise ConfigError(f"the mesh needs {shape.devices} devices but {len(devices)} are available")
    dims = (shape.stage, shape.replica, shape.data, shape.tensor)
    if len(devices) == jax.device_count():
        return jax.make_mesh(dims, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
    return Mesh(np.asarray(devices).reshape(dims), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_for(config: Config, devices=None) -> tuple[MeshShape, Mesh]:
    """Validated shape and mesh for a config on the visible (or given) devices."""
    n = len(devices) if devices is not None else jax.device_count()
    shape = resolve_mesh_shape(config, n)
    return shape, build_mesh(shape, devices)


def describe_mesh(shape: MeshShape) -> str:
    """'replica=1 x data=4 x tensor=2 (8 devices)'."""
    return " x ".join(f"{k}={v}" for k, v in shape.as_dict().items()) + f" ({math.prod(shape.as_dict().values())} devices)"

"""The planner's compiled column: the real train step compiled ahead of time, its figures read back.

The step is lowered with abstract arguments (shapes, dtypes and shardings only) and compiled
for the mesh (`jit(...).lower(...).compile()`), so nothing is allocated. Memory comes from
`memory_analysis()`: its argument size equals the sum of the per-device shards of the
arguments exactly (tests/test_plan.py checks it); its temp size holds activations and every other temporary of
XLA's schedule, so it is reported beside the activation formula, not compared with it.
Communication comes from the optimised HLO through train/planner/hlo.py.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from meshtron.configs.errors import UserError
from meshtron.configs.schema import Config
from meshtron.model.counting import count_params
from meshtron.train.planner import hlo
from meshtron.parallel.mesh import MeshShape, build_mesh

MAX_COMPILE_PARAMS = 2e9  # above this, compiling on simulated CPU devices takes too long to be useful


@dataclass(frozen=True)
class CompiledFigures:
    """Per-device figures of the compiled train step."""

    argument_bytes: int  # parameters + optimizer state + token batch (+ step counter when used)
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments
    temp_bytes: int  # activations and every other temporary
    collectives: tuple  # parallel.hlo.Collective, with loop trip counts
    hlo_text: str = field(default="", repr=False)  # the optimised HLO module, for a closer look

    def comm_elements_by_kind(self) -> dict[str, dict[str, float]]:
        """{axis: {collective kind: elements sent per device per step}}; axes spanned together are 'a+b'."""
        return hlo.comm_by_axis(list(self.collectives))

    def comm_elements(self) -> dict[str, float]:
        """Elements sent per device per step, by mesh axis (or axes)."""
        return {axis: sum(kinds.values()) for axis, kinds in self.comm_elements_by_kind().items()}

    def comm_bytes(self) -> dict[str, float]:
        """Bytes sent per device per step, by mesh axis (or axes), at each collective's own dtype."""
        out: dict[str, float] = {}
        for c in self.collectives:
            if c.axes and c.elements:
                key = "+".join(c.axes)
                out[key] = out.get(key, 0.0) + c.volume_elements * c.count * c.bytes / c.elements
        return out


def check_compilable(config: Config, shape: MeshShape) -> None:
    """UserError (one line) unless the step can be compiled here: small enough, and enough devices."""
    import jax

    total = count_params(config.model).total
    if total > MAX_COMPILE_PARAMS:
        raise UserError(f"--compile: {config.name} has {total:.3g} parameters, too many to compile ahead of time "
                        f"here (limit {MAX_COMPILE_PARAMS:.0e}); drop --compile for the formula plan")
    if jax.device_count() < shape.devices:
        raise UserError(f"--compile needs {shape.devices} devices but {jax.device_count()} exist; simulate them "
                        f"with `meshtron --cpu-devices {shape.devices} plan ...`")


def lower_train_step(config: Config, mesh, shape: MeshShape):
    """The train step `meshtron train` runs, lowered for `mesh` with abstract arguments (nothing allocated);
    returns (lowered, number of parameter and optimizer-state arguments)."""
    import jax
    import jax.numpy as jnp

    from meshtron.train.run.step import build_training

    training = build_training(config, mesh, shape)
    params, opt_state = training.abstract_state()
    step = jax.ShapeDtypeStruct((), jnp.int32)
    lowered = training.jit_train_step().lower(params, opt_state, training.abstract_batch(), step)
    return lowered, len(jax.tree.leaves(params)) + len(jax.tree.leaves(opt_state))


def read_figures(compiled, shape: MeshShape) -> CompiledFigures:
    """Memory and collectives of a compiled train step."""
    memory, text = compiled.memory_analysis(), compiled.as_text()
    return CompiledFigures(
        argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        collectives=tuple(hlo.collectives(text, shape.as_dict())), hlo_text=text)


@functools.lru_cache(maxsize=16)
def compile_step(config: Config, shape: MeshShape) -> CompiledFigures:
    """Compile the train step of `config` for `shape` on the first shape.devices devices and read its
    memory and collectives (cached: a config and mesh compile once per process)."""
    import jax

    check_compilable(config, shape)
    lowered, _ = lower_train_step(config, build_mesh(shape, jax.devices()[:shape.devices]), shape)
    # the plan reads the HLO and its buffer assignment, both settled before code generation, and never
    # runs the program: skipping the backend's optimisation halves the compile time, same figures
    return read_figures(lowered.compile(compiler_options={"xla_backend_optimization_level": 0}), shape)

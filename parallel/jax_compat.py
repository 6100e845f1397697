"""The JAX internals Meshtron relies on, in one place, so a JAX upgrade breaks this file, loudly.

tests/test_jax_compat.py pins the JAX version these were written against and checks each
piece still behaves; when it fails after an upgrade, fix this file and move the pin.

all_gather_invariant  a Varying -> Invariant all-gather (ZeRO stages 1-2 regather updated
                      parameters); private in jax._src, no public alias yet.
varying_axes          which mesh axes a value differs over inside shard_map (its "vma"); the
                      attribute moved between releases.
NEVER_SAVED           primitives a remat policy must recompute rather than keep for ZeRO-3's
                      gathered weights; names of jax primitives, which JAX may rename.
skip_absent_tpu       with libtpu installed (the tpu-compile extra) on a machine without TPU chips,
                      keep JAX from starting the TPU runtime; private backend registry.
"""

from __future__ import annotations

import jax
from jax._src.lax.parallel import all_gather_invariant  # noqa: F401  (re-exported: see the docstring)

JAX_VERSION = "0.10.2"  # the version this module was checked against (pyproject pins the same)

# Never saved for the backward pass: gathers, and the cheap casts and layout changes that may
# be applied to gathered weights (a saved copy of those would be the whole weight again).
NEVER_SAVED = ("all_gather", "all_gather_invariant", "pvary", "convert_element_type", "transpose",
               "reshape", "broadcast_in_dim", "copy", "copy_p", "squeeze", "expand_dims")


def varying_axes(x) -> frozenset:
    """Mesh axes over which `x` (an array or a ShapeDtypeStruct) differs between devices (inside shard_map)."""
    if isinstance(x, jax.ShapeDtypeStruct):
        manual = getattr(x, "manual_axis_type", None)
        return frozenset(manual.varying if manual is not None else ())
    aval = jax.typeof(x)
    vma = getattr(aval, "vma", None)
    return frozenset(vma if vma is not None else aval.mat.varying)


def mark_varying(x, axes: tuple):
    """`x` marked as differing over `axes` too (a no-op for none): gradients with respect to it stay per-device."""
    return jax.lax.pcast(x, tuple(axes), to="varying") if axes else x


def skip_absent_tpu() -> None:
    """libtpu installed but no TPU chip here: replace the start-up of JAX's TPU backend with a quiet refusal before
    any backend starts, so ordinary runs neither pay for starting libtpu nor print its warnings about missing
    TPU environment variables.
    Compiling for a slice (`meshtron plan --topology`) loads libtpu itself. Call before JAX picks backends."""
    import dataclasses
    import importlib.util
    import os

    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    from jax._src import hardware_utils, xla_bridge

    registration = xla_bridge._backend_factories.get("tpu")
    if registration is None or xla_bridge.backends_are_initialized():
        return
    if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
        # Keep "tpu" a known platform (modules imported later, flax's among them, register TPU lowering
        # rules and fail on an unknown one); only its start-up is replaced by a quiet refusal.
        xla_bridge._backend_factories["tpu"] = dataclasses.replace(registration, factory=_no_tpu_chip,
                                                                   fail_quietly=True)


def _no_tpu_chip():
    raise RuntimeError("no TPU chip on this machine")

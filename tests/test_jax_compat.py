"""The JAX internals of parallel/jax_compat.py still mean what Meshtron assumes, on the pinned JAX.

When this fails after a JAX upgrade: fix parallel/jax_compat.py, then move JAX_VERSION and pyproject's pin."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from meshtron.parallel import jax_compat


def test_jax_is_the_version_jax_compat_was_checked_against():
    assert jax.__version__ == jax_compat.JAX_VERSION


def _in_shard_map(fn, x, out_specs=P()):
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,), devices=jax.devices()[:2])
    return jax.shard_map(fn, mesh=mesh, in_specs=P(), out_specs=out_specs, check_vma=True)(x)


def test_varying_axes_reads_what_mark_varying_marks():
    seen = {}

    def fn(x):
        seen["before"] = jax_compat.varying_axes(x)
        seen["after"] = jax_compat.varying_axes(jax_compat.mark_varying(x, ("data",)))
        return x

    _in_shard_map(fn, jnp.ones(4))
    assert seen == {"before": frozenset(), "after": frozenset({"data"})}


def test_all_gather_invariant_gathers_per_device_pieces_into_a_replicated_value():
    def fn(x):
        piece = jax_compat.mark_varying(x, ("data",)) * (jax.lax.axis_index("data") + 1)
        return jax_compat.all_gather_invariant(piece, "data", axis=0, tiled=True)[:2]

    out = _in_shard_map(fn, jnp.ones(1))
    np.testing.assert_array_equal(out, [1.0, 2.0])


def test_the_primitives_of_a_gathered_weight_are_all_never_saved():
    def fn(w):
        w = jax.lax.all_gather(jax_compat.mark_varying(w, ("data",)), "data", axis=0, tiled=True)
        return jnp.squeeze(w.astype(jnp.bfloat16).T.reshape(1, -1)[None], 0)

    jaxpr = jax.make_jaxpr(lambda w: _in_shard_map(fn, w, out_specs=P("data")))(jnp.ones((2, 3)))
    inner = jaxpr.eqns[0].params["jaxpr"]
    names = {e.primitive.name for e in inner.eqns}
    assert {"all_gather", "convert_element_type", "transpose", "reshape"} <= names
    assert names <= set(jax_compat.NEVER_SAVED) | {"mul"}, names - set(jax_compat.NEVER_SAVED)

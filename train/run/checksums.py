"""A checksum of every array a checkpoint saves, so that corruption on disk cannot hide.

Each array's checksum is two sums of its bits read as unsigned 32-bit words, modulo 2**32: the plain
sum and the sum weighted by position (Fletcher style). Modular sums do not depend on the order of
addition, so the figures are exact and identical whatever the mesh, the sharding or the device; they
are computed on the devices, in one pass over the state, when a checkpoint is saved, and again on
the restored arrays when it is resumed. A single changed byte changes the plain sum; a swap of two
words changes the weighted one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from meshtron.configs.errors import UserError


class ChecksumMismatch(UserError):
    """A restored array differs from what was saved: the checkpoint is corrupt."""


def _words(x: jax.Array) -> jax.Array:
    """The bits of `x` as a flat uint32 vector (narrower types widened, 64-bit types split in two words)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).reshape(-1)
    size = jnp.dtype(x.dtype).itemsize
    if size in (4, 8):
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    narrow = jax.lax.bitcast_convert_type(x, {2: jnp.uint16, 1: jnp.uint8}[size])
    return narrow.astype(jnp.uint32).reshape(-1)


def _sums(x: jax.Array) -> jax.Array:
    words = _words(x)
    position = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * position, dtype=jnp.uint32)])


_all_sums = jax.jit(lambda leaves: [_sums(x) for x in leaves])


def _named_leaves(tree) -> list[tuple[str, jax.Array]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat if isinstance(leaf, jax.Array)]


def checksums(tree) -> dict[str, list[int]]:
    """{array path: [sum, weighted sum]} of every array in `tree` (one small transfer from the devices)."""
    named = _named_leaves(tree)
    if not named:
        return {}
    sums = jax.device_get(_all_sums([leaf for _, leaf in named]))
    return {name: [int(v) for v in np.asarray(s)] for (name, _), s in zip(named, sums)}


def verify(recorded: dict | None, tree, what: str) -> None:
    """Raise ChecksumMismatch naming the first array of `tree` whose checksum differs from `recorded`.

    A checkpoint written before checksums existed (`recorded` None) is accepted as it is. Arrays not in
    `recorded` (a partial restore reads fewer) are not checked against it, and vice versa."""
    if not recorded:
        return
    found = checksums(tree)
    bad = [name for name, sums in found.items() if name in recorded and list(recorded[name]) != sums]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ChecksumMismatch(f"{what}: array {bad[0]}{more} does not match the checksum recorded when it was saved")

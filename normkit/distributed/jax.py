"""JAX: the sum over a named mapped axis (`jax.shard_map`, `jax.pmap`), with `jax.lax.psum`.

Inside `jax.shard_map(..., in_specs=P("batch"))` or `jax.pmap(..., axis_name="batch")` each shard sees only its
own rows; `replica_sum("batch")` sums the per-shard statistics over that axis (one `psum` of the whole tuple,
which XLA lowers to one all-reduce). This is what Flax's `BatchNorm(axis_name=...)` does, except that the
counts are summed along with the sums, so shards with different numbers of valid (unmasked) samples weigh in
by their counts, where averaging per-shard means would not.

Gradients follow JAX's own rules for `psum`: under `shard_map` with `check_vma=True` the sum is invariant
across the axis and the implicit broadcast back to the varying per-shard computation transposes to a psum of
the gradients; with `check_vma=False` and under `pmap`, `psum` transposes to `psum`. Either way the gradient is
the all-reduce of the incoming gradients.

Under `keras.distribution` (DataParallel, or ModelParallel with the batch axis sharded) and `jit`, no named
axis is visible to the layer: the batch is one global array that XLA's SPMD partitioner splits, and it
partitions the batch reduction into per-device partial sums and an all-reduce by itself. Every layer then sees
the global batch's statistics, synchronized or not, and there is nothing to do here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import jax

from normkit.distributed._select import ReplicaSum


def _axis_names(axis_name: Any) -> tuple[Hashable, ...]:
    names = tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)
    if not names or any(name is None or not isinstance(name, Hashable) for name in names):
        raise TypeError(
            "`axis_name` must be the name of a mapped axis (a string such as 'batch', as given to jax.shard_map's "
            f"mesh or jax.pmap), or a non-empty tuple of names. Received: axis_name={axis_name!r}"
        )
    return names


def _axis_size(name: Hashable) -> int:
    """The size of a bound mapped axis; NameError when unbound (`psum(1)` is the pre-0.6 JAX idiom)."""
    if hasattr(jax.lax, "axis_size"):
        return int(jax.lax.axis_size(name))
    return int(jax.lax.psum(1, name))


def replica_sum(axis_name: Hashable | Sequence[Hashable]) -> ReplicaSum | None:
    """`psum` over the named axis (or axes) of the enclosing `jax.shard_map` / `jax.pmap`; None for size 1.

    Must be called where the axis is bound (inside the mapped function, as a layer's `call` is): an unbound
    name is a ValueError naming it, raised here rather than inside the first collective.
    """
    names = _axis_names(axis_name)
    size = 1
    for name in names:
        try:
            size *= _axis_size(name)
        except NameError:
            raise ValueError(
                f"`axis_name` {name!r} is not a mapped axis here: synchronized batch statistics over a named axis "
                "need the layer to run inside jax.shard_map (a mesh axis of that name) or jax.pmap(axis_name=...). "
                "Under keras.distribution (DataParallel) leave axis_name=None: XLA reduces the sharded batch "
                f"itself. Received: axis_name={axis_name!r}"
            ) from None
    if size == 1:
        return None
    reduce_over = names[0] if len(names) == 1 else names

    def psum(tensors: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(jax.lax.psum(tuple(tensors), reduce_over))

    return psum

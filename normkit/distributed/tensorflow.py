"""TensorFlow: the sum over `tf.distribute` replicas, through the replica context's all-reduce.

Inside `strategy.run` (and so inside `model.fit` under `strategy.scope()`) with MirroredStrategy,
MultiWorkerMirroredStrategy or any strategy with more than one replica in sync, the tensors of every replica
are summed with `ReplicaContext.all_reduce(SUM, ...)`: one batched collective for the whole tuple, chosen by
the strategy (NCCL, ring or hierarchical copy). Its gradient is the all-reduce of the incoming gradients
(TensorFlow registers that gradient for SUM; the tests check it with a GradientTape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from normkit.distributed._select import ReplicaSum


def replica_sum() -> ReplicaSum | None:
    """The sum over the replicas of the current `tf.distribute` replica context, or None.

    None where there is nothing to synchronize: in the cross-replica context (inside `strategy.scope()` but
    outside `strategy.run`, where there are no per-replica values), in the default context (no strategy), or
    with a single replica in sync.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None

    def all_reduce_sum(tensors: Sequence[Any]) -> tuple[Any, ...]:
        tensors = tuple(tensors)
        if not tensors:
            return ()
        return tuple(context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors)))

    return all_reduce_sum

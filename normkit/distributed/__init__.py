"""Synchronized batch statistics on each backend's own distribution engine.

Batch normalization with a small per-device batch needs the statistics of the global batch. normkit never
runs a communication layer of its own: it combines per-replica sufficient statistics, with a common shift,

    count_g = sum_r count_r,  S1_g = sum_r sum(x_r - shift),  S2_g = sum_r sum((x_r - shift)^2)
    mean_g = shift + S1_g / count_g,  var_g = S2_g / count_g - (S1_g / count_g)^2

through the all-reduce of the engine the model already runs on. Counts are summed, not averaged, so replicas
with different (or zero) numbers of samples weigh in by their sample counts.

The protocol shared with the core (`cross_replica` of `normalize_with_batch_statistics`) is a callable

    replica_sum(tensors: tuple) -> tuple

returning, for each tensor, its sum over all replicas (same shape and dtype). It is differentiable: the
gradient of a sum-all-reduce is the sum-all-reduce of the incoming gradients, so the backward pass of the
global computation all-reduces its per-channel sums as torch's SyncBatchNorm does. Where there is nothing to
synchronize (no replica context, a single replica) the adapters return None and the core computes local
statistics.

- TensorFlow: `normkit.distributed.tensorflow.replica_sum()`: the replica context's all-reduce inside
  `tf.distribute` (MirroredStrategy, MultiWorkerMirroredStrategy, ... `strategy.run` and `model.fit`).
- JAX: `normkit.distributed.jax.replica_sum(axis_name)`: `jax.lax.psum` over a named axis of `jax.shard_map`
  or `jax.pmap`. Under `keras.distribution` (DataParallel, ModelParallel with a sharded batch axis) under
  `jit`, nothing is needed: XLA partitions the batch reduction itself and every layer sees global statistics.
- PyTorch: `normkit.distributed.torch.replica_sum()`: `torch.distributed.all_reduce` (gloo, NCCL) when a
  process group with more than one process is initialized, with an autograd-correct backward.

`cross_replica_for(layer)` picks the adapter for the active Keras backend; `synchronize(model)` turns every
normkit BatchNormalization of a model synchronized. See docs/distributed.md for what each engine covers.
"""

from __future__ import annotations

from normkit.distributed._select import ReplicaSum, cross_replica_for, synchronize

__all__ = ["ReplicaSum", "cross_replica_for", "synchronize"]

"""Which engine synchronizes a layer (`cross_replica_for`) and `synchronize(model)`."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import keras

ReplicaSum = Callable[[tuple[Any, ...]], tuple[Any, ...]]

_OPTION_KEYS = ("synchronized", "axis_name")


def _options(source: Any) -> tuple[bool, Hashable | None]:
    """(synchronized, axis_name) from a layer-like object or a mapping of those two options."""
    if isinstance(source, Mapping):
        unknown = sorted(str(k) for k in set(source) - set(_OPTION_KEYS))
        if unknown:
            raise ValueError(
                f"`cross_replica_for` takes the options {list(_OPTION_KEYS)}; unknown keys {unknown}. "
                f"Received: {dict(source)!r}"
            )
        synchronized = source.get("synchronized", False)
        axis_name = source.get("axis_name")
    elif hasattr(source, "synchronized"):
        synchronized = source.synchronized
        axis_name = getattr(source, "axis_name", None)
    else:
        raise TypeError(
            "`cross_replica_for` takes a layer with a `synchronized` attribute (normkit.BatchNormalization) or a "
            f"dict with keys among {list(_OPTION_KEYS)}. Received: {source!r} (of type {type(source).__name__})"
        )
    if not isinstance(synchronized, bool):
        raise TypeError(f"`synchronized` must be a bool. Received: synchronized={synchronized!r}")
    return synchronized, axis_name


def cross_replica_for(source: Any) -> ReplicaSum | None:
    """The `cross_replica` callable for a synchronized layer on the active Keras backend, or None.

    `source` is a normkit.BatchNormalization (its `synchronized` and, where present, `axis_name` attributes are
    read) or a dict `{"synchronized": bool, "axis_name": name}`. Called at training time, inside the step
    (a replica context, a traced shard_map body, a process of a process group), because what it returns depends
    on where the step runs:

    - not synchronized: None (local statistics);
    - JAX: with `axis_name`, a `psum` over that named axis of the enclosing `jax.shard_map` / `jax.pmap` (an
      unbound name is a ValueError); without one, None: under `keras.distribution` and `jit`, XLA already
      reduces a sharded batch axis over every device;
    - TensorFlow: the replica context's all-reduce when `tf.distribute` runs more than one replica, else None;
    - PyTorch: `torch.distributed.all_reduce` when a process group of more than one process is initialized,
      else None;
    - any other backend: None (a single process).

    `axis_name` names a JAX mapped axis only; TensorFlow and PyTorch find their replicas in their own context,
    so a model configured on JAX with an `axis_name` synchronizes through those engines unchanged.
    """
    synchronized, axis_name = _options(source)
    if not synchronized:
        return None
    backend = keras.backend.backend()
    if backend == "jax":
        if axis_name is None:
            return None
        from normkit.distributed import jax as jax_engine

        return jax_engine.replica_sum(axis_name)
    if backend == "tensorflow":
        from normkit.distributed import tensorflow as tf_engine

        return tf_engine.replica_sum()
    if backend == "torch":
        from normkit.distributed import torch as torch_engine

        return torch_engine.replica_sum()
    return None


def synchronize(model: keras.layers.Layer) -> keras.layers.Layer:
    """Sets `synchronized=True` on every normkit.BatchNormalization of `model` (nested models and layers too).

    The model is changed in place and returned, as torch's `nn.SyncBatchNorm.convert_sync_batchnorm` does:

        model = normkit.synchronize(model)   # torch: model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

    tf.keras 2's `tf.keras.layers.experimental.SyncBatchNormalization(...)` and tf.keras 2.12's
    `BatchNormalization(synchronized=True)` are `normkit.BatchNormalization(..., synchronized=True)`: the same
    layer with the global-batch statistics in training. As there, a synchronized layer does not take the fused
    kernel's Bessel-corrected moving variance, so an already built layer drops it here too (its next update
    uses the biased batch variance, as a layer built synchronized would).

    Weights are untouched. Keras compiles the training step once: the model's compiled step functions are
    dropped so that the next `fit` / `evaluate` / `predict` traces the synchronized layers. A layer created
    with `fused=True` cannot be synchronized (tf.keras 2 raised for that pair too): that is a ValueError naming
    the layers, raised before any layer is changed.

    Args:
        model: a Keras model or layer (a single normkit.BatchNormalization works too).

    Returns:
        `model`, with its batch normalizations synchronized.
    """
    from normkit.layers.batch_normalization import BatchNormalization

    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "`synchronize` takes a Keras model or layer whose normkit.BatchNormalization layers it synchronizes. "
            f"Received: model={model!r} (of type {type(model).__name__})"
        )
    layers = [layer for layer in model._flatten_layers(include_self=True, recursive=True)]
    batch_norms = [layer for layer in layers if isinstance(layer, BatchNormalization)]
    fused = [layer.name for layer in batch_norms if layer._fused_argument]  # as given: None resolves to True
    if fused:
        raise ValueError(
            "`synchronize` cannot synchronize a BatchNormalization created with fused=True (tf.keras 2's fused "
            f"kernel computes local statistics only). Layers with fused=True: {fused}. Create them with fused=None "
            "or fused=False."
        )
    for layer in batch_norms:
        layer.synchronized = True
        # tf.keras 2 resolved `fused` to False for a synchronized layer, and the Bessel rule follows the resolved
        # `fused` (decided at build: a built layer is brought in line here).
        if layer.fused:
            layer.fused = False
        layer._bessel = False
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    return model

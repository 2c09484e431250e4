"""Layer calls with a mask (or other call arguments): eager/compiled forward and backend autodiff."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from _helpers import backend_name


def _backend_tensor(a: np.ndarray) -> Any:
    if backend_name() == "torch":
        import torch

        return torch.tensor(a)
    return keras.ops.convert_to_tensor(a)


def call_with_mask(layer: keras.layers.Layer, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """layer(x, mask=mask) as NumPy (eager; JAX under jax.jit through stateless_call)."""
    if not layer.built:
        layer.build(tuple(x.shape))
    if backend_name() == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        fn = jax.jit(lambda tv, a, m: layer.stateless_call(tv, non_trainable, a, mask=m)[0])
        return np.asarray(fn(trainable, x, mask))
    m = None if mask is None else _backend_tensor(mask)
    return np.asarray(keras.ops.convert_to_numpy(layer(_backend_tensor(x), mask=m)))


def autodiff_with_mask(
    layer: keras.layers.Layer, x: np.ndarray, upstream: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(dL/dx, {variable name: dL/dvariable}) for L = sum(upstream * layer(x, mask=mask))."""
    if not layer.built:
        layer.build(tuple(x.shape))
    variables = list(layer.trainable_variables)
    names = [v.name for v in variables]
    backend = backend_name()
    # No mask: no `mask` argument at all (layers such as TLU take none).
    kwargs = {} if mask is None else {"mask": mask}
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(xv: Any, trainable: list) -> Any:
            y, _ = layer.stateless_call(trainable, non_trainable, xv, **kwargs)
            return jnp.sum(y * upstream)

        dx, dvars = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x), [v.value for v in variables])
        return np.asarray(dx), {n: np.asarray(g) for n, g in zip(names, dvars, strict=True)}
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, **{k: tf.constant(m) for k, m in kwargs.items()})
            loss = tf.reduce_sum(y * tf.constant(upstream))
        grads = tape.gradient(loss, [xt, *variables])
        return grads[0].numpy(), {n: g.numpy() for n, g in zip(names, grads[1:], strict=True)}
    import torch

    xt = torch.tensor(x, requires_grad=True)
    for v in variables:
        v.value.grad = None
    y = layer(xt, **{k: torch.tensor(m) for k, m in kwargs.items()})
    torch.sum(y * torch.tensor(upstream)).backward()
    return xt.grad.numpy(), {n: v.value.grad.numpy() for n, v in zip(names, variables, strict=True)}

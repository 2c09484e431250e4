"""Test helpers: backend-native autodiff and compilation, NumPy conversion, tolerances."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

# float32 forward tolerance vs the float64 reference (outputs are O(1) normalized values).
RTOL32 = 1e-5
ATOL32 = 2e-5


def to_numpy(t: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t))


def assert_close(actual: Any, expected: Any, rtol: float = RTOL32, atol: float = ATOL32, **kwargs: Any) -> None:
    np.testing.assert_allclose(to_numpy(actual).astype(np.float64), expected, rtol=rtol, atol=atol, **kwargs)


def random_normal(rng: np.random.Generator, shape: Sequence[int], loc: float = 0.0, scale: float = 1.0,
                  dtype: str = "float32") -> np.ndarray:
    return rng.normal(loc, scale, size=tuple(shape)).astype(dtype)


def float64_enabled(dtype: str) -> Any:
    """A context in which `dtype` arrays exist: JAX keeps float64 only in x64 mode, switched on here for the
    test's duration (the other backends need nothing)."""
    import contextlib

    if dtype == "float64" and backend_name() == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


def backend_name() -> str:
    return keras.backend.backend()


def apply(fn: Callable[..., Any], *args: Any) -> np.ndarray:
    """fn(*args) as NumPy. Eager on TensorFlow and PyTorch; under jax.jit on JAX, where every eager op compiles
    anew for each new shape (about 0.7 s a call vs 0.1 s): eager JAX is checked by the eager-vs-compiled tests."""
    if backend_name() == "jax":
        import jax

        return to_numpy(jax.jit(fn)(*args))
    return to_numpy(fn(*args))


def call_layer(layer: keras.layers.Layer, x: np.ndarray, **kwargs: Any) -> np.ndarray:
    """layer(x, **kwargs) as NumPy through `apply`; builds the layer first (not inside a jax.jit trace)."""
    if not layer.built:
        layer.build(tuple(x.shape))
    return apply(lambda a: layer(a, **kwargs), x)


def autodiff(fn: Callable[..., Any], inputs: Sequence[np.ndarray], upstream: np.ndarray) -> list[np.ndarray]:
    """Gradients of sum(upstream * fn(*inputs)) w.r.t. every input, by the backend's own autodiff.

    jax.grad on JAX, tf.GradientTape on TensorFlow, torch autograd on PyTorch.
    """
    backend = backend_name()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        up = jnp.asarray(upstream)

        def loss(*args: Any) -> Any:
            return jnp.sum(fn(*args) * up)

        grad_fn = jax.jit(jax.grad(loss, argnums=tuple(range(len(inputs)))))
        grads = grad_fn(*[jnp.asarray(a) for a in inputs])
        return [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in inputs]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            loss = tf.reduce_sum(fn(*tensors) * tf.constant(upstream))
        return [g.numpy() for g in tape.gradient(loss, tensors)]
    if backend == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in inputs]
        loss = torch.sum(fn(*tensors) * torch.tensor(upstream))
        loss.backward()
        return [t.grad.detach().cpu().numpy() for t in tensors]
    raise NotImplementedError(backend)


def layer_autodiff(layer: keras.layers.Layer, x: np.ndarray, upstream: np.ndarray) -> tuple[np.ndarray, dict]:
    """(dL/dx, {weight name: dL/dweight}) for L = sum(upstream * layer(x)), gamma/beta being the layer's own
    trainable variables (built before the call)."""
    backend = backend_name()
    variables = list(layer.trainable_variables)
    names = [v.name for v in variables]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        up = jnp.asarray(upstream)
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(xv: Any, trainable: list) -> Any:
            y, _ = layer.stateless_call(trainable, non_trainable, xv)
            return jnp.sum(y * up)

        dx, dvars = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(x), [v.value for v in variables])
        return np.asarray(dx), {n: np.asarray(g) for n, g in zip(names, dvars, strict=True)}
    if backend == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(layer(xt) * tf.constant(upstream))
        grads = tape.gradient(loss, [xt, *variables])
        return grads[0].numpy(), {n: g.numpy() for n, g in zip(names, grads[1:], strict=True)}
    if backend == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        for v in variables:
            v.value.grad = None
        loss = torch.sum(layer(xt) * torch.tensor(upstream))
        loss.backward()
        return xt.grad.cpu().numpy(), {n: v.value.grad.cpu().numpy() for n, v in zip(names, variables, strict=True)}
    raise NotImplementedError(backend)


def compile_fn(fn: Callable[..., Any], input_signature: Sequence[tuple] | None = None) -> Callable[..., Any]:
    """The backend's graph compiler around `fn`: jax.jit; tf.function, XLA-compiled unless a None-batch
    signature is given; torch.compile (what Keras's torch backend uses for jit_compile=True)."""
    backend = backend_name()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        if input_signature is not None:
            spec = [tf.TensorSpec(shape, "float32") for shape in input_signature]
            return tf.function(fn, input_signature=spec)
        return tf.function(fn, jit_compile=True)
    import torch

    return torch.compile(fn, dynamic=False)


def set_weights_random(layer: keras.layers.Layer, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gives gamma/beta random (non-trivial) values; returns them by name."""
    values = {}
    for v in layer.weights:
        value = rng.uniform(0.5, 1.5, size=tuple(v.shape)) if v.name == "gamma" else rng.normal(size=tuple(v.shape))
        value = value.astype("float32")
        v.assign(value)
        values[v.name] = value
    return values

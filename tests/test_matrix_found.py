"""Minimal cases of failures the generated matrix (tests/test_matrix.py) found, each on its own.

- Ghost batches under XLA: BatchNormalization(virtual_batch_size=3) in training, compiled by XLA (jax.jit,
  tf.function(jit_compile=True)), loses the exactness of its shifted statistics: at 1e4 + N(0, 1) it is 2e-3 off
  a float64 reference (eager: 1e-7), and a constant input no longer gives beta. On TensorFlow this happens only
  with XLA (a plain tf.function graph is exact); torch has no XLA and is checked eagerly.
- BatchNormalization under mixed_float16 in training, TensorFlow fast path under XLA: a constant batch of -6e4
  gives NaN outputs and a moving variance of -69.5 (the batch variance of a constant is 0; at -6e3 it came out
  1.07); eager and plain-graph TensorFlow, and XLA with the fast paths off, are exact.
- Channels-first group / instance normalization with a beta and no gamma: the torch backward pass raised
  "tensor does not have a device", under the float32 and the mixed_float16 policies alike.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import reference

import normkit

BACKEND = keras.backend.backend()


def compiled_training_call(layer: keras.layers.Layer, x: np.ndarray) -> np.ndarray:
    """layer(x, training=True) as the backend's XLA compiler runs it (torch: eager)."""
    if BACKEND == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        step = jax.jit(lambda tv, ntv, a: layer.stateless_call(tv, ntv, a, training=True)[0])
        return np.asarray(step(trainable, non_trainable, x), np.float64)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda a: layer(a, training=True), jit_compile=True)
        return step(tf.constant(x)).numpy().astype(np.float64)
    return np.asarray(keras.ops.convert_to_numpy(layer(x, training=True)), np.float64)


@pytest.mark.parametrize("data", ["offset_1e4", "constant"])
def test_ghost_batches_compiled_keep_the_shifted_statistics_exact(data: str) -> None:
    if data == "constant":
        x = np.full((6, 6), -6e4, "float32")
    else:
        x = (1e4 + np.random.default_rng(0).normal(0.0, 1.0, (6, 6))).astype("float32")
    layer = normkit.BatchNormalization(virtual_batch_size=3)
    layer.build(x.shape)
    y = compiled_training_call(layer, x)
    # Ghost batch j holds samples j, j + 2, j + 4 (tf.keras 2's strided split); gamma 1, beta 0.
    ghost = x.astype(np.float64).reshape(3, 2, 6)
    want = ((ghost - ghost.mean(axis=0)) / np.sqrt(ghost.var(axis=0) + 1e-3)).reshape(6, 6)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("constant", [-6e4, -6e3])
def test_batch_norm_16bit_constant_compiled_has_zero_variance(constant: float) -> None:
    x = np.full((6, 6), constant, "float32")
    layer = normkit.BatchNormalization(dtype="mixed_float16", momentum=0.7)
    layer.build(x.shape)
    y = compiled_training_call(layer, x)
    np.testing.assert_allclose(y, 0.0, atol=1e-2)  # beta
    moving_variance = np.asarray(keras.ops.convert_to_numpy(layer.moving_variance), np.float64)
    moving_mean = np.asarray(keras.ops.convert_to_numpy(layer.moving_mean), np.float64)
    if BACKEND == "jax":  # the stateless call left the variables as they were
        return
    np.testing.assert_allclose(moving_variance, 0.7 * 1.0 + 0.3 * 0.0, rtol=1e-4)
    np.testing.assert_allclose(moving_mean, 0.3 * constant, rtol=1e-4)


def gradients(layer: keras.layers.Layer, x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dL/dx, dL/dbeta) of L = sum(dy * layer(x)) by the backend's autodiff."""
    beta = layer.beta
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def loss(tv: list, a: Any) -> Any:
            y, _ = layer.stateless_call(tv, [], a)
            return jnp.sum(y.astype(jnp.float32) * dy)

        gtv, gx = jax.grad(loss, argnums=(0, 1))([beta.value], jnp.asarray(x))
        return np.asarray(gx, np.float64), np.asarray(gtv[0], np.float64)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(tf.cast(layer(xt), tf.float32) * dy)
        gx, gbeta = tape.gradient(loss, [xt, beta])
        return gx.numpy().astype(np.float64), gbeta.numpy().astype(np.float64)
    import torch

    xt = torch.tensor(x, requires_grad=True)
    loss = (layer(xt).float() * torch.tensor(dy)).sum()
    gx, gbeta = torch.autograd.grad(loss, [xt, beta.value])
    return gx.numpy().astype(np.float64), gbeta.numpy().astype(np.float64)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
@pytest.mark.parametrize("kind", ["group", "instance"])
def test_channels_first_beta_without_gamma_backward(kind: str, policy: str) -> None:
    shape = (2, 6, 4, 3)
    if kind == "group":
        layer = normkit.GroupNormalization(groups=3, axis=1, center=True, scale=False, dtype=policy)
    else:
        layer = normkit.InstanceNormalization(axis=1, center=True, scale=False, dtype=policy)
    layer.build(shape)
    rng = np.random.default_rng(3)
    x = rng.normal(3.0, 2.0, shape).astype("float32")
    dy = rng.normal(size=shape).astype("float32")
    gx, gbeta = gradients(layer, x, dy)
    groups = 3 if kind == "group" else -1
    x_seen = x.astype(policy.removeprefix("mixed_")).astype(np.float64)
    want_dx, _, want_dbeta = reference.group_norm_grad(x_seen, None, dy, groups=groups, axis=1)
    tol = 1e-4 if policy == "float32" else 1e-2
    np.testing.assert_allclose(gx, want_dx, rtol=tol, atol=tol * np.abs(want_dx).max())
    np.testing.assert_allclose(gbeta, want_dbeta, rtol=tol, atol=tol * np.abs(want_dbeta).max())

"""Checks every normkit layer test file runs: forward and gradients vs the reference, predict/compiled vs eager."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from _helpers import (
    assert_close,
    backend_name,
    call_layer,
    compile_fn,
    layer_autodiff,
    random_normal,
    set_weights_random,
    to_numpy,
)


def built_layer(factory: Callable[[], keras.layers.Layer], shape: tuple[int, ...], seed: int = 0):
    """A layer built for `shape`, with random gamma/beta; returns (layer, gamma or None, beta or None)."""
    layer = factory()
    layer.build(shape)
    values = set_weights_random(layer, np.random.default_rng(seed))
    return layer, values.get("gamma"), values.get("beta")


def check_forward(factory, shape, expected_fn: Callable[..., np.ndarray], seed: int = 0, loc: float = 0.3,
                  scale: float = 2.0) -> None:
    """layer(x, training=True/False/None) == expected_fn(x, gamma, beta) (these layers ignore `training`)."""
    layer, gamma, beta = built_layer(factory, shape, seed)
    x = random_normal(np.random.default_rng(seed + 1), shape, loc=loc, scale=scale)
    expected = expected_fn(x, gamma, beta)
    for training in (True, False):
        y = call_layer(layer, x, training=training)
        assert y.shape == shape
        assert y.dtype == np.float32
        assert_close(y, expected)
    assert_close(call_layer(layer, x), expected)


def check_gradients(factory, shape, grad_fn: Callable[..., tuple], seed: int = 0) -> None:
    """Backend autodiff through the layer, gamma/beta being its variables, vs the reference's gradients."""
    layer, gamma, beta = built_layer(factory, shape, seed)
    rng = np.random.default_rng(seed + 2)
    x = random_normal(rng, shape)
    up = random_normal(rng, shape)
    dx, dvars = layer_autodiff(layer, x, up)
    want_dx, want_dgamma, want_dbeta = grad_fn(x, gamma, up)
    expected = {"gamma": want_dgamma, "beta": want_dbeta}
    assert set(dvars) == {n for n in ("gamma", "beta") if getattr(layer, n) is not None}
    for got, want in [(dx, want_dx)] + [(dvars[n], expected[n]) for n in dvars]:
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


def check_predict_and_compiled(factory, shape, expected_fn, seed: int = 0) -> None:
    """model.predict of a Sequential holding the layer (None batch) == eager call == reference, and the
    backend's compiled call (jax.jit / tf.function with XLA) == eager."""
    layer, gamma, beta = built_layer(factory, shape, seed)
    x = random_normal(np.random.default_rng(seed + 3), shape, scale=3.0)
    eager = to_numpy(layer(keras.ops.convert_to_tensor(x)))
    expected = expected_fn(x, gamma, beta)
    assert_close(eager, expected)

    model = keras.Sequential([keras.Input(shape[1:]), layer])
    predicted = model.predict(x, batch_size=shape[0], verbose=0)
    np.testing.assert_allclose(predicted, eager, rtol=1e-5, atol=1e-5)
    # A different batch size through the same model (statistics never mix samples).
    half = model.predict(x[:1], verbose=0)
    np.testing.assert_allclose(half, eager[:1], rtol=1e-5, atol=1e-5)

    if backend_name() == "jax":
        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        fn = compile_fn(lambda tv, a: layer.stateless_call(tv, non_trainable, a)[0])
        compiled = to_numpy(fn(trainable, x))
    elif backend_name() == "tensorflow":
        compiled = to_numpy(compile_fn(lambda a: layer(a))(keras.ops.convert_to_tensor(x)))
    else:
        compiled = to_numpy(model(x, training=False))  # torch: the model's own path (predict above too)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-5)


def weight_summary(layer: keras.layers.Layer) -> dict[str, Any]:
    return {v.name: (tuple(v.shape), v.dtype, v.trainable) for v in layer.weights}

"""GroupNormalization (TensorFlow Addons semantics) vs the float64 reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import assert_close, call_layer, random_normal
from _layer_checks import check_forward, check_gradients, check_predict_and_compiled, weight_summary

import normkit

CASES = [
    # (shape, axis, groups)
    ((4, 6), -1, 3),  # rank 2
    ((4, 6), 1, 6),  # rank 2, one element per group: the output is beta
    ((3, 5, 6), -1, 2),
    ((3, 6, 5), 1, 3),  # channels first
    ((3, 6, 5), -2, 6),  # groups = C on a negative axis other than -1 (Addons reduced the wrong axes)
    ((2, 5, 7, 6), -1, 3),  # groups = C/2
    ((2, 6, 5, 7), 1, -1),  # groups = -1, channels first
    ((2, 3, 5, 9), 3, 1),  # groups = 1
    ((2, 4, 3, 5, 4), -1, 2),  # rank 5
    ((2, 4, 3, 5, 4), 1, 4),  # rank 5, channels first, groups = C
    ((1, 7, 3, 9), -1, 9),  # a batch of one, odd sizes
    ((2, 26, 26, 10), 3, 5),  # the seed tutorial's call
]


def _factory(axis, groups, **kwargs):
    return lambda: normkit.GroupNormalization(groups=groups, axis=axis, **kwargs)


def _expected(axis, groups, epsilon=1e-3):
    return lambda x, gamma, beta: ref.group_norm(x, gamma, beta, groups=groups, axis=axis, epsilon=epsilon)


@pytest.mark.parametrize("shape,axis,groups", CASES)
def test_forward_matches_reference(shape, axis, groups):
    check_forward(_factory(axis, groups), shape, _expected(axis, groups))


@pytest.mark.parametrize("shape,axis,groups", [CASES[i] for i in (0, 3, 4, 5, 8)])
def test_gradients_match_reference(shape, axis, groups):
    check_gradients(
        _factory(axis, groups),
        shape,
        lambda x, gamma, up: ref.group_norm_grad(x, gamma, up, groups=groups, axis=axis, epsilon=1e-3),
    )


@pytest.mark.parametrize("shape,axis,groups", [CASES[3], CASES[5]])
def test_predict_and_compiled_match_eager(shape, axis, groups):
    check_predict_and_compiled(_factory(axis, groups), shape, _expected(axis, groups))


def test_weights():
    layer = normkit.GroupNormalization(groups=5, axis=3)
    layer.build((None, 26, 26, 10))
    assert weight_summary(layer) == {"gamma": ((10,), "float32", True), "beta": ((10,), "float32", True)}
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.gamma), np.ones(10))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.beta), np.zeros(10))

    channels_first = normkit.GroupNormalization(groups=2, axis=1)
    channels_first.build((None, 4, 3, 3))
    assert weight_summary(channels_first)["gamma"][0] == (4,)


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_center_and_scale_off(center, scale):
    shape = (3, 4, 6)
    layer = normkit.GroupNormalization(groups=3, center=center, scale=scale, epsilon=1e-4)
    layer.build(shape)
    assert set(weight_summary(layer)) == {n for n, on in (("gamma", scale), ("beta", center)) if on}
    assert (layer.gamma is None) != scale and (layer.beta is None) != center
    gamma = np.linspace(0.5, 2.0, 6).astype("float32")
    beta = np.linspace(-1.0, 1.0, 6).astype("float32")
    if scale:
        layer.gamma.assign(gamma)
    if center:
        layer.beta.assign(beta)
    x = random_normal(np.random.default_rng(0), shape)
    expected = ref.group_norm(x, gamma if scale else None, beta if center else None, groups=3, epsilon=1e-4)
    assert_close(call_layer(layer, x), expected)


def test_non_default_epsilon():
    shape = (2, 3, 4)
    x = random_normal(np.random.default_rng(1), shape, scale=0.05)  # variance comparable to epsilon
    layer = normkit.GroupNormalization(groups=2, epsilon=0.01)
    assert_close(call_layer(layer, x), ref.group_norm(x, groups=2, epsilon=0.01))


def test_output_shape_and_symbolic_call():
    layer = normkit.GroupNormalization(groups=2, axis=1)
    inputs = keras.Input((4, None, 3))  # only the channel dim must be defined
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, 4, None, 3)
    assert layer.compute_output_shape((None, 4, 5, 3)) == (None, 4, 5, 3)

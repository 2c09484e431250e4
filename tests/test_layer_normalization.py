"""LayerNormalization (tf.keras 2 semantics) vs the float64 reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import assert_close, call_layer, random_normal
from _layer_checks import check_forward, check_gradients, check_predict_and_compiled, weight_summary

import normkit

CASES = [
    # (shape, axis)
    ((4, 7), -1),
    ((3, 5, 6), -1),
    ((3, 5, 6), [1, 2]),
    ((2, 3, 4, 5), [1, 2, 3]),  # H, W, C of an NHWC image
    ((2, 3, 4, 5), [1, 3]),  # non-contiguous axes
    ((2, 3, 4, 5), [-2, -1]),
    ((2, 3, 4, 5), [3, 1]),  # unsorted: gamma has the ascending-axis shape (3, 5)
    ((2, 3, 4, 5), 1),
    ((2, 3, 4, 5), (2,)),  # a one-element tuple
    ((2, 3, 2, 5, 3), [2, 4]),  # rank 5
    ((2, 26, 26, 10), 3),  # the seed tutorial's call
]


def _norm_axes(axis, rank):
    axes = [axis] if isinstance(axis, int) else list(axis)
    return sorted(a % rank for a in axes)


def _factory(axis, **kwargs):
    return lambda: normkit.LayerNormalization(axis=axis, **kwargs)


def _expected(axis, epsilon=1e-3):
    return lambda x, gamma, beta: ref.layer_norm(x, gamma, beta, axis=axis, epsilon=epsilon)


@pytest.mark.parametrize("shape,axis", CASES)
def test_forward_matches_reference(shape, axis):
    check_forward(_factory(axis), shape, _expected(axis))


@pytest.mark.parametrize("shape,axis", [CASES[i] for i in (0, 3, 4, 6)])
def test_gradients_match_reference(shape, axis):
    check_gradients(
        _factory(axis), shape, lambda x, gamma, up: ref.layer_norm_grad(x, gamma, up, axis=axis, epsilon=1e-3)
    )


@pytest.mark.parametrize("shape,axis", [CASES[1], CASES[4]])
def test_predict_and_compiled_match_eager(shape, axis):
    check_predict_and_compiled(_factory(axis, center=True, scale=True), shape, _expected(axis))


@pytest.mark.parametrize("shape,axis", CASES)
def test_weight_shapes(shape, axis):
    layer = normkit.LayerNormalization(axis=axis)
    layer.build(shape)
    pshape = tuple(shape[a] for a in _norm_axes(axis, len(shape)))
    assert weight_summary(layer) == {"gamma": (pshape, "float32", True), "beta": (pshape, "float32", True)}


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_center_and_scale_off(center, scale):
    shape = (3, 4, 5)
    layer = normkit.LayerNormalization(axis=[1, 2], center=center, scale=scale)
    layer.build(shape)
    assert set(weight_summary(layer)) == {n for n, on in (("gamma", scale), ("beta", center)) if on}
    rng = np.random.default_rng(0)
    gamma = rng.uniform(0.5, 1.5, size=(4, 5)).astype("float32")
    beta = rng.normal(size=(4, 5)).astype("float32")
    if scale:
        layer.gamma.assign(gamma)
    if center:
        layer.beta.assign(beta)
    x = random_normal(rng, shape)
    expected = ref.layer_norm(x, gamma if scale else None, beta if center else None, axis=[1, 2])
    assert_close(call_layer(layer, x), expected)


def test_normalizes_each_sample_separately_with_unknown_other_dims():
    """Only the normalized dims must be defined: a sequence of unknown length normalized over features."""
    layer = normkit.LayerNormalization(axis=-1)
    inputs = keras.Input((None, 6))
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(1)
    for length in (3, 5):
        x = random_normal(rng, (2, length, 6), loc=4.0)
        assert_close(model.predict(x, verbose=0), ref.layer_norm(x))

"""RMSNormalization vs the float64 reference and vs Keras 3's keras.layers.RMSNormalization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import assert_close, call_layer, random_normal, to_numpy
from _layer_checks import check_forward, check_gradients, check_predict_and_compiled, weight_summary

import normkit

CASES = [
    # (shape, axis)
    ((4, 7), -1),
    ((3, 5, 6), -1),
    ((3, 5, 6), [1, 2]),
    ((2, 3, 4, 5), [1, 3]),  # non-contiguous axes
    ((2, 3, 4, 5), [3, 1]),  # unsorted: gamma has the ascending-axis shape (3, 5)
]


def _factory(axis, **kwargs):
    return lambda: normkit.RMSNormalization(axis=axis, **kwargs)


def _expected(axis, epsilon=1e-6):
    return lambda x, gamma, beta: ref.rms_norm(x, gamma, beta, axis=axis, epsilon=epsilon)


@pytest.mark.parametrize("shape,axis", [*CASES, ((2, 3, 4, 5), 1)])
def test_forward_matches_reference(shape, axis):
    # loc=0.3: a mean that RMS normalization, unlike layer normalization, does not subtract.
    check_forward(_factory(axis), shape, _expected(axis))


@pytest.mark.parametrize("shape,axis", [CASES[3]])
def test_forward_with_center_and_a_large_epsilon(shape, axis):
    check_forward(_factory(axis, center=True, epsilon=0.5), shape, _expected(axis, epsilon=0.5))


@pytest.mark.parametrize("shape,axis,center", [(CASES[0][0], -1, False), (CASES[3][0], [1, 3], True)])
def test_gradients_match_reference(shape, axis, center):
    check_gradients(
        _factory(axis, center=center),
        shape,
        lambda x, gamma, up: ref.rms_norm_grad(x, gamma, up, axis=axis, epsilon=1e-6),
    )


def test_predict_and_compiled_match_eager():
    check_predict_and_compiled(_factory([1, 2], center=True), (3, 5, 6), _expected([1, 2]))


@pytest.mark.parametrize("shape,axis", CASES)
def test_weight_shapes_and_defaults(shape, axis):
    layer = normkit.RMSNormalization(axis=axis)
    layer.build(shape)
    axes = sorted(a % len(shape) for a in ([axis] if isinstance(axis, int) else axis))
    assert weight_summary(layer) == {"gamma": (tuple(shape[a] for a in axes), "float32", True)}
    assert layer.epsilon == 1e-6 and layer.scale and not layer.center
    np.testing.assert_array_equal(to_numpy(layer.gamma), 1.0)


def test_scale_off_has_no_weights():
    layer = normkit.RMSNormalization(scale=False)
    x = random_normal(np.random.default_rng(0), (3, 4), loc=1.0)
    assert_close(call_layer(layer, x), ref.rms_norm(x))
    assert layer.weights == []


@pytest.mark.parametrize("axis,shape", [(-1, (3, 8)), ([1, 2], (2, 3, 4)), ([-2, -1], (2, 3, 4))])
def test_same_numbers_as_keras_rms_normalization(axis, shape):
    """Same arguments, same weights: the outputs of keras.layers.RMSNormalization, to float32 rounding.
    (Keras multiplies by its `scale` without reshaping it, so it only handles trailing axes: axis=-2 fails
    there with a broadcasting error; normkit reshapes gamma onto the axes it spans.)"""
    rng = np.random.default_rng(3)
    x = random_normal(rng, shape, loc=0.5, scale=2.0)
    theirs = keras.layers.RMSNormalization(axis=axis, epsilon=1e-3)
    ours = normkit.RMSNormalization(axis=axis, epsilon=1e-3)
    theirs.build(shape)
    ours.build(shape)
    scale = rng.uniform(0.5, 1.5, size=tuple(theirs.scale.shape)).astype("float32")
    theirs.scale.assign(scale)
    ours.gamma.assign(scale)
    np.testing.assert_allclose(call_layer(ours, x), call_layer(theirs, x), rtol=2e-6, atol=2e-6)


def test_from_config_takes_keras_rms_normalization_config():
    theirs = keras.layers.RMSNormalization(axis=[1, 2], epsilon=1e-4, name="rms")
    theirs.build((2, 3, 4))  # Keras writes the axis as a sorted list after build
    ours = normkit.RMSNormalization.from_config(theirs.get_config())
    assert ours.axis == [1, 2] and ours.epsilon == 1e-4 and ours.name == "rms"
    assert ours.scale and not ours.center
    rng = np.random.default_rng(4)
    scale = rng.uniform(0.5, 1.5, size=(3, 4)).astype("float32")
    theirs.scale.assign(scale)
    ours.build((2, 3, 4))
    ours.gamma.assign(scale)
    x = random_normal(rng, (2, 3, 4))
    np.testing.assert_allclose(call_layer(ours, x), call_layer(theirs, x), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("policy,tol", [("mixed_float16", 2e-3), ("mixed_bfloat16", 1.6e-2)])
def test_16_bit_policies(policy, tol):
    """16-bit inputs and outputs, float32 gamma, statistics in float32: large values whose squares overflow
    float16 (|x| > 256) still normalize."""
    keras.config.set_dtype_policy(policy)
    layer = normkit.RMSNormalization(axis=-1, center=True)
    x = random_normal(np.random.default_rng(5), (3, 16), loc=300.0, scale=200.0)
    layer.build(x.shape)
    assert layer.gamma.dtype == "float32" and layer.beta.dtype == "float32"
    y = call_layer(layer, x)
    assert str(y.dtype) == ("float16" if policy == "mixed_float16" else "bfloat16")
    x16 = to_numpy(keras.ops.cast(keras.ops.cast(x, layer.compute_dtype), "float32")).astype(np.float64)
    assert np.all(np.isfinite(y.astype(np.float64)))
    assert_close(y, ref.rms_norm(x16), rtol=tol, atol=tol)


def test_config_round_trip_and_registration():
    layer = normkit.RMSNormalization(
        axis=[1, 2], epsilon=1e-5, center=True, gamma_initializer="random_uniform", gamma_regularizer="l2",
        beta_constraint="non_neg", name="rms",
    )
    config = layer.get_config()
    assert config["axis"] == [1, 2] and config["center"] is True and config["epsilon"] == 1e-5
    clone = normkit.RMSNormalization.from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "normkit>RMSNormalization"
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


def test_keras_file_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    model = keras.Sequential([keras.Input((4, 5)), normkit.RMSNormalization(axis=[1, 2], center=True)])
    for v in model.weights:
        v.assign(rng.normal(size=tuple(v.shape)).astype("float32"))
    x = random_normal(rng, (2, 4, 5))
    path = tmp_path / "rms.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[0], normkit.RMSNormalization)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    "kwargs,shape,error,message",
    [
        ({"axis": 3}, (2, 3), ValueError, "axis=3"),
        ({"axis": [1, 1]}, None, ValueError, "axis=[1, 1]"),
        ({"axis": "last"}, None, TypeError, "axis='last'"),
        ({"axis": 1}, (2, None), ValueError, "defined dimension"),
        ({"epsilon": -1.0}, None, ValueError, "epsilon=-1.0"),
        ({"epsilon": "small"}, None, TypeError, "epsilon='small'"),
        ({"center": 1}, None, TypeError, "center=1"),
        ({"scale": None}, None, TypeError, "scale=None"),
        ({"gamma_initializer": "no-such-initializer"}, None, ValueError, "gamma_initializer='no-such-initializer'"),
        ({}, (4,), ValueError, "rank >= 2"),
    ],
)
def test_errors_name_the_argument(kwargs, shape, error, message):
    with pytest.raises(error) as info:
        layer = normkit.RMSNormalization(**kwargs)
        if shape is not None:
            layer.build(shape)
    assert message in str(info.value)

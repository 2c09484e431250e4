"""InstanceNormalization (TensorFlow Addons semantics) vs the float64 reference."""

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
    ((3, 5, 6), -1),
    ((3, 6, 5), 1),  # channels first
    ((2, 5, 4, 3), -3),  # a negative axis other than -1 (Addons reduced the wrong axes here)
    ((2, 7, 5, 4), -1),
    ((2, 4, 7, 5), 1),
    ((2, 3, 4, 2, 5), -1),  # rank 5
    ((2, 3, 4, 2, 5), 1),
    ((1, 9, 3), 2),
]

SEED_KWARGS = dict(
    axis=3, center=True, scale=True, beta_initializer="random_uniform", gamma_initializer="random_uniform"
)


def _factory(axis, **kwargs):
    return lambda: normkit.InstanceNormalization(axis=axis, **kwargs)


def _expected(axis, epsilon=1e-3):
    return lambda x, gamma, beta: ref.instance_norm(x, gamma, beta, axis=axis, epsilon=epsilon)


@pytest.mark.parametrize("shape,axis", CASES)
def test_forward_matches_reference(shape, axis):
    check_forward(_factory(axis), shape, _expected(axis))


@pytest.mark.parametrize("shape,axis", [CASES[i] for i in (0, 2, 4)])
def test_gradients_match_reference(shape, axis):
    check_gradients(
        _factory(axis), shape, lambda x, gamma, up: ref.instance_norm_grad(x, gamma, up, axis=axis, epsilon=1e-3)
    )


def test_predict_and_compiled_match_eager():
    check_predict_and_compiled(_factory(3, **{k: v for k, v in SEED_KWARGS.items() if k != "axis"}),
                               (2, 6, 6, 10), _expected(3))


def test_seed_tutorial_arguments():
    """The seed's call: random-uniform gamma/beta in [-0.05, 0.05], one (gamma, beta) per channel."""
    layer = normkit.InstanceNormalization(**SEED_KWARGS)
    x = random_normal(np.random.default_rng(0), (2, 26, 26, 10))
    y = call_layer(layer, x)
    gamma = keras.ops.convert_to_numpy(layer.gamma)
    beta = keras.ops.convert_to_numpy(layer.beta)
    assert weight_summary(layer) == {"gamma": ((10,), "float32", True), "beta": ((10,), "float32", True)}
    assert np.all(np.abs(gamma) <= 0.05) and np.all(np.abs(beta) <= 0.05)
    assert len(np.unique(gamma)) == 10  # really random, not the default ones
    assert_close(y, ref.instance_norm(x, gamma, beta, axis=3))


def test_rank2_output_is_beta():
    """On a rank-2 input every group is one element: x - mean = 0, so the output is beta."""
    layer = normkit.InstanceNormalization()
    layer.build((4, 5))
    beta = np.arange(5, dtype="float32") - 2.0
    layer.beta.assign(beta)
    x = random_normal(np.random.default_rng(1), (4, 5), scale=10.0)
    y = call_layer(layer, x)
    np.testing.assert_allclose(y, np.broadcast_to(beta, (4, 5)), atol=1e-6)


def test_same_as_group_normalization_with_one_group_per_channel():
    shape = (2, 3, 4, 6)
    x = random_normal(np.random.default_rng(2), shape)
    inst = normkit.InstanceNormalization(axis=-1)
    group = normkit.GroupNormalization(groups=6, axis=-1)
    np.testing.assert_allclose(call_layer(inst, x), call_layer(group, x), rtol=1e-6, atol=1e-6)


def test_addons_groups_equal_to_channels_is_accepted():
    """Addons saved groups = C after build; such a layer works and is plain instance normalization."""
    layer = normkit.InstanceNormalization(axis=-1, groups=6)
    x = random_normal(np.random.default_rng(3), (2, 5, 6))
    assert_close(call_layer(layer, x), ref.instance_norm(x))
    assert "groups" not in layer.get_config() or layer.get_config()["groups"] in (-1, 6)

"""Masks on Group/Instance/Layer/RMS/FilterResponse normalization vs the weighted float64 reference.

A mask leaves positions out of the statistics; every position is still normalized with them; a statistic
with nothing unmasked gives beta (never NaN, in the output or the gradients); the mask propagates.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import random_normal, set_weights_random
from _masked_calls import autodiff_with_mask, call_with_mask

import normkit

# name: (factory, input shape, reference forward, reference gradient (dx, dgamma, dbeta)); weights full-rank.
LAYERS = {
    "group": (
        lambda: normkit.GroupNormalization(groups=2, axis=-1),
        (3, 5, 4),
        lambda x, g, b, w: ref.masked_group_norm(x, g, b, groups=2, weights=w),
        lambda x, g, up, w: ref.masked_group_norm_grad(x, g, up, groups=2, weights=w),
    ),
    "group_channels_first": (
        lambda: normkit.GroupNormalization(groups=2, axis=1),
        (3, 4, 5),
        lambda x, g, b, w: ref.masked_group_norm(x, g, b, groups=2, axis=1, weights=w),
        lambda x, g, up, w: ref.masked_group_norm_grad(x, g, up, groups=2, axis=1, weights=w),
    ),
    "instance": (
        lambda: normkit.InstanceNormalization(axis=-1),
        (3, 5, 2, 3),
        lambda x, g, b, w: ref.masked_group_norm(x, g, b, groups=-1, weights=w),
        lambda x, g, up, w: ref.masked_group_norm_grad(x, g, up, groups=-1, weights=w),
    ),
    "layer": (
        lambda: normkit.LayerNormalization(axis=[1, 2]),
        (3, 5, 4),
        lambda x, g, b, w: ref.masked_layer_norm(x, g, b, axis=[1, 2], weights=w),
        lambda x, g, up, w: ref.masked_layer_norm_grad(x, g, up, axis=[1, 2], weights=w),
    ),
    "rms": (
        lambda: normkit.RMSNormalization(axis=[1, 2], center=True),
        (3, 5, 4),
        lambda x, g, b, w: ref.rms_norm(x, g, b, axis=[1, 2], weights=w),
        lambda x, g, up, w: ref.rms_norm_grad(x, g, up, axis=[1, 2], weights=w),
    ),
    "frn": (
        lambda: normkit.FilterResponseNormalization(epsilon=1e-3),
        (3, 4, 3, 2),
        lambda x, g, b, w: ref.filter_response_norm(x, g, b, epsilon=1e-3, weights=w),
        lambda x, g, up, w: ref.filter_response_norm_grad(x, g, up, epsilon=1e-3, weights=w)[:3],
    ),
}


def _built(name, seed=0):
    factory, shape, forward, backward = LAYERS[name]
    layer = factory()
    layer.build(shape)
    values = set_weights_random(layer, np.random.default_rng(seed))
    return layer, shape, values.get("gamma"), values.get("beta"), forward, backward


def _sequence_mask(rng, shape, fully_masked_sample=None):
    """A Keras-style boolean mask of rank `len(shape) - 1` (every axis but the features)."""
    mask = rng.uniform(size=shape[:-1]) < 0.6
    if fully_masked_sample is not None:
        mask[fully_masked_sample] = False
    return mask


def _check(layer, x, mask, weights, gamma, beta, forward, backward, seed):
    rng = np.random.default_rng(seed)
    expected = forward(x, gamma, beta, weights)
    y = call_with_mask(layer, x, mask)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=3e-5)
    up = random_normal(rng, x.shape)
    dx, dvars = autodiff_with_mask(layer, x, up, mask)
    want_dx, want_dgamma, want_dbeta = backward(x, gamma, up, weights)
    for got, want in ((dx, want_dx), (dvars["gamma"], want_dgamma), (dvars["beta"], want_dbeta)):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want.reshape(got.shape), rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
    return y


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_sequence_mask_matches_weighted_reference(name):
    """A rank - 1 mask (a Keras sequence mask) covers every feature of a position; one sample fully masked."""
    layer, shape, gamma, beta, forward, backward = _built(name)
    rng = np.random.default_rng(1)
    x = random_normal(rng, shape, loc=0.5, scale=2.0)
    mask = _sequence_mask(rng, shape, fully_masked_sample=1)
    weights = np.broadcast_to(mask[..., None], shape).astype(np.float64)
    y = _check(layer, x, mask, weights, gamma, beta, forward, backward, seed=2)
    # The fully masked sample: nothing to normalize with, so the output is beta (0 * gamma + beta).
    beta_view = np.broadcast_to(beta.reshape(_param_shape(name, shape)), shape)
    np.testing.assert_allclose(y[1], beta_view[1], atol=1e-6)


def _param_shape(name, shape):
    """How gamma/beta broadcast against the input."""
    if name == "group_channels_first":
        return [1, shape[1], 1]
    if name in ("layer", "rms"):
        return [1, shape[1], shape[2]]
    return [1] * (len(shape) - 1) + [shape[-1]]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_full_rank_float_mask_matches_weighted_reference(name):
    """A mask of the input's rank, per element (channels of one position masked differently), given as 0/1
    floats."""
    layer, shape, gamma, beta, forward, backward = _built(name, seed=3)
    rng = np.random.default_rng(4)
    x = random_normal(rng, shape, loc=-0.3, scale=1.5)
    mask = (rng.uniform(size=shape) < 0.7).astype("float32")
    _check(layer, x, mask, mask.astype(np.float64), gamma, beta, forward, backward, seed=5)


@pytest.mark.parametrize("name", ["group", "rms"])
def test_fractional_weights(name):
    """tf-keras' GroupNormalization took the mask as frequency weights (tf.nn.weighted_moments): so do these."""
    layer, shape, gamma, beta, forward, backward = _built(name, seed=10)
    rng = np.random.default_rng(11)
    x = random_normal(rng, shape, loc=0.2)
    weights = rng.uniform(0.0, 2.0, size=shape).astype("float32")
    _check(layer, x, weights, weights.astype(np.float64), gamma, beta, forward, backward, seed=12)


def test_all_ones_mask_equals_no_mask():
    layer, shape, *_ = _built("group")
    x = random_normal(np.random.default_rng(6), shape)
    np.testing.assert_allclose(
        call_with_mask(layer, x, np.ones(shape[:-1], bool)), call_with_mask(layer, x, None), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("name", ["group", "layer", "rms"])
def test_masking_layer_in_a_sequential_model(name):
    """Masking -> norm -> a layer that reads the mask: padded time steps are left out of the statistics and
    the mask reaches the next layer."""
    factory, shape, forward, _ = LAYERS[name]
    rng = np.random.default_rng(7)
    x = random_normal(rng, shape, loc=1.0)
    x[0, 3:] = 0.0  # padding that Masking(0.0) masks
    x[2, 1:] = 0.0
    norm = factory()
    model = keras.Sequential([keras.Input(shape[1:]), keras.layers.Masking(0.0), norm])
    values = set_weights_random(norm, np.random.default_rng(8))
    keep = np.any(x != 0.0, axis=-1)
    expected = forward(x, values["gamma"], values.get("beta"), np.broadcast_to(keep[..., None], shape))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=3e-5)
    # The mask propagates: a following LSTM-style consumer gets it from compute_mask.
    out_mask = norm.compute_mask(x, keras.ops.convert_to_tensor(keep))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out_mask), keep)
    pooled = keras.Sequential([keras.Input(shape[1:]), keras.layers.Masking(0.0), factory(),
                               keras.layers.GlobalAveragePooling1D()])
    assert pooled.predict(x, verbose=0).shape == (shape[0], shape[-1])


def test_embedding_mask_zero_reaches_the_norm():
    """Embedding(mask_zero=True) -> LayerNormalization over the features: each position is its own statistic,
    so a padded position has nothing unmasked and gives beta (zeros here); the others are normalized as usual."""
    tokens = np.array([[3, 5, 0, 0], [2, 0, 0, 0]])
    embed = keras.layers.Embedding(8, 4, mask_zero=True)
    norm = normkit.LayerNormalization()
    inputs = keras.Input((4,), dtype="int32")
    model = keras.Model(inputs, norm(embed(inputs)))
    x = keras.ops.convert_to_numpy(embed(tokens))
    expected = np.where((tokens != 0)[..., None], ref.layer_norm(x), 0.0)
    np.testing.assert_allclose(model.predict(tokens, verbose=0), expected, rtol=1e-5, atol=3e-5)


@pytest.mark.parametrize("name", ["group", "frn"])
def test_mask_of_wrong_rank_is_an_error(name):
    layer, shape, *_ = _built(name)
    x = random_normal(np.random.default_rng(9), shape)
    with pytest.raises(ValueError, match="mask must have the input's rank"):
        layer(x, mask=np.ones(shape[:1], bool))

"""Property-based tests (hypothesis): random shapes, axes, groups and epsilon against the reference."""

from __future__ import annotations

import numpy as np
import reference as ref
from _helpers import assert_close, call_layer
from hypothesis import given, settings
from hypothesis import strategies as st

import normkit


@st.composite
def group_cases(draw):
    """(shape, axis as the user writes it, groups or -1, epsilon)."""
    rank = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 3))] + [draw(st.integers(1, 5)) for _ in range(rank - 1)]
    channel_axis = draw(st.integers(1, rank - 1))
    shape[channel_axis] = draw(st.sampled_from([1, 2, 3, 4, 6]))
    channels = shape[channel_axis]
    groups = draw(st.sampled_from([-1] + [g for g in range(1, channels + 1) if channels % g == 0]))
    axis = draw(st.sampled_from([channel_axis, channel_axis - rank]))
    epsilon = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return tuple(shape), axis, groups, epsilon


@st.composite
def layer_cases(draw):
    rank = draw(st.integers(2, 4))
    shape = tuple([draw(st.integers(1, 3))] + [draw(st.integers(1, 5)) for _ in range(rank - 1)])
    axes = draw(st.lists(st.integers(1, rank - 1), min_size=1, max_size=rank - 1, unique=True))
    axes = [a - rank if draw(st.booleans()) else a for a in axes]
    axis = axes[0] if len(axes) == 1 and draw(st.booleans()) else axes
    epsilon = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return shape, axis, epsilon


def _data(shape, seed, loc=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * rng.uniform(0.1, 10.0) + loc).astype("float32")


def _set_params(layer, seed):
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 1.5, size=layer.gamma.shape).astype("float32")
    beta = rng.normal(size=layer.beta.shape).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return gamma, beta


@given(group_cases(), st.integers(0, 2**16))
def test_group_normalization_matches_reference(case, seed):
    shape, axis, groups, epsilon = case
    layer = normkit.GroupNormalization(groups=groups, axis=axis, epsilon=epsilon)
    layer.build(shape)
    gamma, beta = _set_params(layer, seed)
    x = _data(shape, seed, loc=float(seed % 7) - 3.0)
    assert_close(call_layer(layer, x), ref.group_norm(x, gamma, beta, groups=groups, axis=axis, epsilon=epsilon),
                 rtol=1e-5, atol=5e-5)


@given(layer_cases(), st.integers(0, 2**16))
def test_layer_normalization_matches_reference(case, seed):
    shape, axis, epsilon = case
    layer = normkit.LayerNormalization(axis=axis, epsilon=epsilon)
    layer.build(shape)
    gamma, beta = _set_params(layer, seed)
    x = _data(shape, seed)
    assert_close(call_layer(layer, x), ref.layer_norm(x, gamma, beta, axis=axis, epsilon=epsilon),
                 rtol=1e-5, atol=5e-5)


@settings(max_examples=15)
@given(group_cases(), st.integers(0, 2**16))
def test_group_statistics_of_the_output(case, seed):
    """gamma=1, beta=0: every (sample, group) of the output has mean 0 and variance var/(var + eps)."""
    shape, axis, groups, epsilon = case
    layer = normkit.GroupNormalization(groups=groups, axis=axis, epsilon=epsilon)
    x = _data(shape, seed, loc=5.0)
    y = call_layer(layer, x).astype(np.float64)
    rank = len(shape)
    channel_axis = axis % rank
    channels = shape[channel_axis]
    n_groups = channels if groups == -1 else groups
    size = channels // n_groups
    for n in range(shape[0]):
        for g in range(n_groups):
            block = np.take(np.take(y, [n], axis=0), range(g * size, (g + 1) * size), axis=channel_axis)
            xb = np.take(np.take(x, [n], axis=0), range(g * size, (g + 1) * size), axis=channel_axis)
            var_in = xb.astype(np.float64).var()
            assert abs(block.mean()) < 1e-4
            assert np.isclose(block.var(), var_in / (var_in + epsilon), rtol=1e-4, atol=1e-5)


@settings(max_examples=15)
@given(st.sampled_from(["group", "instance", "layer"]), group_cases(), st.integers(0, 2**16))
def test_samples_are_independent(kind, case, seed):
    """A sample's output depends on that sample only: changing the others, or the batch size, changes nothing."""
    shape, axis, groups, epsilon = case
    layer = {
        "group": lambda: normkit.GroupNormalization(groups=groups, axis=axis, epsilon=epsilon),
        "instance": lambda: normkit.InstanceNormalization(axis=axis, epsilon=epsilon),
        "layer": lambda: normkit.LayerNormalization(axis=list(range(1, len(shape))), epsilon=epsilon),
    }[kind]()
    batch = (shape[0] + 1,) + shape[1:]
    layer.build(batch)
    _set_params(layer, seed)
    x = _data(batch, seed)
    other = x.copy()
    other[1:] = _data((batch[0] - 1,) + shape[1:], seed + 1, loc=100.0)
    y = call_layer(layer, x)
    np.testing.assert_allclose(call_layer(layer, other)[0], y[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(call_layer(layer, x[:1]), y[:1], rtol=1e-6, atol=1e-6)

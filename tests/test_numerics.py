"""Numerics (docs/behaviour.md, "Numerics"): 16-bit inputs, large offsets, constant inputs, NaN, dtype policies."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import apply, assert_close, call_layer, float64_enabled, random_normal, to_numpy

import normkit

# (id, layer factory, reference(x, gamma, beta, epsilon), input shape, one "group" index for the NaN test,
#  param shape)
LAYERS = [
    (
        "group",
        lambda **kw: normkit.GroupNormalization(groups=2, axis=-1, **kw),
        lambda x, g, b, eps=1e-3: ref.group_norm(x, g, b, groups=2, axis=-1, epsilon=eps),
        (2, 8, 8, 4),
    ),
    (
        "group_channels_first",
        lambda **kw: normkit.GroupNormalization(groups=3, axis=1, **kw),
        lambda x, g, b, eps=1e-3: ref.group_norm(x, g, b, groups=3, axis=1, epsilon=eps),
        (2, 6, 9, 7),
    ),
    (
        "instance",
        lambda **kw: normkit.InstanceNormalization(axis=-1, **kw),
        lambda x, g, b, eps=1e-3: ref.instance_norm(x, g, b, axis=-1, epsilon=eps),
        (2, 9, 7, 3),
    ),
    (
        "layer",
        lambda **kw: normkit.LayerNormalization(axis=[1, 2], **kw),
        lambda x, g, b, eps=1e-3: ref.layer_norm(x, g, b, axis=[1, 2], epsilon=eps),
        (3, 12, 11, 2),
    ),
]
IDS = [c[0] for c in LAYERS]


def _built(factory, shape, **kwargs):
    layer = factory(**kwargs)
    layer.build(shape)
    rng = np.random.default_rng(7)
    values = {}
    for v in layer.weights:
        value = (rng.uniform(0.5, 1.5, size=v.shape) if v.name == "gamma" else rng.normal(size=v.shape))
        v.assign(value.astype(v.dtype))
        values[v.name] = to_numpy(v).astype(np.float64)
    return layer, values["gamma"], values["beta"]


def _rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to `dtype` (float16 / bfloat16) and back, as float64: the values the layer actually sees."""
    return to_numpy(keras.ops.cast(keras.ops.cast(x, dtype), "float32")).astype(np.float64)


# --- 16-bit inputs with large magnitudes ---------------------------------------------------------------


@pytest.mark.parametrize("case", LAYERS, ids=IDS)
def test_float16_input_under_float32_policy(case):
    """A float16 input is cast to the float32 compute dtype (tf.keras 2 behaviour); |x| up to 1000, whose
    squares overflow float16."""
    _, factory, expected_fn, shape = case
    layer, gamma, beta = _built(factory, shape)
    x = np.random.default_rng(0).uniform(-1000, 1000, size=shape).astype("float16")
    y = call_layer(layer, keras.ops.convert_to_tensor(x))
    assert y.dtype == np.float32
    assert np.all(np.isfinite(y))
    assert_close(y, expected_fn(x.astype(np.float64), gamma, beta))


@pytest.mark.parametrize("case", LAYERS, ids=IDS)
def test_mixed_float16_with_large_values(case):
    """Under mixed_float16 the output is float16, computed in float32 from the float16 values."""
    _, factory, expected_fn, shape = case
    keras.config.set_dtype_policy("mixed_float16")
    layer, gamma, beta = _built(factory, shape)
    assert layer.compute_dtype == "float16"
    assert layer.gamma.dtype == "float32" and layer.beta.dtype == "float32"
    x = np.random.default_rng(1).uniform(-1000, 1000, size=shape).astype("float32")
    y = call_layer(layer, x)
    assert y.dtype == np.float16
    assert np.all(np.isfinite(y))
    assert_close(y, expected_fn(_rounded(x, "float16"), gamma, beta), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("op", ["group", "layer", "instance"])
def test_functional_ops_keep_float16_and_do_not_overflow(op):
    x = np.random.default_rng(2).uniform(-1000, 1000, size=(2, 6, 4)).astype("float16")
    fn = {
        "group": lambda a: normkit.ops.group_norm(a, groups=2),
        "layer": lambda a: normkit.ops.layer_norm(a, axis=[1, 2]),
        "instance": lambda a: normkit.ops.instance_norm(a),
    }[op]
    want = {
        "group": lambda a: ref.group_norm(a, groups=2),
        "layer": lambda a: ref.layer_norm(a, axis=[1, 2]),
        "instance": lambda a: ref.instance_norm(a),
    }[op]
    y = apply(fn, keras.ops.convert_to_tensor(x))
    assert y.dtype == np.float16
    assert np.all(np.isfinite(y))
    assert_close(y, want(x.astype(np.float64)), rtol=2e-3, atol=2e-3)


# --- large common offset -------------------------------------------------------------------------------


def _naive_float32_group_norm(x: np.ndarray, groups: int) -> np.ndarray:
    """E[x^2] - E[x]^2 in float32: what the offset test must be able to reject."""
    n = x.shape[0]
    xg = x.reshape(n, -1, groups, x.shape[-1] // groups).astype(np.float32)
    mean = xg.mean(axis=(1, 3), keepdims=True, dtype=np.float32)
    var = np.maximum((xg * xg).mean(axis=(1, 3), keepdims=True, dtype=np.float32) - mean * mean, 0)
    return ((xg - mean) / np.sqrt(var + np.float32(1e-3))).reshape(x.shape)


OFFSET_TOL = 1e-3


def test_offset_tolerance_rejects_the_one_pass_variance():
    """The tolerance used below is tight enough to fail a naive E[x^2] - E[x]^2 in float32."""
    x = random_normal(np.random.default_rng(3), (2, 8, 8, 4), loc=1e4, scale=1.0)
    error = np.abs(_naive_float32_group_norm(x, 2) - ref.group_norm(x, groups=2)).max()
    assert error > 10 * OFFSET_TOL


@pytest.mark.parametrize("case", LAYERS, ids=IDS)
def test_large_offset(case):
    """mean 1e4, std 1 in float32: the two-pass variance normalizes to within 1e-3 of the reference."""
    _, factory, expected_fn, shape = case
    layer, gamma, beta = _built(factory, shape)
    x = random_normal(np.random.default_rng(4), shape, loc=1e4, scale=1.0)
    y = call_layer(layer, x)
    np.testing.assert_allclose(y, expected_fn(x, gamma, beta), rtol=0, atol=OFFSET_TOL)


def test_large_offset_functional_ops():
    x = random_normal(np.random.default_rng(5), (4, 10, 6), loc=-1e4, scale=1.0)
    np.testing.assert_allclose(
        apply(lambda a: normkit.ops.group_norm(a, groups=3), x), ref.group_norm(x, groups=3), atol=OFFSET_TOL
    )
    np.testing.assert_allclose(
        apply(lambda a: normkit.ops.layer_norm(a, axis=[1, 2]), x), ref.layer_norm(x, axis=[1, 2]), atol=OFFSET_TOL
    )
    np.testing.assert_allclose(apply(lambda a: normkit.ops.batch_norm(a), x), ref.batch_norm(x), atol=OFFSET_TOL)


# --- constant inputs and NaN ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, 3.7, -250.0])
@pytest.mark.parametrize("case", LAYERS, ids=IDS)
def test_constant_input_gives_beta(case, value):
    _, factory, _, shape = case
    layer, gamma, beta = _built(factory, shape)
    x = np.full(shape, value, dtype="float32")
    y = call_layer(layer, x)
    assert not np.any(np.isnan(y))
    expected = ref.layer_norm(np.zeros(shape), None, beta, axis=[1, 2]) if case[0] == "layer" else None
    if expected is None:  # beta on the channel axis
        axis = 1 if case[0] == "group_channels_first" else -1
        bshape = [1] * len(shape)
        bshape[axis] = -1
        expected = np.broadcast_to(beta.reshape(bshape), shape)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)


def test_nan_stays_in_its_group():
    shape = (2, 3, 4, 6)  # groups of 2 channels
    x = random_normal(np.random.default_rng(6), shape)
    x[1, 2, 1, 3] = np.nan  # sample 1, group 1 (channels 2, 3)
    layer, gamma, beta = _built(lambda: normkit.GroupNormalization(groups=3), shape)
    y = call_layer(layer, x)  # no exception
    in_group = np.zeros(shape, dtype=bool)
    in_group[1, :, :, 2:4] = True
    assert np.all(np.isnan(y[in_group]))
    assert not np.any(np.isnan(y[~in_group]))
    expected = ref.group_norm(np.nan_to_num(x), gamma, beta, groups=3)
    np.testing.assert_allclose(y[~in_group], expected[~in_group], rtol=1e-5, atol=2e-5)


def test_nan_stays_in_its_sample_for_layer_norm():
    shape = (3, 4, 5)
    x = random_normal(np.random.default_rng(7), shape)
    x[0, 1, 2] = np.nan
    layer, gamma, beta = _built(lambda: normkit.LayerNormalization(axis=-1), shape)
    y = call_layer(layer, x)
    assert np.all(np.isnan(y[0, 1])) and not np.any(np.isnan(np.delete(y.reshape(12, 5), 1, axis=0)))


# --- dtype policies ------------------------------------------------------------------------------------

POLICIES = [
    # (policy, compute dtype, variable dtype, rtol/atol)
    ("float32", "float32", "float32", 2e-5),
    ("mixed_float16", "float16", "float32", 2e-3),
    ("mixed_bfloat16", "bfloat16", "float32", 2e-2),
    ("float16", "float16", "float16", 4e-3),
    ("float64", "float64", "float64", 1e-10),
]


@pytest.mark.parametrize("policy,compute,variable,tol", POLICIES, ids=[p[0] for p in POLICIES])
@pytest.mark.parametrize("case", LAYERS[:1] + LAYERS[2:], ids=[IDS[0]] + IDS[2:])
def test_dtype_policies(case, policy, compute, variable, tol):
    with float64_enabled(policy):
        _check_dtype_policy(case, policy, compute, variable, tol)


def _check_dtype_policy(case, policy, compute, variable, tol):
    _, factory, expected_fn, shape = case
    layer, gamma, beta = _built(factory, shape, dtype=policy)
    assert layer.compute_dtype == compute
    assert {v.name: v.dtype for v in layer.weights} == {"gamma": variable, "beta": variable}
    x = random_normal(np.random.default_rng(8), shape, loc=5.0, scale=30.0)
    out_dtype = []

    def fn(a):
        y = layer(a)
        out_dtype.append(keras.backend.standardize_dtype(y.dtype))
        return keras.ops.cast(y, "float64" if compute == "float64" else "float32")  # (no bfloat16 in torch->numpy)

    y = apply(fn, x)
    assert out_dtype[0] == compute
    seen = _rounded(x, compute) if compute in ("float16", "bfloat16") else x.astype(np.float64)
    np.testing.assert_allclose(y, expected_fn(seen, gamma, beta), rtol=tol, atol=tol)

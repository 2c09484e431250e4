"""Bad inputs: a clear, early error naming the argument (or Keras' own cast), never a crash deep in a backend.

Input dtypes, empty dims, inputs that do not match a built layer, wrong-shaped masks and parameters given to
`normkit.ops`, and the shape checks `compute_output_shape` makes. Expected values come from the float64
NumPy reference (`reference.py`).
"""

from __future__ import annotations

import re
import warnings

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import assert_close, random_normal, to_numpy

import normkit

GN = normkit.GroupNormalization
IN = normkit.InstanceNormalization
LN = normkit.LayerNormalization
BN = normkit.BatchNormalization

# --- input dtypes ------------------------------------------------------------------------------------------

# (op, extra arguments) for every op that takes `x` of shape (2, 3, 4).
OPS = {
    "group_norm": (normkit.ops.group_norm, {"groups": 2}),
    "instance_norm": (normkit.ops.instance_norm, {}),
    "layer_norm": (normkit.ops.layer_norm, {}),
    "batch_norm": (normkit.ops.batch_norm, {}),
    "batch_norm_with_statistics": (normkit.ops.batch_norm_with_statistics, {}),
    "moments": (normkit.ops.moments, {"axes": [1, 2]}),
    "sufficient_statistics": (normkit.ops.sufficient_statistics, {"axes": [1, 2]}),
}


@pytest.mark.parametrize("dtype", ["int32", "bool", "complex64"])
@pytest.mark.parametrize("op_name", list(OPS))
def test_ops_reject_non_floating_inputs(op_name, dtype):
    op, kwargs = OPS[op_name]
    x = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    with pytest.raises(TypeError, match=re.escape("`x` must be a floating-point tensor")) as error:
        op(x, **kwargs)
    assert f"x of dtype {dtype}" in str(error.value)


LAYERS = {
    "group": (lambda: GN(groups=2), lambda x: ref.group_norm(x, groups=2)),
    "instance": (lambda: IN(), lambda x: ref.instance_norm(x)),
    "layer": (lambda: LN(), lambda x: ref.layer_norm(x)),
    "batch": (lambda: BN(), lambda x: ref.batch_norm(x)),
}


@pytest.mark.parametrize("dtype", ["int32", "bool"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_cast_integer_and_bool_inputs_to_the_compute_dtype(name, dtype):
    """As Keras' own LayerNormalization: the input is cast to the compute dtype, then normalized."""
    make, expected = LAYERS[name]
    values = np.array([[1, 2, 3, 10], [4, 0, 7, 7], [2, 9, 1, 1]]).reshape(3, 1, 4)
    x = (values % 2).astype(dtype) if dtype == "bool" else values.astype(dtype)
    y = make()(x, training=True) if name == "batch" else make()(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert_close(y, expected(x.astype(np.float64)))


def test_the_issue_example_is_normalized_in_float():
    y = LN()(np.array([[1, 2, 3, 10]] * 2, "int32"))
    x = np.array([[1, 2, 3, 10]] * 2, np.float64)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert_close(y, (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-3))


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_reject_complex_inputs(name):
    make, _ = LAYERS[name]
    x = np.ones((2, 3, 4), "complex64")
    layer = make()
    layer.build(x.shape)
    with pytest.raises(TypeError, match=r"(?s)complex.*inputs of dtype complex64"):
        layer(x, training=True) if name == "batch" else layer(x)


# --- empty dims --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,shape,axis",
    [
        (lambda: BN(), (4, 0, 3), 1),
        (lambda: BN(axis=1), (4, 0, 3), 1),  # zero features
        (lambda: IN(), (2, 3, 0), 2),  # zero channels: was a ZeroDivisionError
        (lambda: GN(groups=1), (2, 3, 0), 2),
        (lambda: GN(groups=2, axis=1), (2, 4, 0), 2),
        (lambda: LN(), (2, 0), 1),
        (lambda: LN(axis=1), (2, 3, 0), 2),
    ],
)
def test_empty_non_batch_dim_is_an_error_naming_shape_and_axis(make, shape, axis):
    layer = make()
    message = rf"axis {axis} has size 0.*shape \({', '.join(map(str, shape))}\)"
    with pytest.raises(ValueError, match=message):
        layer(np.zeros(shape, "float32"), training=True)
    assert not layer.weights  # nothing was built, no moving statistic can hold NaN
    with pytest.raises(ValueError, match=message):
        layer.compute_output_shape(shape)


def test_empty_dim_unknown_at_build_is_an_error_at_call():
    """Built on (None, None, 3), a (4, 0, 3) batch would average NaN into the moving statistics."""
    layer = BN(momentum=0.5)
    layer.build((None, None, 3))
    with pytest.raises(ValueError, match=r"axis 1 has size 0.*\(4, 0, 3\)"):
        layer(np.zeros((4, 0, 3), "float32"), training=True)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(3))
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(3))


def test_empty_batch_stays_allowed():
    layer = BN(momentum=0.5)
    y = layer(np.zeros((0, 3), "float32"), training=True)
    assert tuple(y.shape) == (0, 3)
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(3))
    assert tuple(LN()(np.zeros((0, 4), "float32")).shape) == (0, 4)


@pytest.mark.parametrize(
    "op,kwargs,shape,axis",
    [
        (normkit.ops.instance_norm, {}, (2, 3, 0), 2),
        (normkit.ops.group_norm, {"groups": 1}, (2, 0, 4), 1),
        (normkit.ops.layer_norm, {}, (2, 0), 1),
        (normkit.ops.batch_norm, {}, (4, 0, 3), 1),
    ],
)
def test_ops_empty_non_batch_dim_is_an_error(op, kwargs, shape, axis):
    with pytest.raises(ValueError, match=rf"axis {axis} has size 0"):
        op(np.zeros(shape, "float32"), **kwargs)


# --- a built layer called on another rank or channel count --------------------------------------------------


@pytest.mark.parametrize(
    "make,built,other",
    [
        (lambda: GN(groups=2), (2, 3, 4), (2, 3, 6)),  # channel count
        (lambda: GN(groups=2), (2, 3, 4), (2, 3, 5, 4)),  # rank
        (lambda: GN(groups=2, axis=1), (2, 4, 3), (2, 4)),
        (lambda: IN(), (2, 3, 4), (2, 3, 5)),
        (lambda: IN(axis=1), (2, 4, 3, 3), (2, 4, 3)),
        (lambda: LN(), (2, 4), (2, 5)),
        (lambda: LN(axis=[1, 2]), (2, 3, 4), (2, 3, 5)),
        (lambda: LN(axis=1), (2, 3, 4), (2, 3, 4, 5)),
    ],
)
def test_built_layer_rejects_another_rank_or_channel_count(make, built, other):
    layer = make()
    layer(np.ones(built, "float32"))
    with pytest.raises(ValueError, match=r"incompatible with the layer"):
        layer(np.ones(other, "float32"))


def test_built_layer_accepts_other_sizes_on_the_reduced_axes():
    layer = GN(groups=2)
    layer(np.ones((2, 3, 4), "float32"))
    x = random_normal(np.random.default_rng(0), (5, 7, 4))
    assert_close(layer(x), ref.group_norm(x, groups=2))


# --- masks, parameters and axes given to normkit.ops ---------------------------------------------------------


def test_batch_normalization_mask_of_the_wrong_size():
    layer = BN()
    x = np.zeros((4, 3, 2), "float32")
    with pytest.raises(ValueError, match=re.escape("`mask` must broadcast against the input")) as error:
        layer(x, training=True, mask=np.ones((4, 5), bool))
    assert "(4, 3, 2)" in str(error.value) and "(4, 5, 1)" in str(error.value)
    with pytest.raises(ValueError, match=re.escape("Received: mask of shape (4, 2, 2)")):
        layer(x, training=True, mask=np.ones((4, 2, 2), bool))


@pytest.mark.parametrize(
    "call",
    [
        lambda x, m: normkit.ops.batch_norm_with_statistics(x, mask=m),
        lambda x, m: normkit.ops.moments(x, axes=[0, 1], mask=m),
        lambda x, m: normkit.ops.sufficient_statistics(x, axes=[0, 1], mask=m),
    ],
    ids=["batch_norm_with_statistics", "moments", "sufficient_statistics"],
)
def test_ops_mask_of_the_wrong_size(call):
    x = np.zeros((4, 3, 2), "float32")
    with pytest.raises(ValueError, match=re.escape("Received: mask of shape (4, 5, 1)")):
        call(x, np.ones((4, 5, 1), "float32"))


@pytest.mark.parametrize(
    "op,kwargs,name,expected",
    [
        (normkit.ops.group_norm, {"groups": 2, "gamma": np.ones(5, "float32")}, "gamma", "(4,)"),
        (normkit.ops.instance_norm, {"beta": np.ones(3, "float32")}, "beta", "(4,)"),
        (normkit.ops.layer_norm, {"axis": [1, 2], "gamma": np.ones(4, "float32")}, "gamma", "(3, 4)"),
        (normkit.ops.layer_norm, {"beta": np.ones((2, 4), "float32")}, "beta", "(4,)"),
        (normkit.ops.batch_norm, {"gamma": np.ones(3, "float32")}, "gamma", "(4,)"),
        (normkit.ops.batch_norm, {"mean": np.ones(3, "float32"), "variance": np.ones(4, "float32")}, "mean",
         "(4,)"),
        (normkit.ops.batch_norm, {"mean": np.ones(4, "float32"), "variance": np.ones(5, "float32")},
         "variance", "(4,)"),
        (normkit.ops.batch_norm_with_statistics, {"beta": np.ones(1, "float32")}, "beta", "(4,)"),
    ],
)
def test_ops_parameters_of_the_wrong_shape(op, kwargs, name, expected):
    received = tuple(np.shape(kwargs[name]))
    with pytest.raises(ValueError, match=re.escape(f"`{name}` must have shape {expected}")) as error:
        op(np.zeros((2, 3, 4), "float32"), **kwargs)
    assert f"Received: {name} of shape {received}" in str(error.value)


def test_ops_accept_broadcast_shaped_parameters():
    """tf.keras 2 stored multi-axis parameters as (1, ..., C): those have the right values, in any layout."""
    x = random_normal(np.random.default_rng(1), (2, 3, 4))
    gamma = np.linspace(0.5, 2.0, 4).astype("float32")
    y = normkit.ops.batch_norm(x, gamma=gamma.reshape(1, 1, 4))
    assert_close(y, ref.batch_norm(x, gamma))


@pytest.mark.parametrize("op", [normkit.ops.moments, normkit.ops.sufficient_statistics])
@pytest.mark.parametrize(
    "axes,error,match",
    [
        ([7], ValueError, r"(?s)out of range.*rank 3.*axes=\[7\]"),
        ([0, -4], ValueError, r"(?s)out of range.*axes=\[0, -4\]"),
        ([1, -2], ValueError, r"(?s)same axis twice.*axes=\[1, -2\]"),
        ([1.0], TypeError, r"axes=\[1\.0\]"),
        ("1", TypeError, r"axes='1'"),
    ],
)
def test_statistics_axes_errors(op, axes, error, match):
    with pytest.raises(error, match=match):
        op(np.zeros((2, 3, 4), "float32"), axes=axes)


def test_statistics_negative_axes_are_resolved():
    x = random_normal(np.random.default_rng(3), (2, 3, 4), loc=5.0)
    mean, variance = normkit.ops.moments(x, axes=-1)
    assert_close(mean, x.astype(np.float64).mean(-1, keepdims=True))
    assert_close(variance, x.astype(np.float64).var(-1, keepdims=True))


# --- compute_output_shape -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,shape,match",
    [
        (lambda: LN(axis=99), (2, 4), r"(?s)out of range.*axis=99"),
        (lambda: LN(axis=[1, 2]), (2, 4), r"(?s)out of range.*axis=\[1, 2\]"),
        (lambda: GN(groups=3), (2, 3, 4), r"(?s)multiple of `groups`.*groups=3"),
        (lambda: GN(groups=2, axis=0), (2, 3, 4), r"batch axis"),
        (lambda: IN(axis=-1), (None, 3, None), r"defined dimension"),
        (lambda: BN(axis=3), (4, 3), r"axis=3"),
    ],
)
def test_compute_output_shape_checks_the_shape_as_build_does(make, shape, match):
    layer = make()
    with pytest.raises(ValueError, match=match):
        layer.compute_output_shape(shape)


@pytest.mark.parametrize(
    "make", [lambda: GN(groups=2), lambda: IN(), lambda: LN(axis=[1, 2]), lambda: BN()], ids=["GN", "IN", "LN", "BN"]
)
def test_compute_output_shape_returns_the_shape_and_creates_no_weights(make):
    layer = make()
    assert tuple(layer.compute_output_shape((None, 3, 4))) == (None, 3, 4)
    assert not layer.built and not layer.weights
    layer.build((None, 3, 4))  # what Addons' examples relied on the base layer doing
    assert layer.weights


# --- InstanceNormalization's `groups` -----------------------------------------------------------------------


@pytest.mark.parametrize("groups", [2, 3, 12])
def test_instance_normalization_warns_and_ignores_groups(groups):
    layer = IN(axis=-1, groups=groups)  # Addons accepted it: constructing is silent
    x = random_normal(np.random.default_rng(4), (2, 3, 6))
    with pytest.warns(UserWarning, match=rf"(?s)ignores `groups`.*groups={groups}"):
        layer.build(x.shape)
    assert_close(layer(x), ref.instance_norm(x))
    assert "groups" not in layer.get_config()


@pytest.mark.parametrize("groups", [-1, 6])
def test_instance_normalization_groups_of_addons_configs_are_silent(groups):
    layer = IN(axis=-1, groups=groups)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.build((2, 3, 6))

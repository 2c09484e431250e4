"""Argument errors (docs/behaviour.md, "Arguments" and each layer's section): raised at construction or build,
naming the argument and the value."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normkit

GN = normkit.GroupNormalization
IN = normkit.InstanceNormalization
LN = normkit.LayerNormalization


# --- GroupNormalization at build -----------------------------------------------------------------------

GN_BUILD_ERRORS = [
    # (kwargs, input shape, message pattern)
    (dict(groups=2, axis=1), (None, None, 4), r"(?s)defined dimension.*axis=1"),  # channel dim undefined
    (dict(groups=8, axis=-1), (2, 3, 4), r"(?s)more than the number of channels.*\(4\).*groups=8"),
    (dict(groups=3, axis=-1), (2, 3, 4), r"(?s)\(4\) must be a multiple of `groups`.*groups=3"),
    (dict(groups=1, axis=0), (2, 3, 4), r"(?s)batch axis.*axis=0"),
    (dict(groups=1, axis=-3), (2, 3, 4), r"(?s)batch axis.*axis=-3"),  # -rank
    (dict(groups=1, axis=3), (2, 3, 4), r"(?s)out of range.*rank 3.*axis=3"),
    (dict(groups=1, axis=-4), (2, 3, 4), r"(?s)out of range.*axis=-4"),
    (dict(groups=1, axis=-1), (4,), r"rank >= 2.*\(4,\)"),
]


@pytest.mark.parametrize("kwargs,shape,match", GN_BUILD_ERRORS)
def test_group_normalization_build_errors(kwargs, shape, match):
    layer = GN(**kwargs)  # constructing is fine: the input shape is not known yet
    with pytest.raises(ValueError, match=match):
        layer.build(shape)


@pytest.mark.parametrize("kwargs,shape,match", GN_BUILD_ERRORS[:6])
def test_group_normalization_errors_on_symbolic_call(kwargs, shape, match):
    """In a functional model the error comes at the first call, from build, not from a backend op."""
    with pytest.raises(ValueError, match=match):
        GN(**kwargs)(keras.Input(batch_shape=shape))


@pytest.mark.parametrize("kwargs,shape,match", GN_BUILD_ERRORS[1:7])
def test_group_norm_op_errors(kwargs, shape, match):
    x = np.zeros([2 if d is None else d for d in shape], "float32")
    with pytest.raises(ValueError, match=match):
        normkit.ops.group_norm(x, **kwargs)


# --- at construction -----------------------------------------------------------------------------------

CONSTRUCTION_ERRORS = [
    # (factory, error type, message pattern)
    (lambda: GN(groups=0), ValueError, r"groups=0"),
    (lambda: GN(groups=-2), ValueError, r"groups=-2"),
    (lambda: GN(groups=2.0), TypeError, r"groups=2\.0"),
    (lambda: GN(groups="4"), TypeError, r"groups='4'"),
    (lambda: GN(groups=True), TypeError, r"groups=True"),
    (lambda: GN(axis=1.0), TypeError, r"axis=1\.0"),
    (lambda: GN(axis="-1"), TypeError, r"axis='-1'"),
    (lambda: GN(axis=[1, 2]), TypeError, r"axis=\[1, 2\]"),
    (lambda: GN(axis=None), TypeError, r"axis=None"),
    (lambda: IN(axis=1.5), TypeError, r"axis=1\.5"),
    (lambda: IN(groups=0), ValueError, r"groups=0"),
    (lambda: LN(axis=[1, 1]), ValueError, r"(?s)duplicate.*axis=\[1, 1\]"),
    (lambda: LN(axis=[]), ValueError, r"axis=\[\]"),
    (lambda: LN(axis=[1, "2"]), TypeError, r"axis=\[1, '2'\]"),
    (lambda: LN(axis=1.5), TypeError, r"axis=1\.5"),
    (lambda: LN(axis=(1, True)), TypeError, r"axis=\(1, True\)"),
]

for _cls in (GN, IN, LN):
    CONSTRUCTION_ERRORS += [
        (lambda c=_cls: c(epsilon=-1e-3), ValueError, r"epsilon=-0\.001"),
        (lambda c=_cls: c(epsilon=float("nan")), ValueError, r"epsilon=nan"),
        (lambda c=_cls: c(epsilon=float("inf")), ValueError, r"epsilon=inf"),
        (lambda c=_cls: c(epsilon="1e-3"), TypeError, r"epsilon='1e-3'"),
        (lambda c=_cls: c(epsilon=None), TypeError, r"epsilon=None"),
        (lambda c=_cls: c(center=1), TypeError, r"center=1"),
        (lambda c=_cls: c(center="yes"), TypeError, r"center='yes'"),
        (lambda c=_cls: c(scale=None), TypeError, r"scale=None"),
        (lambda c=_cls: c(scale=0), TypeError, r"scale=0"),
        (lambda c=_cls: c(beta_initializer="no_such_initializer"), ValueError, r"beta_initializer='no_such_init"),
        (lambda c=_cls: c(gamma_regularizer="no_such_regularizer"), ValueError, r"gamma_regularizer='no_such"),
        (lambda c=_cls: c(beta_constraint=3), ValueError, r"beta_constraint=3"),
    ]


@pytest.mark.parametrize("factory,error,match", CONSTRUCTION_ERRORS)
def test_construction_errors(factory, error, match):
    with pytest.raises(error, match=match):
        factory()


# --- InstanceNormalization -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis,match", [((2, 3, 4), 0, r"batch axis"), ((2, 3, 4), 3, r"out of range"),
                                              ((None, 3, None), -1, r"defined dimension")])
def test_instance_normalization_axis_errors(shape, axis, match):
    with pytest.raises(ValueError, match=rf"(?s){match}.*axis={axis}"):
        IN(axis=axis).build(shape)


# --- LayerNormalization at build -----------------------------------------------------------------------

LN_BUILD_ERRORS = [
    ([1, 4], (2, 3, 4, 5), r"(?s)out of range.*rank 4.*axis=\[1, 4\]"),
    ([1, -5], (2, 3, 4, 5), r"(?s)out of range.*axis=\[1, -5\]"),
    (4, (2, 3, 4, 5), r"(?s)out of range.*axis=4"),
    ([1, -3], (2, 3, 4, 5), r"(?s)same axis twice.*axis=\[1, -3\]"),  # duplicates only once resolved
    ([-1, 3], (2, 3, 4, 5), r"(?s)same axis twice.*axis=\[-1, 3\]"),
    (-1, (None, 3, None), r"(?s)defined dimension.*axis=-1"),
    ([1, 2], (None, 3, None), r"(?s)defined dimension.*axis=\[1, 2\]"),
]


@pytest.mark.parametrize("axis,shape,match", LN_BUILD_ERRORS)
def test_layer_normalization_build_errors(axis, shape, match):
    layer = LN(axis=axis)
    with pytest.raises(ValueError, match=match):
        layer.build(shape)


@pytest.mark.parametrize("axis,shape,match", LN_BUILD_ERRORS[:5])
def test_layer_norm_op_errors(axis, shape, match):
    with pytest.raises(ValueError, match=match):
        normkit.ops.layer_norm(np.zeros(shape, "float32"), axis=axis)


# --- functional ops ------------------------------------------------------------------------------------


def test_op_argument_errors():
    x = np.zeros((2, 3, 4), "float32")
    with pytest.raises(ValueError, match=r"epsilon=-1"):
        normkit.ops.group_norm(x, groups=2, epsilon=-1)
    with pytest.raises(ValueError, match=r"groups=0"):
        normkit.ops.group_norm(x, groups=0)
    with pytest.raises(TypeError, match=r"axis=1\.0"):
        normkit.ops.instance_norm(x, axis=1.0)
    with pytest.raises(ValueError, match=r"(?s)mean.*variance.*variance=None"):
        normkit.ops.batch_norm(x, mean=np.zeros(4, "float32"))
    with pytest.raises(ValueError, match=r"(?s)out of range.*axis=5"):
        normkit.ops.batch_norm(x, axis=5)


# --- LayerNormalization's axis after build ------------------------------------------------------------


@pytest.mark.parametrize(
    "axis,shape,built_axis",
    [
        (-1, (2, 4), [1]),
        (-1, (2, 3, 4), [2]),
        ([-1, 1], (2, 3, 4), [2, 1]),
        ((1, 2), (2, 3, 4), [1, 2]),
        (2, (2, 3, 4), [2]),
    ],
)
def test_layer_normalization_axis_is_canonical_after_build(axis, shape, built_axis):
    """tf.keras 2's `validate_axis`: after build `layer.axis` lists non-negative axes in the order given."""
    layer = LN(axis=axis)
    layer.build(shape)
    assert layer.axis == built_axis
    # The config keeps the argument as given, so that it builds again on an input of another rank.
    config = layer.get_config()
    assert config["axis"] == (list(axis) if isinstance(axis, tuple) else axis)
    clone = LN.from_config(config)
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 4)).astype("float32")
    clone(x)
    assert clone.get_config() == config

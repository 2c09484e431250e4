"""BatchNormalization: serialization (get_config/from_config, tf.keras 2 configs, `.keras` files) and errors."""

from __future__ import annotations

import re
import warnings
from typing import Any

import keras
import numpy as np
import pytest
from test_batch_normalization import (
    RENORM_CLIP,
    TOL32,
    assert_weights,
    make_input,
    reference_for,
    to_numpy,
    weights_of,
)

import normkit
from normkit import BatchNormalization

# ---------------------------------------------------------------------------------------- get_config


def every_argument() -> dict[str, Any]:
    return {
        "axis": [1, 3],
        "momentum": 0.8,
        "epsilon": 0.01,
        "center": False,
        "scale": False,
        "beta_initializer": keras.initializers.Constant(0.5),
        "gamma_initializer": keras.initializers.RandomUniform(0.9, 1.1, seed=3),
        "moving_mean_initializer": keras.initializers.Constant(0.1),
        "moving_variance_initializer": keras.initializers.Constant(2.0),
        "beta_regularizer": keras.regularizers.L2(0.01),
        "gamma_regularizer": keras.regularizers.L1(0.02),
        "beta_constraint": keras.constraints.MaxNorm(2.0),
        "gamma_constraint": keras.constraints.NonNeg(),
        "renorm": True,
        "renorm_clipping": {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0},
        "renorm_momentum": 0.5,
        "fused": False,
        "trainable": False,
        "virtual_batch_size": 2,
        "synchronized": True,
        "name": "bn_all",
        "dtype": "mixed_float16",
    }


def test_get_config_round_trips_every_argument() -> None:
    layer = BatchNormalization(**every_argument())
    layer.build((4, 3, 2, 5))
    config = layer.get_config()
    expected = {
        "axis": [1, 3],
        "momentum": 0.8,
        "epsilon": 0.01,
        "center": False,
        "scale": False,
        "renorm": True,
        "renorm_clipping": {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0},
        "renorm_momentum": 0.5,
        "fused": False,
        "trainable": False,
        "virtual_batch_size": 2,
        "synchronized": True,
        "name": "bn_all",
    }
    for key, value in expected.items():
        assert config[key] == value, key
    assert "adjustment" not in config
    for key in (
        "beta_initializer",
        "gamma_initializer",
        "moving_mean_initializer",
        "moving_variance_initializer",
        "beta_regularizer",
        "gamma_regularizer",
        "beta_constraint",
        "gamma_constraint",
    ):
        assert config[key] is not None, key
    again = BatchNormalization.from_config(config)
    assert again.get_config() == config
    assert again.dtype_policy.name == "mixed_float16"
    assert isinstance(again.gamma_constraint, keras.constraints.NonNeg)
    assert again.moving_variance_initializer.value == 2.0
    # Through Keras' generic (de)serialization too: the registered name resolves.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is BatchNormalization and restored.get_config() == config
    assert keras.saving.get_registered_object("normkit>BatchNormalization") is BatchNormalization


def test_default_config() -> None:
    config = BatchNormalization().get_config()
    assert config["axis"] == -1 and config["momentum"] == 0.99 and config["epsilon"] == 1e-3
    assert config["renorm"] is False and config["renorm_clipping"] is None and config["renorm_momentum"] == 0.99
    assert config["fused"] is None and config["virtual_batch_size"] is None and config["synchronized"] is False
    assert config["trainable"] is True


@pytest.mark.parametrize(
    "axis,kwargs,shape,expected",
    [
        (-1, {}, (4, 2, 2, 3), -1),
        (1, {}, (4, 3, 2), 1),
        ([3], {}, (4, 2, 2, 3), [3]),
        ([-1], {"virtual_batch_size": 2}, (4, 3), [-1]),
        ((1, 3), {}, (4, 3, 2, 3), [1, 3]),
        (-1, {"virtual_batch_size": 2}, (4, 3), -1),
        ([1, 2], {"virtual_batch_size": 2}, (4, 3, 2), [1, 2]),
    ],
)
def test_axis_serializes_as_given_after_build_and_training(axis, kwargs, shape, expected) -> None:
    layer = BatchNormalization(axis=axis, **kwargs)
    layer(np.random.default_rng(0).normal(size=shape).astype("float32"), training=True)
    config = layer.get_config()
    assert config["axis"] == expected
    # ... and the config builds again on the same input (tf.keras 2 could not reload its ghost-batch configs).
    again = BatchNormalization.from_config(config)
    again(np.zeros(shape, "float32"), training=True)
    assert [tuple(w.shape) for w in again.weights] == [tuple(w.shape) for w in layer.weights]


def test_adjustment_is_left_out_of_the_config_with_a_warning() -> None:
    layer = BatchNormalization(adjustment=lambda shape: (1.0, 0.0), name="adjusted")
    with pytest.warns(UserWarning, match=r"`adjustment`.*adjusted.*cannot be serialized"):
        config = layer.get_config()
    assert "adjustment" not in config
    assert BatchNormalization.from_config(config).adjustment is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BatchNormalization().get_config()  # no warning without an adjustment


# ------------------------------------------------------------------------------------ tf.keras 2 configs


def tf_keras2_config(**overrides: Any) -> dict[str, Any]:
    """What tf.keras 2 wrote for a built BatchNormalization: axis as a list, no `fused`, old-style objects."""
    config = {
        "name": "batch_normalization",
        "trainable": True,
        "dtype": "float32",
        "axis": [3],
        "momentum": 0.9,
        "epsilon": 0.001,
        "center": True,
        "scale": True,
        "beta_initializer": {"class_name": "Zeros", "config": {}},
        "gamma_initializer": {"class_name": "Ones", "config": {}},
        "moving_mean_initializer": {"class_name": "Zeros", "config": {}},
        "moving_variance_initializer": {"class_name": "Ones", "config": {}},
        "beta_regularizer": None,
        "gamma_regularizer": None,
        "beta_constraint": None,
        "gamma_constraint": None,
    }
    config.update(overrides)
    return config


def train_and_compare(layer: BatchNormalization, shape: tuple[int, ...], bessel: bool, steps: int = 2) -> None:
    layer.build(shape)
    ref = reference_for(layer, shape, bessel)
    rng = np.random.default_rng(7)
    axes = tuple(sorted(a % len(shape) for a in ([layer.axis] if isinstance(layer.axis, int) else layer.axis)))
    for _ in range(steps):
        x = make_input(rng, shape, axes, "float32")
        y = to_numpy(layer(x, training=True))
        expected = ref.train(x)
        np.testing.assert_allclose(y, expected.y, rtol=1e-4, atol=1e-4)
        assert_weights(layer, ref, TOL32.moving, "after a training step")


def test_tf_keras2_plain_config_loads_with_fused_semantics() -> None:
    layer = BatchNormalization.from_config(tf_keras2_config())
    assert layer.axis == [3] and layer.fused is None and not layer.renorm and layer.virtual_batch_size is None
    train_and_compare(layer, (4, 2, 2, 3), bessel=True)
    assert layer.get_config()["axis"] == [3]


def test_tf_keras2_renorm_config_loads() -> None:
    config = tf_keras2_config(
        axis=[1], renorm=True, renorm_clipping={"rmax": 1.5, "dmax": 0.2}, renorm_momentum=0.8
    )
    layer = BatchNormalization.from_config(config)
    assert layer.renorm and layer.renorm_clipping == {"rmax": 1.5, "dmax": 0.2} and layer.renorm_momentum == 0.8
    train_and_compare(layer, (6, 3), bessel=False)
    # tf.keras 2 wrote `renorm_clipping: {}` for renorm without clipping.
    assert BatchNormalization.from_config(tf_keras2_config(renorm=True, renorm_clipping={})).renorm_clipping == {}


@pytest.mark.parametrize(
    "saved_axis,shape,restored_axis",
    [([2], (4, 3), [1]), ([2, 4], (4, 3, 2, 3), [1, 3]), ([3], (4, 2, 3), [2])],
    ids=["rank2", "rank4_multi_axis", "rank3"],
)
def test_tf_keras2_shifted_virtual_batch_config_loads(saved_axis, shape, restored_axis) -> None:
    """tf.keras 2 wrote a built ghost-batch layer's axes shifted by one (its [V, B/V, ...] view)."""
    layer = BatchNormalization.from_config(tf_keras2_config(axis=saved_axis, virtual_batch_size=2))
    assert layer.axis == restored_axis
    train_and_compare(layer, shape, bessel=False)
    assert layer.get_config()["axis"] == restored_axis and layer.get_config()["fused"] is None


def test_unshifted_virtual_batch_configs_are_kept() -> None:
    # An unbuilt tf.keras 2 layer wrote the axis as given (an int, or negative entries).
    assert BatchNormalization.from_config(tf_keras2_config(axis=-1, virtual_batch_size=2)).axis == -1
    assert BatchNormalization.from_config(tf_keras2_config(axis=[1], virtual_batch_size=2)).axis == [1]
    assert BatchNormalization.from_config(tf_keras2_config(axis=[-1], virtual_batch_size=2)).axis == [-1]
    # normkit's own configs (they have `fused`) are never shifted.
    config = BatchNormalization(axis=[2], virtual_batch_size=2).get_config()
    assert BatchNormalization.from_config(config).axis == [2]
    # Without virtual_batch_size nothing was shifted.
    assert BatchNormalization.from_config(tf_keras2_config(axis=[2])).axis == [2]


def test_tf_keras2_broadcast_shaped_weights_load() -> None:
    """tf.keras 2 gave multi-axis and ghost-batch parameters broadcast shapes; the values load reshaped."""
    layer = BatchNormalization(axis=-1, virtual_batch_size=2)
    layer.build((4, 3))
    store = {str(i): np.full((1, 1, 3), float(i + 1), "float32") for i in range(4)}
    layer.load_own_variables(store)
    got = [to_numpy(w) for w in layer.trainable_weights + layer.non_trainable_weights]
    for i, value in enumerate(got):
        np.testing.assert_array_equal(value, np.full((3,), i + 1.0))


# --------------------------------------------------------------------------------------- .keras files


@pytest.mark.parametrize(
    "shape,kwargs,bessel",
    [
        ((4, 2, 2, 3), {"axis": 3}, True),
        ((8, 3), {"renorm": True, "renorm_clipping": RENORM_CLIP, "virtual_batch_size": 4}, False),
    ],
    ids=["rank4_bessel", "renorm_ghost"],
)
def test_keras_file_saved_mid_training_resumes_identically(tmp_path, shape, kwargs, bessel) -> None:
    layer = BatchNormalization(momentum=0.7, name="bn", **kwargs)
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    ref = reference_for(layer, shape, bessel)
    rng = np.random.default_rng(11)
    axes = (len(shape) - 1,)
    batches = [make_input(rng, shape, axes, "float32") for _ in range(4)]
    for x in batches[:2]:
        model(x, training=True)
        ref.train(x)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.get_layer("bn")
    assert type(restored) is BatchNormalization
    assert restored.get_config() == layer.get_config()
    for name, value in weights_of(layer).items():
        np.testing.assert_array_equal(weights_of(restored)[name], value, err_msg=name)
    for x in batches[2:]:
        model(x, training=True)
        loaded(x, training=True)
        ref.train(x)
    for name, value in weights_of(layer).items():
        np.testing.assert_array_equal(weights_of(restored)[name], value, err_msg=name)
    assert_weights(restored, ref, TOL32.moving, "after resuming")
    x = make_input(rng, (3, *shape[1:]), axes, "float32")
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


# ----------------------------------------------------------------------------------------------- errors

CONSTRUCTION_ERRORS = [
    ({"momentum": 1.5}, ValueError, "momentum=1.5"),
    ({"momentum": -0.1}, ValueError, "momentum=-0.1"),
    ({"momentum": "high"}, TypeError, "momentum='high'"),
    ({"renorm_momentum": 2.0}, ValueError, "renorm_momentum=2.0"),
    ({"renorm": True, "renorm_clipping": {"rmaxx": 1.0}}, ValueError, "unknown keys ['rmaxx']"),
    ({"renorm": True, "renorm_clipping": {"rmin": 2.0, "rmax": 1.0}}, ValueError, "rmin=2.0, rmax=1.0"),
    ({"renorm": True, "renorm_clipping": {"dmax": -1.0}}, ValueError, "renorm_clipping={'dmax': -1.0}"),
    ({"renorm": True, "renorm_clipping": [1.0]}, TypeError, "renorm_clipping=[1.0]"),
    ({"renorm": True, "renorm_clipping": {"rmax": "big"}}, TypeError, "renorm_clipping['rmax']"),
    ({"renorm": "yes"}, TypeError, "renorm='yes'"),
    ({"virtual_batch_size": 0}, ValueError, "virtual_batch_size=0"),
    ({"virtual_batch_size": -2}, ValueError, "virtual_batch_size=-2"),
    ({"virtual_batch_size": 2.5}, TypeError, "virtual_batch_size=2.5"),
    ({"virtual_batch_size": True}, TypeError, "virtual_batch_size=True"),
    ({"virtual_batch_size": 2, "adjustment": lambda s: (1.0, 0.0)}, ValueError, "virtual_batch_size=2, adjustment="),
    ({"virtual_batch_size": 2, "axis": 0}, ValueError, "axis=0, virtual_batch_size=2"),
    ({"virtual_batch_size": 2, "axis": [0, 2]}, ValueError, "axis=[0, 2], virtual_batch_size=2"),
    ({"adjustment": 3}, TypeError, "adjustment=3"),
    ({"fused": "yes"}, TypeError, "fused='yes'"),
    ({"synchronized": 1}, TypeError, "synchronized=1"),
    ({"trainable": "no"}, TypeError, "trainable='no'"),
    ({"fused": True, "renorm": True}, ValueError, "renorm=True"),
    ({"fused": True, "virtual_batch_size": 2}, ValueError, "virtual_batch_size=2"),
    ({"fused": True, "adjustment": lambda s: (1.0, 0.0)}, ValueError, "an `adjustment`"),
    ({"fused": True, "synchronized": True}, ValueError, "synchronized=True"),
    ({"fused": True, "axis": [1, 3]}, ValueError, "axis=[1, 3]"),
    ({"fused": True, "axis": 2}, ValueError, "axis=2"),
    ({"fused": True, "dtype": "float64"}, ValueError, "compute dtype float64"),
    ({"epsilon": -1.0}, ValueError, "epsilon=-1.0"),
    ({"axis": 1.5}, TypeError, "axis=1.5"),
    # r = s_B / s is a ratio of standard deviations and d a number of them: a negative rmax flips the output's
    # sign, an infinite rmin makes it infinite.
    ({"renorm": True, "renorm_clipping": {"rmax": -1.0}}, ValueError, "['rmax']` must be finite and > 0"),
    ({"renorm": True, "renorm_clipping": {"rmax": 0.0}}, ValueError, "renorm_clipping={'rmax': 0.0}"),
    ({"renorm": True, "renorm_clipping": {"rmin": float("inf")}}, ValueError, "['rmin']` must be finite"),
    ({"renorm": True, "renorm_clipping": {"rmin": -0.5}}, ValueError, "renorm_clipping={'rmin': -0.5}"),
    ({"renorm": True, "renorm_clipping": {"rmax": float("inf")}}, ValueError, "renorm_clipping={'rmax': inf}"),
    ({"renorm": True, "renorm_clipping": {"dmax": float("inf")}}, ValueError, "['dmax']` must be finite"),
    ({"renorm": True, "renorm_clipping": {"dmax": float("nan")}}, TypeError, "renorm_clipping['dmax']"),
    ({"moving_mean_initializer": "no_such_initializer"}, ValueError, "moving_mean_initializer='no_such_initializer'"),
    ({"moving_variance_initializer": 3}, ValueError, "moving_variance_initializer=3"),
]


@pytest.mark.parametrize("kwargs,error,message", CONSTRUCTION_ERRORS, ids=[str(k) for k, _, _ in CONSTRUCTION_ERRORS])
def test_construction_errors_name_the_values(kwargs, error, message) -> None:
    with pytest.raises(error, match=re.escape(message)):
        BatchNormalization(**kwargs)


BUILD_ERRORS = [
    ({"fused": True}, (4, 3), "fused=True, axis=-1, input shape (4, 3)"),
    ({"fused": True, "axis": 1}, (4, 3, 2), "fused=True, axis=1, input shape (4, 3, 2)"),
    ({"fused": True, "axis": 3}, (4, 2, 2, 2, 3), "fused=True, axis=3"),
    ({"fused": True, "axis": -4}, (4, 2, 2, 3), "fused=True, axis=-4"),
    ({"virtual_batch_size": 2, "axis": -2}, (4, 3), "axis=-2 (axis 0 for an input of rank 2), virtual_batch_size=2"),
    ({"axis": 3}, (4, 3), "axis=3"),
    ({"axis": [1, -1]}, (4, 3), "rank 2. Received: axis=[1, -1]"),
]


@pytest.mark.parametrize("kwargs,shape,message", BUILD_ERRORS, ids=[str(k) for k, _, _ in BUILD_ERRORS])
def test_build_errors_name_the_values(kwargs, shape, message) -> None:
    layer = BatchNormalization(**kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        layer.build(shape)


def test_fused_true_builds_where_the_kernel_applied() -> None:
    for axis, shape in ((1, (2, 3, 2, 2)), (3, (2, 2, 2, 3)), (-1, (2, 2, 2, 2, 3)), (-4, (2, 3, 2, 2, 2))):
        BatchNormalization(fused=True, axis=axis).build(shape)


def test_batch_not_divisible_by_virtual_batch_size() -> None:
    layer = BatchNormalization(virtual_batch_size=3)
    x = np.zeros((4, 2), "float32")
    with pytest.raises(ValueError, match=re.escape("virtual_batch_size=3 and a batch of size 4")):
        layer(x, training=True)
    layer(x, training=False)  # inference ignores V


def test_mask_of_wrong_rank() -> None:
    layer = BatchNormalization()
    with pytest.raises(ValueError, match=re.escape("mask of shape (4,) for an input of shape (4, 2, 3)")):
        layer(np.zeros((4, 2, 3), "float32"), training=True, mask=np.ones((4,), bool))


def test_synchronized_is_accepted_without_distribution() -> None:
    layer = BatchNormalization(synchronized=True, momentum=0.5, axis=1)
    x = make_input(np.random.default_rng(0), (4, 3), (1,), "float32")
    layer(x, training=True)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), 0.5 + 0.5 * x.astype(np.float64).var(0), rtol=1e-5)


def test_public_name() -> None:
    assert normkit.BatchNormalization is BatchNormalization


def test_docstring_example_runs() -> None:
    import doctest

    import normkit.layers.batch_normalization as module

    assert doctest.testmod(module).failed == 0


def test_renorm_clipping_bounds_that_clip_nothing_are_accepted() -> None:
    layer = BatchNormalization(renorm=True, renorm_clipping={"rmin": 0.0, "rmax": 1.0, "dmax": 0.0})
    assert layer.renorm_clipping == {"rmin": 0.0, "rmax": 1.0, "dmax": 0.0}


# ------------------------------------------------------------------------------------ adjustment's result

ADJUSTMENT_RESULTS = [
    (lambda shape: 1.0, TypeError, "adjustment returned 1.0 (of type float)"),
    (lambda shape: (1.0, 0.0, 0.0), TypeError, "adjustment returned a tuple of 3 items"),
    (lambda shape: None, TypeError, "adjustment returned None"),
    (lambda shape: (np.ones(4, "float32"), 0.0), ValueError, "its scale has shape (4,)"),
    (lambda shape: (1.0, np.zeros((2, 3), "float32")), ValueError, "its bias has shape (2, 3)"),
    (lambda shape: (np.ones((1, 5, 3), "float32"), 0.0), ValueError, "its scale has shape (1, 5, 3)"),
]


@pytest.mark.parametrize("adjustment,error,message", ADJUSTMENT_RESULTS, ids=[m for _, _, m in ADJUSTMENT_RESULTS])
def test_adjustment_result_errors_name_adjustment(adjustment, error, message) -> None:
    layer = BatchNormalization(adjustment=adjustment)
    x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    with pytest.raises(error, match=re.escape(message)) as raised:
        layer(x, training=True)
    assert "`adjustment` must return" in str(raised.value)
    layer(x, training=False)  # inference does not call it


def test_adjustment_result_broadcastable_to_the_input_is_used() -> None:
    scale, bias = np.array([0.5, 1.0, 2.0], "float32"), np.array([[0.1], [0.2], [0.3], [0.4]], "float32")
    layer = BatchNormalization(center=False, scale=False, adjustment=lambda shape: (scale, bias))
    x = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    xd = x.astype(np.float64)
    xhat = (xd - xd.mean(0)) / np.sqrt(xd.var(0) + 1e-3)
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), scale * xhat + bias, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- fused, as tf.keras 2

FUSED_OFF_AT_CONSTRUCTION = [
    {"renorm": True},
    {"virtual_batch_size": 2},
    {"adjustment": lambda shape: (1.0, 0.0)},
    {"synchronized": True},
    {"axis": [1, 3]},
    {"axis": 2},
    {"axis": -2},
    {"dtype": "float64"},
]


@pytest.mark.parametrize("kwargs", FUSED_OFF_AT_CONSTRUCTION, ids=[",".join(k) for k in FUSED_OFF_AT_CONSTRUCTION])
def test_fused_none_is_false_at_construction_where_the_kernel_could_not_run(kwargs) -> None:
    layer = BatchNormalization(**kwargs)
    assert layer.fused is False
    assert layer.get_config()["fused"] is None  # written as given


@pytest.mark.parametrize(
    "axis,shape,fused",
    [
        (-1, (2, 2, 2, 3), True),
        (1, (2, 3, 2, 2), True),
        (3, (2, 2, 2, 3), True),
        (-3, (2, 3, 2, 2), True),
        (-1, (2, 2, 2, 2, 3), True),
        (1, (2, 3, 2, 2, 2), True),
        (-4, (2, 3, 2, 2, 2), True),
        (-1, (4, 3), False),
        (-1, (4, 2, 3), False),
        (3, (2, 2, 2, 3, 2), False),  # rank 5 with axis 3: tf.keras 2 fell back silently
        (-1, (2, 2, 2, 2, 2, 3), False),
    ],
)
def test_fused_none_is_resolved_at_build(axis, shape, fused) -> None:
    layer = BatchNormalization(axis=axis)
    assert layer.fused is None  # the rank is not known yet
    layer.build(shape)
    assert layer.fused is fused
    config = layer.get_config()
    assert config["fused"] is None
    again = BatchNormalization.from_config(config)
    assert again.fused is None and again.get_config() == config


def test_fused_given_is_kept() -> None:
    layer = BatchNormalization(fused=True, axis=1)
    layer.build((2, 3, 2, 2))
    assert layer.fused is True and layer.get_config()["fused"] is True
    layer = BatchNormalization(fused=False)
    layer.build((2, 2, 2, 3))
    assert layer.fused is False and layer.get_config()["fused"] is False


@pytest.mark.parametrize("shape,fused", [((4, 2, 2, 3), True), ((6, 3), False)])
def test_resolved_fused_decides_the_bessel_correction(shape, fused) -> None:
    """The moving variance gets N / (N - 1) exactly where `layer.fused` resolved to True."""
    layer = BatchNormalization(momentum=0.0)
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    layer(x, training=True)
    assert layer.fused is fused
    xd = x.astype(np.float64).reshape(-1, shape[-1])
    expected = xd.var(0, ddof=1 if fused else 0)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), expected, rtol=1e-5)

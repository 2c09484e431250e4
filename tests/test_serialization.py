"""Serialization (docs/behaviour.md, "Saving and loading"): configs, .keras files, registered names, tf.keras 2 /
Addons configs."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import assert_close, random_normal, to_numpy

import normkit

NON_DEFAULT_COMMON = dict(
    epsilon=1e-5,
    center=True,
    scale=True,
    beta_initializer=keras.initializers.RandomNormal(mean=0.5, stddev=0.1, seed=3),
    gamma_initializer=keras.initializers.Constant(2.0),
    beta_regularizer=keras.regularizers.L2(0.01),
    gamma_regularizer=keras.regularizers.L1(0.02),
    beta_constraint=keras.constraints.NonNeg(),
    gamma_constraint=keras.constraints.MaxNorm(2.0),
    name="custom_norm",
    trainable=False,
    dtype="mixed_float16",
)

LAYERS = [
    (normkit.GroupNormalization, dict(groups=4, axis=1), {"groups": 4, "axis": 1}),
    (normkit.InstanceNormalization, dict(axis=-2), {"axis": -2}),
    (normkit.LayerNormalization, dict(axis=[1, 3]), {"axis": [1, 3]}),
]


@pytest.mark.parametrize("cls,kwargs,expected", LAYERS, ids=[c[0].__name__ for c in LAYERS])
def test_config_round_trip_of_every_argument(cls, kwargs, expected):
    layer = cls(**kwargs, **NON_DEFAULT_COMMON)
    config = layer.get_config()
    json.dumps(config)  # plain JSON
    for key, value in expected.items():
        assert config[key] == value
    assert config["epsilon"] == 1e-5 and config["name"] == "custom_norm" and config["trainable"] is False
    clone = cls.from_config(config)
    assert clone.get_config() == config
    assert clone.epsilon == 1e-5 and clone.center and clone.scale and not clone.trainable
    assert clone.dtype_policy.name == "mixed_float16"
    assert isinstance(clone.beta_initializer, keras.initializers.RandomNormal)
    assert clone.beta_initializer.mean == 0.5 and clone.beta_initializer.stddev == 0.1
    assert isinstance(clone.gamma_initializer, keras.initializers.Constant)
    assert isinstance(clone.beta_regularizer, keras.regularizers.L2)
    assert float(clone.beta_regularizer.l2) == pytest.approx(0.01)
    assert isinstance(clone.gamma_regularizer, keras.regularizers.L1)
    assert float(clone.gamma_regularizer.l1) == pytest.approx(0.02)
    assert isinstance(clone.beta_constraint, keras.constraints.NonNeg)
    assert isinstance(clone.gamma_constraint, keras.constraints.MaxNorm) and clone.gamma_constraint.max_value == 2.0


@pytest.mark.parametrize("center,scale", [(False, True), (True, False)])
def test_config_round_trip_center_scale_off(center, scale):
    layer = normkit.GroupNormalization(groups=2, center=center, scale=scale)
    clone = normkit.GroupNormalization.from_config(layer.get_config())
    assert (clone.center, clone.scale) == (center, scale)
    clone.build((2, 3, 4))
    assert sorted(v.name for v in clone.weights) == sorted(n for n, on in (("beta", center), ("gamma", scale)) if on)


def test_regularizers_and_initializers_take_effect_after_round_trip():
    layer = normkit.GroupNormalization.from_config(
        normkit.GroupNormalization(
            groups=2, axis=-1, **{**NON_DEFAULT_COMMON, "dtype": "float32", "trainable": True}
        ).get_config()
    )
    layer.build((2, 3, 4))
    gamma, beta = to_numpy(layer.gamma), to_numpy(layer.beta)
    np.testing.assert_array_equal(gamma, np.full(4, 2.0))
    assert abs(beta.mean() - 0.5) < 0.3
    expected = 0.01 * np.sum(beta.astype(np.float64) ** 2) + 0.02 * np.sum(np.abs(gamma))
    assert sum(float(to_numpy(loss)) for loss in layer.losses) == pytest.approx(expected, rel=1e-5)
    assert layer.gamma.constraint is not None and layer.beta.constraint is not None


def test_registered_names():
    for cls, name in [
        (normkit.GroupNormalization, "GroupNormalization"),
        (normkit.InstanceNormalization, "InstanceNormalization"),
        (normkit.LayerNormalization, "LayerNormalization"),
    ]:
        assert keras.saving.get_registered_name(cls) == f"normkit>{name}"
        assert keras.saving.get_registered_object(f"normkit>{name}") is cls
        assert keras.saving.serialize_keras_object(cls(axis=-1))["registered_name"] == f"normkit>{name}"
    assert keras.saving.get_registered_object("Addons>GroupNormalization") is normkit.GroupNormalization
    assert keras.saving.get_registered_object("Addons>InstanceNormalization") is normkit.InstanceNormalization


def test_keras_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    model = keras.Sequential(
        [
            keras.Input((6, 5, 4)),
            normkit.GroupNormalization(groups=2, axis=-1, epsilon=1e-4),
            normkit.InstanceNormalization(axis=1, gamma_regularizer="l2"),
            normkit.LayerNormalization(axis=[1, 3], center=False),
        ]
    )
    for v in model.weights:
        v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype("float32"))
    x = random_normal(rng, (3, 6, 5, 4))
    before = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in model.layers]
    for a, b in zip(model.weights, loaded.weights, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), before)
    g1, g2, g3 = (dict((v.name, to_numpy(v)) for v in layer.weights) for layer in model.layers)
    y = ref.group_norm(x, g1["gamma"], g1["beta"], groups=2, epsilon=1e-4)
    y = ref.instance_norm(y, g2["gamma"], g2["beta"], axis=1)
    y = ref.layer_norm(y, g3["gamma"], None, axis=[1, 3])
    assert_close(before, y, rtol=1e-4, atol=1e-4)


def _addons_config(class_name, **extra):
    """A layer config as tf.keras 2 + TensorFlow Addons 0.23 wrote it (after build)."""
    config = {
        "name": class_name.split(">")[-1].lower(),
        "trainable": True,
        "dtype": "float32",
        "axis": 3,
        "epsilon": 0.001,
        "center": True,
        "scale": True,
        "beta_initializer": {"class_name": "Zeros", "config": {}},
        "gamma_initializer": {"class_name": "Ones", "config": {}},
        "beta_regularizer": None,
        "gamma_regularizer": None,
        "beta_constraint": None,
        "gamma_constraint": None,
    }
    config.update(extra)
    return {"class_name": class_name, "config": config}


ADDONS = [
    ("Addons>GroupNormalization", normkit.GroupNormalization, {"groups": 5}, 5),
    (
        "Addons>InstanceNormalization",
        normkit.InstanceNormalization,
        {
            "groups": 10,  # Addons rewrote groups=-1 to the channel count at build and saved that
            "beta_initializer": {"class_name": "RandomUniform", "config": {"minval": -0.05, "maxval": 0.05,
                                                                           "seed": None}},
            "gamma_initializer": {"class_name": "RandomUniform", "config": {"minval": -0.05, "maxval": 0.05,
                                                                            "seed": None}},
        },
        10,
    ),
]


@pytest.mark.parametrize("loader", ["deserialize_keras_object", "layers.deserialize"])
@pytest.mark.parametrize("class_name,cls,extra,groups", ADDONS, ids=[a[0] for a in ADDONS])
def test_addons_configs_load(class_name, cls, extra, groups, loader):
    config = _addons_config(class_name, **extra)
    if loader == "deserialize_keras_object":
        layer = keras.saving.deserialize_keras_object(config)
    else:
        layer = keras.layers.deserialize(config)
    assert type(layer) is cls
    assert layer.name == config["config"]["name"] and layer.axis == 3 and layer.trainable
    x = random_normal(np.random.default_rng(1), (2, 5, 4, 10))
    y = layer(x)
    gamma, beta = to_numpy(layer.gamma), to_numpy(layer.beta)
    assert_close(y, ref.group_norm(x, gamma, beta, groups=groups, axis=3))
    # ... and saves under normkit's own name.
    assert keras.saving.serialize_keras_object(layer)["registered_name"].startswith("normkit>")


def test_addons_instance_config_with_other_groups_warns_and_ignores_them():
    """Addons' InstanceNormalization ignored `groups` (with a warning): such configs still run."""
    layer = keras.saving.deserialize_keras_object(_addons_config("Addons>InstanceNormalization", groups=5))
    x = random_normal(np.random.default_rng(3), (2, 4, 4, 10))
    with pytest.warns(UserWarning, match=r"groups=5"):
        y = layer(x)
    assert_close(y, ref.instance_norm(x, to_numpy(layer.gamma), to_numpy(layer.beta), axis=3))


@pytest.mark.parametrize("axis", [[3], [1, 2], [-1]])
def test_tf_keras2_layer_normalization_config_with_axis_list(axis):
    config = _addons_config("normkit>LayerNormalization", axis=axis)
    layer = keras.saving.deserialize_keras_object(config)
    assert isinstance(layer, normkit.LayerNormalization)
    assert layer.get_config()["axis"] == axis
    x = random_normal(np.random.default_rng(2), (2, 3, 4, 5))
    assert_close(layer(x), ref.layer_norm(x, to_numpy(layer.gamma), to_numpy(layer.beta), axis=axis))
    clone = normkit.LayerNormalization.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()

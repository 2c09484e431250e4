"""FilterResponseNormalization and TLU (TensorFlow Addons semantics) vs the float64 reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import assert_close, call_layer, random_normal, to_numpy
from _layer_checks import check_forward, check_gradients, check_predict_and_compiled, weight_summary
from _masked_calls import autodiff_with_mask

import normkit

SHAPE = (2, 5, 4, 3)


def _frn_expected(epsilon=1e-6):
    return lambda x, gamma, beta: ref.filter_response_norm(x, gamma, beta, epsilon=epsilon)


@pytest.mark.parametrize("epsilon", [1e-6, 0.3])
def test_frn_forward_matches_reference(epsilon):
    check_forward(lambda: normkit.FilterResponseNormalization(epsilon=epsilon), SHAPE, _frn_expected(epsilon))


def test_frn_gradients_match_reference():
    def grads(x, gamma, up):
        dx, dgamma, dbeta, _ = ref.filter_response_norm_grad(x, gamma, up, epsilon=0.01)
        return dx, dgamma, dbeta

    check_gradients(lambda: normkit.FilterResponseNormalization(epsilon=0.01), SHAPE, grads)


def test_frn_predict_and_compiled_match_eager():
    check_predict_and_compiled(lambda: normkit.FilterResponseNormalization(), SHAPE, _frn_expected())


@pytest.mark.parametrize("learned_value", [1e-4, -0.2])
def test_frn_learned_epsilon_forward_and_gradients(learned_value):
    """epsilon_total = epsilon + |eps_learned|; the learned epsilon's gradient is sign(e) * dL/d(epsilon_total)."""
    rng = np.random.default_rng(1)
    layer = normkit.FilterResponseNormalization(epsilon=1e-3, learned_epsilon=True)
    layer.build(SHAPE)
    gamma = rng.uniform(0.5, 1.5, size=(1, 1, 1, 3)).astype("float32")
    beta = rng.normal(size=(1, 1, 1, 3)).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    layer.eps_learned.assign(np.array([learned_value], "float32"))
    # Small inputs, so that epsilon matters and its gradient is large.
    x = random_normal(rng, SHAPE, scale=0.05)
    up = random_normal(rng, SHAPE)
    total = 1e-3 + abs(learned_value)
    assert_close(call_layer(layer, x), ref.filter_response_norm(x, gamma, beta, epsilon=total))
    dx, dvars = autodiff_with_mask(layer, x, up, None)
    want_dx, want_dgamma, want_dbeta, want_deps = ref.filter_response_norm_grad(x, gamma, up, epsilon=total)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-4 * np.abs(want_dx).max())
    np.testing.assert_allclose(dvars["gamma"], want_dgamma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dvars["beta"], want_dbeta, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dvars["learned_epsilon"], [np.sign(learned_value) * want_deps], rtol=1e-3)


def test_frn_weights_as_addons():
    """Addons: gamma and beta of shape (1, 1, 1, C); the learned epsilon a (1,) weight created at construction
    (before gamma and beta), starting at 1e-4; default epsilon 1e-6 and axis [1, 2]."""
    plain = normkit.FilterResponseNormalization()
    assert plain.epsilon == 1e-6 and plain.axis == [1, 2] and plain.eps_learned is None
    plain.build(SHAPE)
    assert weight_summary(plain) == {"gamma": ((1, 1, 1, 3), "float32", True), "beta": ((1, 1, 1, 3), "float32", True)}
    learned = normkit.FilterResponseNormalization(learned_epsilon=True, learned_epsilon_constraint="non_neg")
    assert [w.name for w in learned.weights] == ["learned_epsilon"]
    np.testing.assert_allclose(to_numpy(learned.eps_learned), [1e-4])
    assert isinstance(learned.eps_learned.constraint, keras.constraints.NonNeg)
    learned.build(SHAPE)
    assert [w.name for w in learned.weights] == ["learned_epsilon", "gamma", "beta"]


def test_frn_learned_epsilon_trains():
    layer = normkit.FilterResponseNormalization(learned_epsilon=True)
    model = keras.Sequential([keras.Input((4, 4, 2)), layer, keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(2)
    before = to_numpy(layer.eps_learned).copy()
    model.fit(random_normal(rng, (8, 4, 4, 2), scale=0.01), random_normal(rng, (8, 1)), epochs=1, verbose=0)
    assert not np.array_equal(to_numpy(layer.eps_learned), before)


def test_frn_16_bit_policy():
    keras.config.set_dtype_policy("mixed_float16")
    layer = normkit.FilterResponseNormalization(learned_epsilon=True)
    x = random_normal(np.random.default_rng(3), SHAPE, scale=400.0)  # squares overflow float16
    y = call_layer(layer, x)
    assert str(y.dtype) == "float16" and layer.gamma.dtype == "float32" and layer.eps_learned.dtype == "float32"
    x16 = x.astype(np.float16).astype(np.float64)
    assert_close(y, ref.filter_response_norm(x16, epsilon=1e-6 + 1e-4), rtol=2e-3, atol=2e-3)


def test_frn_config_round_trip_and_addons_config():
    layer = normkit.FilterResponseNormalization(
        epsilon=1e-5, learned_epsilon=True, learned_epsilon_constraint="non_neg", beta_initializer="ones", name="frn"
    )
    config = layer.get_config()
    assert {k: config[k] for k in ("axis", "epsilon", "learned_epsilon")} == {
        "axis": [1, 2], "epsilon": 1e-5, "learned_epsilon": True
    }
    assert normkit.FilterResponseNormalization.from_config(config).get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == "normkit>FilterResponseNormalization"
    # A config as tf.keras 2 + Addons wrote it.
    addons = {
        "class_name": "Addons>FilterResponseNormalization",
        "config": {
            "name": "filter_response_normalization", "trainable": True, "dtype": "float32", "axis": [1, 2],
            "epsilon": 1e-6, "learned_epsilon": False,
            "beta_initializer": {"class_name": "Zeros", "config": {}},
            "gamma_initializer": {"class_name": "Ones", "config": {}},
            "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None, "gamma_constraint": None,
            "learned_epsilon_constraint": None,
        },
    }
    loaded = keras.layers.deserialize(addons)
    assert isinstance(loaded, normkit.FilterResponseNormalization) and loaded.axis == [1, 2]


def test_frn_keras_file_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    model = keras.Sequential([keras.Input(SHAPE[1:]), normkit.FilterResponseNormalization(learned_epsilon=True),
                              normkit.TLU(affine=True)])
    for v in model.weights:
        v.assign(rng.normal(size=tuple(v.shape)).astype("float32"))
    x = random_normal(rng, SHAPE)
    path = tmp_path / "frn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(la) for la in loaded.layers] == [normkit.FilterResponseNormalization, normkit.TLU]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(to_numpy(loaded.layers[0].eps_learned), to_numpy(model.layers[0].eps_learned))


@pytest.mark.parametrize(
    "kwargs,shape,error,message",
    [
        ({"axis": 1}, None, TypeError, "axis=1"),
        ({"axis": [1, 3]}, None, ValueError, "axis=[1, 3]"),
        ({"axis": [2, 1]}, None, ValueError, "axis=[2, 1]"),
        ({"axis": [1.0, 2.0]}, None, TypeError, "axis=[1.0, 2.0]"),
        ({"epsilon": -1e-6}, None, ValueError, "epsilon=-1e-06"),
        ({"learned_epsilon": "yes"}, None, TypeError, "learned_epsilon='yes'"),
        ({"learned_epsilon_constraint": "nope"}, None, ValueError, "learned_epsilon_constraint='nope'"),
        ({}, (2, 4, 3), ValueError, "4-D"),
        ({}, (2, None, 4, 3), ValueError, "defined H"),
        ({}, (2, 4, 4, None), ValueError, "defined C"),
    ],
)
def test_frn_errors_name_the_argument(kwargs, shape, error, message):
    with pytest.raises(error) as info:
        layer = normkit.FilterResponseNormalization(**kwargs)
        if shape is not None:
            layer.build(shape)
    assert message in str(info.value)


# --- TLU ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [False, True])
def test_tlu_forward_and_gradients_match_reference(affine):
    rng = np.random.default_rng(5)
    shape = (3, 4, 2)
    layer = normkit.TLU(affine=affine)
    layer.build(shape)
    tau = rng.normal(size=shape[1:]).astype("float32")
    layer.tau.assign(tau)
    alpha = None
    if affine:
        alpha = rng.uniform(-0.5, 0.5, size=shape[1:]).astype("float32")
        layer.alpha.assign(alpha)
    x = random_normal(rng, shape)
    x[0] = tau if alpha is None else tau / (1 - alpha)  # ties: the gradient goes to x
    up = random_normal(rng, shape)
    assert_close(call_layer(layer, x), ref.tlu(x, tau, alpha))
    dx, dvars = autodiff_with_mask(layer, x, up, None)
    want_dx, want_dtau, want_dalpha = ref.tlu_grad(x, tau, up, alpha)
    # A tie computed in float32 may land on either side for affine; compare away from the tied row there.
    rows = slice(1, None) if affine else slice(None)
    np.testing.assert_allclose(dx[rows], want_dx[rows], rtol=1e-5, atol=1e-6)
    if not affine:
        np.testing.assert_allclose(dvars["tau"], want_dtau, rtol=1e-5, atol=1e-6)
    else:
        _, want_dtau_rest, want_dalpha_rest = ref.tlu_grad(x[1:], tau, up[1:], alpha)
        _, dvars_rest = autodiff_with_mask(layer, x[1:], up[1:], None)
        np.testing.assert_allclose(dvars_rest["tau"], want_dtau_rest, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(dvars_rest["alpha"], want_dalpha_rest, rtol=1e-5, atol=1e-6)


def test_tlu_weights_and_config_as_addons():
    layer = normkit.TLU()
    layer.build((2, 5, 3))
    assert weight_summary(layer) == {"tau": ((5, 3), "float32", True)}  # one threshold per element, as Addons
    config = layer.get_config()
    assert "alpha_initializer" not in config and config["affine"] is False
    affine = normkit.TLU(affine=True, alpha_initializer="ones", tau_constraint="non_neg")
    affine.build((2, 5, 3))
    assert set(weight_summary(affine)) == {"tau", "alpha"}
    config = affine.get_config()
    assert config["alpha_initializer"]["class_name"] == "Ones"
    assert normkit.TLU.from_config(config).get_config() == config
    addons = {"class_name": "Addons>TLU", "config": {"name": "tlu", "trainable": True, "dtype": "float32",
                                                      "affine": False, "tau_initializer": "zeros",
                                                      "tau_regularizer": None, "tau_constraint": None}}
    assert isinstance(keras.layers.deserialize(addons), normkit.TLU)
    assert keras.saving.serialize_keras_object(layer)["registered_name"] == "normkit>TLU"


def test_tlu_16_bit_policy_and_mask_propagation():
    keras.config.set_dtype_policy("mixed_bfloat16")
    layer = normkit.TLU()
    x = random_normal(np.random.default_rng(6), (2, 3))
    y = call_layer(layer, x)
    assert str(y.dtype) == "bfloat16" and layer.tau.dtype == "float32"
    xb = to_numpy(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32")).astype(np.float64)
    assert_close(y, np.maximum(xb, 0.0))
    mask = np.array([[True, False, True], [True, True, False]])
    assert layer.compute_mask(x, mask) is mask


@pytest.mark.parametrize(
    "kwargs,shape,error,message",
    [
        ({"affine": 1}, None, TypeError, "affine=1"),
        ({"tau_initializer": "nope"}, None, ValueError, "tau_initializer='nope'"),
        ({"alpha_regularizer": "nope"}, None, ValueError, "alpha_regularizer='nope'"),
        ({}, (4,), ValueError, "rank >= 2"),
        ({}, (2, None, 3), ValueError, "(2, None, 3)"),
    ],
)
def test_tlu_errors_name_the_argument(kwargs, shape, error, message):
    with pytest.raises(error) as info:
        layer = normkit.TLU(**kwargs)
        if shape is not None:
            layer.build(shape)
    assert message in str(info.value)

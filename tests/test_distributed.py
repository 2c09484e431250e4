"""normkit.synchronize and cross_replica_for on the backend under test, in one process (no replicas here).

The engines' collectives are tested in test_distributed_{jax,tensorflow,torch}.py (subprocesses with several
devices or processes).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference
from _helpers import to_numpy

import normkit
from normkit.distributed import cross_replica_for


def _nested_model() -> keras.Model:
    """A Sequential holding a functional sub-model, each with normkit batch norms, plus other norm layers."""
    inner_inputs = keras.Input((6,))
    inner = keras.Model(
        inner_inputs, normkit.BatchNormalization(name="inner_bn")(keras.layers.Dense(6)(inner_inputs)), name="inner"
    )
    return keras.Sequential(
        [
            keras.Input((6,)),
            normkit.BatchNormalization(name="outer_bn"),
            inner,
            normkit.LayerNormalization(name="ln"),
            keras.layers.BatchNormalization(name="keras_bn"),
        ]
    )


def _batch_norms(model: keras.Model) -> dict[str, normkit.BatchNormalization]:
    found = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, normkit.BatchNormalization):
            found[layer.name] = layer
    return found


def test_synchronize_sets_every_normkit_batch_norm_nested_too() -> None:
    model = _nested_model()
    assert {name: bn.synchronized for name, bn in _batch_norms(model).items()} == {
        "outer_bn": False,
        "inner_bn": False,
    }
    assert normkit.synchronize(model) is model
    assert {name: bn.synchronized for name, bn in _batch_norms(model).items()} == {"outer_bn": True, "inner_bn": True}
    # Keras' own layer is not normkit's: left as it is (its `synchronized` is Keras' own option).
    assert model.get_layer("keras_bn").synchronized is False
    # Saved configs carry it.
    assert model.get_layer("outer_bn").get_config()["synchronized"] is True


def test_synchronize_accepts_a_single_layer() -> None:
    layer = normkit.BatchNormalization()
    assert normkit.synchronize(layer) is layer and layer.synchronized


@pytest.mark.parametrize("value", [None, "model", [normkit.BatchNormalization()], 3])
def test_synchronize_rejects_what_is_not_a_keras_model_or_layer(value: object) -> None:
    with pytest.raises(TypeError, match=r"`synchronize` takes a Keras model or layer.*Received: model="):
        normkit.synchronize(value)


def test_synchronize_refuses_fused_true_and_changes_nothing() -> None:
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            normkit.BatchNormalization(name="plain"),
            normkit.BatchNormalization(fused=True, name="fused_bn"),
        ]
    )
    with pytest.raises(ValueError, match=r"fused=True.*\['fused_bn'\]"):
        normkit.synchronize(model)
    assert [layer.synchronized for layer in model.layers] == [False, False]


def test_synchronize_on_a_built_layer_drops_the_fused_kernels_bessel_correction() -> None:
    """A built rank-4 channels-last layer takes tf.keras 2's unbiased moving-variance update; a synchronized one
    (as built with synchronized=True) takes the biased batch variance, so synchronize must switch it too."""
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(3, 2, 2, 4)).astype("float32")
    layer = normkit.BatchNormalization(momentum=0.0)
    layer.build(x.shape)
    normkit.synchronize(layer)
    layer(x, training=True)  # one process, no replicas: local statistics (which are the global ones)
    _, variance = reference.batch_statistics(x, axis=-1)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), variance, rtol=1e-5, atol=1e-6)


def test_synchronize_drops_compiled_step_functions() -> None:
    model = keras.Sequential([keras.Input((3,)), normkit.BatchNormalization(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 3), "float32"), np.ones((4, 1), "float32")
    model.fit(x, y, epochs=1, verbose=0)
    assert model.train_function is not None
    normkit.synchronize(model)
    assert model.train_function is None  # the next fit traces the synchronized layer
    model.fit(x, y, epochs=1, verbose=0)


def test_cross_replica_for_outside_any_distribution_is_none() -> None:
    # One process, no replica context, no mapped axis: local statistics on every backend.
    assert cross_replica_for(normkit.BatchNormalization(synchronized=True)) is None
    assert cross_replica_for(normkit.BatchNormalization(synchronized=False)) is None
    assert cross_replica_for({"synchronized": True}) is None
    assert cross_replica_for({}) is None


def test_cross_replica_for_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['axis'\]"):
        cross_replica_for({"synchronized": True, "axis": "batch"})
    with pytest.raises(TypeError, match=r"Received: 3 \(of type int\)"):
        cross_replica_for(3)
    with pytest.raises(TypeError, match=r"`synchronized` must be a bool. Received: synchronized='yes'"):
        cross_replica_for({"synchronized": "yes"})


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="axis_name is a JAX mapped axis")
def test_axis_name_of_a_wrong_type_is_a_named_error() -> None:
    from normkit.distributed import jax as jax_engine

    for bad in (None, (), ["batch", None], {"a": 1}):
        with pytest.raises(TypeError, match="`axis_name` must be the name of a mapped axis"):
            jax_engine.replica_sum(bad)

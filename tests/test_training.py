"""The seed tutorial's CNN trains with each normalization layer (a few epochs on sklearn's digits)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import normkit

pytestmark = pytest.mark.slow

SEED_LAYERS = {
    "group": lambda: normkit.GroupNormalization(groups=5, axis=3),
    "instance": lambda: normkit.InstanceNormalization(
        axis=3, center=True, scale=True, beta_initializer="random_uniform", gamma_initializer="random_uniform"
    ),
    "layer": lambda: normkit.LayerNormalization(axis=3, center=True, scale=True),
    "batch": lambda: normkit.BatchNormalization(),
}


@pytest.fixture(scope="module")
def digits():
    """240 of sklearn's 8x8 digits, upsampled to the tutorial's 28x28 (3x nearest, 2-pixel border), in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images[:240].astype("float32") / 16.0
    images = np.pad(np.kron(images, np.ones((1, 3, 3), "float32")), ((0, 0), (2, 2), (2, 2)))
    return images, data.target[:240].astype("int32")


def _seed_model(norm_layer):
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(filters=10, kernel_size=(3, 3), data_format="channels_last"),
            norm_layer,
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("kind", list(SEED_LAYERS))
def test_seed_model_trains(kind, digits):
    x, y = digits
    norm = SEED_LAYERS[kind]()
    model = _seed_model(norm)
    before = {v.name: keras.ops.convert_to_numpy(v).copy() for v in norm.trainable_weights}
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    assert history.history["accuracy"][-1] > 0.4
    # gamma and beta are trained (and stay float32 variables of the layer).
    for v in norm.trainable_weights:
        assert v.dtype == "float32"
        assert not np.allclose(keras.ops.convert_to_numpy(v), before[v.name]), v.name
    predictions = model.predict(x[:64], verbose=0)
    assert predictions.shape == (64, 10) and np.all(np.isfinite(predictions))
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)

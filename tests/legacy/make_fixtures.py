"""Writes tests/legacy/fixtures/ with the real old stack: tf.keras 2.15 + TensorFlow Addons 0.23.

The tests never need this stack; they read the files this script commits. To regenerate them (from the
repository root; the side environment is only for this script):

    python3.11 -m venv .legacy-venv
    .legacy-venv/bin/pip install "tensorflow-cpu==2.15.1" "tensorflow-addons==0.23.0" "numpy<2" h5py
    .legacy-venv/bin/python tests/legacy/make_fixtures.py

Every model is small, trained a few steps on random data (so the moving statistics are not their initial
values), then saved as a tf.keras 2 HDF5 file (`<name>.h5`), a SavedModel directory (`<name>.savedmodel/`,
for the models listed in SAVEDMODEL_MODELS: each directory is ~100-300 KB) and a Keras 2.15 `.keras` zip
(`<name>.keras`). `<name>.npz` holds the input batch `x`, the old stack's `predict(x)` (`predict`) and
`model(x, training=True)` (`training`), computed after saving from the saved state. `manifest.json` lists
every file with its format, expected arrays and tolerance; the bad files are listed with the error they must
give.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_addons as tfa  # noqa: E402

layers = tf.keras.layers
OUT = Path(__file__).resolve().parent / "fixtures"
BATCH = 8
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}
FLOAT16_TOLERANCE = {"atol": 1e-2, "rtol": 1e-2}
# SavedModel directories are large (traced functions); these cover every layer class and structure.
SAVEDMODEL_MODELS = ("sequential_bn", "bn_renorm_virtual", "layer_norm_axes", "addons_group_instance", "nested_shared")


def _seed(seed: int) -> None:
    tf.keras.utils.set_random_seed(seed)


def sequential_bn() -> tf.keras.Model:
    """Sequential: Conv2D then BatchNormalization with the default fused kernel (Bessel-corrected moving var)."""
    return tf.keras.Sequential(
        [
            layers.Input((6, 6, 3)),
            layers.Conv2D(4, 3, padding="same"),
            layers.BatchNormalization(momentum=0.8),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(3),
        ],
        name="sequential_bn",
    )


def bn_renorm_virtual() -> tf.keras.Model:
    """Functional with a residual add: BN fused=False, renorm with clipping, virtual_batch_size, axis=[1, 3]."""
    inputs = layers.Input((5, 5, 4))
    x = layers.BatchNormalization(fused=False, momentum=0.7, name="bn_unfused")(inputs)
    x = layers.BatchNormalization(
        renorm=True,
        renorm_clipping={"rmax": 1.5, "rmin": 0.6, "dmax": 0.4},
        renorm_momentum=0.8,
        momentum=0.7,
        name="bn_renorm",
    )(x)
    y = layers.BatchNormalization(virtual_batch_size=4, momentum=0.7, name="bn_virtual")(x)
    y = layers.BatchNormalization(axis=[1, 3], momentum=0.7, name="bn_axis_1_3")(y)
    x = layers.Add()([x, y])
    x = layers.Conv2D(2, 1)(x)
    outputs = layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inputs, outputs, name="bn_renorm_virtual")


def sync_batch_norm() -> tf.keras.Model:
    inputs = layers.Input((7,))
    x = layers.experimental.SyncBatchNormalization(momentum=0.7)(inputs)
    outputs = layers.Dense(2)(x)
    return tf.keras.Model(inputs, outputs, name="sync_batch_norm")


def layer_norm_axes() -> tf.keras.Model:
    """LayerNormalization over [1, 2, 3], over a single-element list, and over an out-of-order list [3, 1]."""
    init = {"beta_initializer": "random_normal", "gamma_initializer": "random_uniform"}
    inputs = layers.Input((4, 3, 5))
    x = layers.LayerNormalization(axis=[1, 2, 3], name="ln_123", **init)(inputs)
    x = layers.Conv2D(5, 1)(x)
    x = layers.LayerNormalization(axis=[3], name="ln_single", **init)(x)
    x = layers.LayerNormalization(axis=[3, 1], name="ln_out_of_order", **init)(x)
    outputs = layers.Dense(2)(layers.Flatten()(x))
    return tf.keras.Model(inputs, outputs, name="layer_norm_axes")


def addons_group_instance() -> tf.keras.Model:
    """Addons GroupNormalization channels-first (axis=1) and InstanceNormalization with random initializers."""
    inputs = layers.Input((6, 4, 4))  # channels first: C=6
    x = tfa.layers.GroupNormalization(groups=3, axis=1, name="gn_channels_first")(inputs)
    x = layers.Permute((2, 3, 1))(x)
    x = layers.Conv2D(4, 1)(x)
    x = tfa.layers.InstanceNormalization(
        axis=3,
        beta_initializer="random_uniform",
        gamma_initializer="random_uniform",
        name="instance_norm",
    )(x)
    outputs = layers.Dense(2)(layers.Flatten()(x))
    return tf.keras.Model(inputs, outputs, name="addons_group_instance")


def addons_frn_tlu() -> tf.keras.Model:
    inputs = layers.Input((4, 4, 3))
    x = layers.Conv2D(4, 1)(inputs)
    x = tfa.layers.FilterResponseNormalization(name="frn", beta_initializer="random_normal")(x)
    x = tfa.layers.TLU(name="tlu", tau_initializer="random_normal")(x)
    outputs = layers.Dense(2)(layers.Flatten()(x))
    return tf.keras.Model(inputs, outputs, name="addons_frn_tlu")


def nested_shared() -> tf.keras.Model:
    """A nested model used as a layer, and one Dense layer shared by two branches."""
    inner_in = layers.Input((6,))
    inner = tf.keras.Model(
        inner_in, layers.Dense(6)(layers.BatchNormalization(momentum=0.7)(inner_in)), name="inner_block"
    )
    inputs = layers.Input((6,))
    shared = layers.Dense(6, name="shared_dense")
    a = shared(inner(inputs))
    b = shared(layers.LayerNormalization()(inputs))
    outputs = layers.Dense(2)(layers.Concatenate()([a, b]))
    return tf.keras.Model(inputs, outputs, name="nested_shared")


def mixed_float16() -> tf.keras.Model:
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = layers.Input((4, 4, 3))
        x = layers.Conv2D(4, 3, padding="same")(inputs)
        x = layers.BatchNormalization(momentum=0.7)(x)
        x = layers.LayerNormalization(axis=[1, 2, 3])(x)
        x = tfa.layers.GroupNormalization(groups=2)(x)
        x = layers.Flatten()(x)
        outputs = layers.Dense(2, dtype="float32")(x)
        return tf.keras.Model(inputs, outputs, name="mixed_float16")
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def masked_sequence() -> tf.keras.Model:
    """Embedding(mask_zero=True) upstream of normalizations: the mask reaches BatchNormalization's statistics."""
    inputs = layers.Input((6,), dtype="int32")
    x = layers.Embedding(10, 4, mask_zero=True)(inputs)
    x = layers.BatchNormalization(momentum=0.7)(x)
    x = layers.LayerNormalization()(x)
    outputs = layers.GlobalAveragePooling1D()(x)
    return tf.keras.Model(inputs, outputs, name="masked_sequence")


MODELS = {
    "sequential_bn": sequential_bn,
    "bn_renorm_virtual": bn_renorm_virtual,
    "sync_batch_norm": sync_batch_norm,
    "layer_norm_axes": layer_norm_axes,
    "addons_group_instance": addons_group_instance,
    "addons_frn_tlu": addons_frn_tlu,
    "nested_shared": nested_shared,
    "mixed_float16": mixed_float16,
    "masked_sequence": masked_sequence,
}


def _data(model: tf.keras.Model, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (n, *model.input_shape[1:])
    if model.input.dtype == tf.int32:
        x = rng.integers(0, 10, size=shape).astype("int32")
        x[:, -2:] = 0  # padding: masked positions
        x[0, 3:] = 0
    else:
        x = (rng.normal(size=shape) * 2.0 + 0.5).astype("float32")
    y = rng.normal(size=(n, *model.output_shape[1:])).astype("float32")
    return x, y


def _write_model(name: str, seed: int, manifest: list[dict]) -> tf.keras.Model:
    _seed(seed)
    model = MODELS[name]()
    rng = np.random.default_rng(seed)
    x_train, y_train = _data(model, rng, 32)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x_train, y_train, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
    x, _ = _data(model, rng, BATCH)

    model.save(OUT / f"{name}.h5", save_format="h5")
    model.save(OUT / f"{name}.keras", save_format="keras")
    formats = {"h5": f"{name}.h5", "keras_v2": f"{name}.keras"}
    if name in SAVEDMODEL_MODELS:
        model.save(OUT / f"{name}.savedmodel", save_format="tf")
        formats["savedmodel"] = f"{name}.savedmodel"

    predict = model.predict(x, batch_size=BATCH, verbose=0)
    training = model(x, training=True).numpy()
    np.savez(OUT / f"{name}.npz", x=x, predict=predict, training=training)
    tolerance = FLOAT16_TOLERANCE if name == "mixed_float16" else TOLERANCE
    for fmt, path in formats.items():
        manifest.append(
            {
                "fixture": f"{name}.{fmt}",
                "model": name,
                "format": fmt,
                "path": path,
                "expected": f"{name}.npz",
                "tolerance": tolerance,
            }
        )
    return model


def _write_weights_files(manifest: list[dict]) -> None:
    """A config JSON + weights file, and a weights-only file for a model rebuilt in Keras 3 (by order, by name)."""
    _seed(7)
    model = sequential_bn()
    rng = np.random.default_rng(7)
    x_train, y_train = _data(model, rng, 32)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.01), loss="mse")
    model.fit(x_train, y_train, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
    x, _ = _data(model, rng, BATCH)
    (OUT / "weights_model.json").write_text(model.to_json())
    model.save_weights(OUT / "weights_model_weights.h5")  # the legacy HDF5 weights layout (no `.weights.h5`)
    np.savez(
        OUT / "weights_model.npz",
        x=x,
        predict=model.predict(x, verbose=0),
        training=model(x, training=True).numpy(),
    )
    manifest.append(
        {
            "fixture": "weights_model.json+h5",
            "model": "sequential_bn",
            "format": "json+weights",
            "path": "weights_model.json",
            "weights": "weights_model_weights.h5",
            "expected": "weights_model.npz",
            "tolerance": TOLERANCE,
        }
    )


class MyCustomLayer(layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


def _write_bad_files(bad: list[dict]) -> None:
    good = (OUT / "sequential_bn.h5").read_bytes()
    (OUT / "bad_truncated.h5").write_bytes(good[: len(good) // 2])
    (OUT / "bad_empty.h5").write_bytes(b"")
    corrupt = bytearray(good)
    corrupt[0:8] = b"NOTHDF5!"  # the HDF5 signature destroyed
    (OUT / "bad_corrupt.h5").write_bytes(bytes(corrupt))
    not_a_savedmodel = OUT / "bad_not_a_savedmodel"
    not_a_savedmodel.mkdir()
    (not_a_savedmodel / "notes.txt").write_text("a directory without saved_model.pb\n")

    class Plain(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable([1.0, 2.0])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return x * self.w

    tf.saved_model.save(Plain(), str(OUT / "bad_savedmodel_no_keras"))

    _seed(3)
    inputs = layers.Input((3,))
    x = layers.Dense(3)(inputs)
    x = MyCustomLayer(name="my_custom")(x)
    outputs = layers.BatchNormalization()(x)
    tf.keras.Model(inputs, outputs, name="custom").save(OUT / "bad_unknown_layer.h5", save_format="h5")

    _seed(4)
    wider = tf.keras.Sequential(
        [layers.Input((6, 6, 3)), layers.Conv2D(4, 3, padding="same"), layers.BatchNormalization(),
         layers.ReLU(), layers.Flatten(), layers.Dense(5)],
        name="sequential_bn",
    )
    wider.save_weights(OUT / "bad_wrong_shape_weights.h5")

    bad.extend(
        [
            {"path": "bad_truncated.h5", "error": "truncated"},
            {"path": "bad_empty.h5", "error": "empty"},
            {"path": "bad_corrupt.h5", "error": "not an HDF5"},
            {"path": "bad_not_a_savedmodel", "error": "not a SavedModel"},
            {"path": "bad_savedmodel_no_keras", "error": "no Keras metadata"},
            {"path": "bad_unknown_layer.h5", "error": "MyCustomLayer"},
            {"path": "bad_wrong_shape_weights.h5", "error": "shape", "weights_for": "sequential_bn.h5"},
        ]
    )


def _keras_version() -> str:
    import keras  # tf.keras 2.15 is the `keras` 2.15 package

    return keras.__version__


def main() -> int:
    if not tf.__version__.startswith("2.15"):
        print(f"make_fixtures.py needs tensorflow 2.15 (tf.keras 2), found {tf.__version__}", file=sys.stderr)
        return 1
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    manifest: list[dict] = []
    for seed, name in enumerate(MODELS, start=10):
        _write_model(name, seed, manifest)
    _write_weights_files(manifest)
    bad: list[dict] = []
    _write_bad_files(bad)
    document = {
        "written_by": {"tensorflow": tf.__version__, "keras": _keras_version(), "tensorflow_addons": tfa.__version__},
        "fixtures": manifest,
        "bad_files": bad,
    }
    (OUT / "manifest.json").write_text(json.dumps(document, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {len(manifest)} fixtures and {len(bad)} bad files to {OUT} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

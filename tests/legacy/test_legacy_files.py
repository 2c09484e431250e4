"""Old tf.keras 2 / TensorFlow Addons files open in Keras 3 with normkit, with the old stack's predictions.

The fixtures and their expected arrays were written by the real tf.keras 2.15 + Addons 0.23 stack
(tests/legacy/make_fixtures.py); these tests never need that stack. Each fixture is compared with what the old
stack itself computed (`predict` and `training=True` outputs), on the backend under test.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest

import normkit
from normkit.cli import main
from normkit.cli.legacy import check_conversion
from normkit.compat import LegacyFileError, load_legacy_model, load_legacy_weights

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
MODEL_FIXTURES = MANIFEST["fixtures"]
BAD_FILES = {entry["path"]: entry for entry in MANIFEST["bad_files"]}
# The .h5 files Keras 3's own loader reads with normkit.custom_objects() (no multi-element axis list, no nested
# model: those need normkit.load_legacy_model).
KERAS3_READABLE_H5 = ("sequential_bn.h5", "sync_batch_norm.h5", "addons_group_instance.h5", "masked_sequence.h5")



def _assert_close(actual, expected, tolerance: dict, what: str) -> float:
    actual = np.asarray(keras.ops.convert_to_numpy(actual), dtype="float64")
    expected = np.asarray(expected, dtype="float64")
    assert actual.shape == expected.shape, what
    bound = tolerance["atol"] + tolerance["rtol"] * np.abs(expected)
    excess = np.abs(actual - expected) - bound
    assert np.all(excess <= 0), f"{what}: max |difference| {np.max(np.abs(actual - expected)):.3g} above tolerance"
    return float(np.max(np.abs(actual - expected)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _load(fixture: dict):
    weights = FIXTURES / fixture["weights"] if "weights" in fixture else None
    return load_legacy_model(FIXTURES / fixture["path"], weights=weights)


@pytest.mark.parametrize("fixture", MODEL_FIXTURES, ids=[f["fixture"] for f in MODEL_FIXTURES])
def test_fixture_loads_with_the_old_stacks_outputs_and_converts(fixture, tmp_path):
    """predict and training=True outputs of the loaded model match tf.keras 2's; the converted file matches too."""
    expected = np.load(FIXTURES / fixture["expected"])
    before = _sha256(FIXTURES / fixture["path"])
    model = _load(fixture)
    assert _sha256(FIXTURES / fixture["path"]) == before

    converted_path = tmp_path / "converted.keras"
    model.save(converted_path)
    converted = keras.saving.load_model(converted_path)
    assert check_conversion(model, converted) <= 1e-5

    # A direct inference call is what predict() computes, without compiling a predict function per fixture.
    _assert_close(model(expected["x"], training=False), expected["predict"], fixture["tolerance"], "predict")
    _assert_close(model(expected["x"], training=True), expected["training"], fixture["tolerance"], "training=True")


def test_every_format_and_model_is_covered():
    formats = {f["format"] for f in MODEL_FIXTURES}
    assert formats == {"h5", "keras_v2", "savedmodel", "json+weights"}
    assert {f["model"] for f in MODEL_FIXTURES} >= {
        "sequential_bn",
        "bn_renorm_virtual",
        "sync_batch_norm",
        "layer_norm_axes",
        "addons_group_instance",
        "addons_frn_tlu",
        "nested_shared",
        "mixed_float16",
        "masked_sequence",
    }


def test_legacy_layers_become_normkit_layers_with_their_old_arguments():
    model = load_legacy_model(FIXTURES / "bn_renorm_virtual.h5")
    layers = {layer.name: layer for layer in model.layers}
    assert isinstance(layers["bn_renorm"], normkit.BatchNormalization)
    assert layers["bn_renorm"].renorm and layers["bn_renorm"].renorm_clipping == {"rmax": 1.5, "rmin": 0.6, "dmax": 0.4}
    # tf.keras 2 did not write `fused` into configs (fused=False is lost in its own files too): the default stays,
    # and resolves at build as tf.keras 2 resolved it (True for this rank-4, channels-last layer).
    assert layers["bn_unfused"].get_config()["fused"] is None and layers["bn_unfused"].fused is True
    assert layers["bn_virtual"].virtual_batch_size == 4 and list(layers["bn_virtual"].axis) == [3]  # un-shifted
    assert list(layers["bn_axis_1_3"].axis) == [1, 3]  # Keras 3's own loader drops this list
    sync = load_legacy_model(FIXTURES / "sync_batch_norm.h5").layers[1]
    assert isinstance(sync, normkit.BatchNormalization) and sync.synchronized
    ln = {layer.name: layer for layer in load_legacy_model(FIXTURES / "layer_norm_axes.keras").layers}
    assert list(ln["ln_123"].axis) == [1, 2, 3] and list(ln["ln_out_of_order"].axis) == [3, 1]
    mixed = load_legacy_model(FIXTURES / "mixed_float16.h5")
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in mixed.layers)


@pytest.mark.parametrize("name", KERAS3_READABLE_H5)
def test_keras_load_model_with_custom_objects_reads_the_h5_files_it_can(name):
    expected = np.load(FIXTURES / name.replace(".h5", ".npz"))
    model = keras.models.load_model(FIXTURES / name, custom_objects=normkit.custom_objects(), compile=False)
    _assert_close(model.predict(expected["x"], verbose=0), expected["predict"], {"atol": 1e-5, "rtol": 1e-4}, name)


def _keras3_sequential_bn(names: bool) -> keras.Model:
    """The weights file's model, rebuilt in Keras 3 with normkit (layer names as in the file when `names`)."""

    def name(text: str) -> dict:
        return {"name": text} if names else {}

    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3, padding="same", **name("conv2d_6")),
            normkit.BatchNormalization(momentum=0.8, **name("batch_normalization_4")),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(3, **name("dense_8")),
        ]
    )


@pytest.mark.parametrize("by_name", [False, True])
def test_load_legacy_weights_into_a_keras3_model(by_name):
    expected = np.load(FIXTURES / "weights_model.npz")
    model = _keras3_sequential_bn(names=by_name)
    path = FIXTURES / "weights_model_weights.h5"
    before = _sha256(path)
    load_legacy_weights(model, path, by_name=by_name)
    assert _sha256(path) == before
    tolerance = {"atol": 1e-5, "rtol": 1e-4}
    _assert_close(model.predict(expected["x"], verbose=0), expected["predict"], tolerance, "predict")
    _assert_close(model(expected["x"], training=True), expected["training"], tolerance, "training=True")


def test_load_legacy_weights_by_name_leaves_unnamed_layers_alone():
    model = _keras3_sequential_bn(names=False)  # no layer name matches the file's
    before = [np.array(w) for w in model.get_weights()]
    load_legacy_weights(model, FIXTURES / "weights_model_weights.h5", by_name=True)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("bad_truncated.h5", "truncated or corrupt"),
        ("bad_empty.h5", "empty"),
        ("bad_corrupt.h5", "corrupt"),
        ("bad_not_a_savedmodel", "not a SavedModel"),
        ("bad_savedmodel_no_keras", "without Keras metadata"),
        ("bad_unknown_layer.h5", r"MyCustomLayer.*custom_objects"),
        ("weights_model_weights.h5", r"weights-only.*load_legacy_weights"),
        ("weights_model.json", "pass weights="),
    ],
)
def test_bad_files_give_one_clear_error_and_stay_unchanged(name, pattern, capsys):
    path = FIXTURES / name
    before = _sha256(path)
    with pytest.raises(LegacyFileError, match=pattern) as caught:
        load_legacy_model(path)
    assert str(path) in str(caught.value) or "layer" in str(caught.value)
    # The CLI: one error line, exit 1, no traceback.
    assert main(["inspect", str(path)]) in (0, 1)
    capsys.readouterr()
    assert main(["convert", str(path), str(path) + ".keras"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("normkit convert: error:"), err
    assert not os.path.exists(str(path) + ".keras")
    assert _sha256(path) == before


def test_unknown_layer_names_the_layer_and_its_place_and_loads_with_custom_objects():
    with pytest.raises(LegacyFileError) as caught:
        load_legacy_model(FIXTURES / "bad_unknown_layer.h5")
    message = str(caught.value)
    assert "'my_custom'" in message and "custom[2]" in message and "custom_objects" in message

    class MyCustomLayer(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    model = load_legacy_model(FIXTURES / "bad_unknown_layer.h5", custom_objects={"MyCustomLayer": MyCustomLayer})
    assert isinstance(model.get_layer("my_custom"), MyCustomLayer)


def test_weights_that_do_not_fit_name_the_layer_and_both_shapes():
    model = load_legacy_model(FIXTURES / "sequential_bn.h5")
    before = [np.array(w) for w in model.get_weights()]
    path = FIXTURES / "bad_wrong_shape_weights.h5"
    digest = _sha256(path)
    with pytest.raises(LegacyFileError, match=r"layer 'dense.*\(144, 3\).*\(144, 5\)"):
        load_legacy_weights(model, path)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))  # nothing half-assigned
    assert _sha256(path) == digest



def test_inspect_lists_every_layer_and_what_it_maps_to(capsys):
    assert main(["inspect", str(FIXTURES / "bn_renorm_virtual.h5")]) == 0
    out = capsys.readouterr().out
    assert "bn_axis_1_3  BatchNormalization -> normkit.BatchNormalization" in out
    assert "8 layers, all load" in out
    assert main(["inspect", str(FIXTURES / "bad_unknown_layer.h5")]) == 1
    assert "MyCustomLayer -> NOT LOADABLE" in capsys.readouterr().out


def test_convert_check_writes_a_native_file(tmp_path, capsys):
    new = tmp_path / "new.keras"
    assert main(["convert", str(FIXTURES / "layer_norm_axes.h5"), str(new), "--check"]) == 0
    assert "ok" in capsys.readouterr().out
    expected = np.load(FIXTURES / "layer_norm_axes.npz")
    reloaded = keras.saving.load_model(new)
    _assert_close(reloaded.predict(expected["x"], verbose=0), expected["predict"], {"atol": 1e-5, "rtol": 1e-4}, "")
    assert main(["convert", str(FIXTURES / "layer_norm_axes.h5"), str(tmp_path / "new.h5")]) == 2


def test_savedmodel_without_tensorflow_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    with pytest.raises(LegacyFileError, match=r'pip install "normkit\[tensorflow\]"'):
        load_legacy_model(FIXTURES / "sequential_bn.savedmodel")

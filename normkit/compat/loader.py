"""load_legacy_model / load_legacy_weights / inspect_legacy_file: find the format, rebuild, fill the weights."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from normkit.compat import keras_v2_zip, legacy_h5, savedmodel
from normkit.compat.errors import LegacyFileError
from normkit.compat.mapping import ConversionPlan, custom_objects, plan_conversion, require_loadable
from normkit.compat.weights import assign_all, fit_layer, owners

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
_MODEL_CLASSES = ("Functional", "Sequential", "Model")


@dataclass
class LegacySource:
    """A legacy file found on disk: its format and its (tf.keras 2 form) model config, if it has one."""

    path: str
    format: str  # "h5", "savedmodel", "keras_v2", "keras_v3", "json"
    config: dict[str, Any] | None
    raw_config: dict[str, Any] | None = None  # the .keras zip's own config (for its weight paths)


def detect(path: str) -> str:
    """The format of `path` from its content (never its name alone); a LegacyFileError if it has none."""
    if not os.path.exists(path):
        raise LegacyFileError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if savedmodel.is_savedmodel(path):
            return "savedmodel"
        raise LegacyFileError(f"{path}: a directory, but not a SavedModel (it has no saved_model.pb)")
    size = os.path.getsize(path)
    if size == 0:
        raise LegacyFileError(f"{path}: the file is empty (0 bytes)")
    with open(path, "rb") as stream:
        head = stream.read(8)
    if head == _HDF5_SIGNATURE:
        return "h5"
    if head.startswith(_ZIP_SIGNATURE):
        return "keras_zip"
    if head.lstrip()[:1] == b"{":
        return "json"
    raise LegacyFileError(
        f"{path}: not an HDF5 file, a .keras zip, a model JSON or a SavedModel directory (it starts with "
        f"{head!r}): the file is corrupt or not a Keras model"
    )


def read_source(path: str) -> LegacySource:
    kind = detect(path)
    if kind == "savedmodel":
        return LegacySource(path, "savedmodel", savedmodel.model_config(path))
    if kind == "h5":
        with legacy_h5.open_h5(path) as handle:
            return LegacySource(path, "h5", legacy_h5.model_config(handle, path))
    if kind == "keras_zip":
        metadata, raw, _ = keras_v2_zip.read_zip(path)
        if keras_v2_zip.is_keras3(metadata):
            return LegacySource(path, "keras_v3", None, raw)
        return LegacySource(path, "keras_v2", keras_v2_zip.to_legacy_config(raw), raw)
    try:
        with open(path, encoding="utf-8") as stream:
            config = json.load(stream)
    except (ValueError, UnicodeDecodeError) as error:
        raise LegacyFileError(f"{path}: not valid model JSON ({error})") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise LegacyFileError(f"{path}: JSON, but not a model config (no `class_name`)")
    # Keras 2.13-2.15's to_json() writes the `module`/`registered_name` form of their .keras files.
    return LegacySource(path, "json", keras_v2_zip.to_legacy_config(config))


def load_legacy_model(
    path: str | os.PathLike[str],
    *,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = False,
    weights: str | os.PathLike[str] | None = None,
) -> Any:
    """Opens a model saved by tf.keras 2 (+ TensorFlow Addons) as a Keras 3 model with normkit layers.

    Reads tf.keras 2 `.h5`/`.hdf5` model files, SavedModel directories (needs TensorFlow), `.keras` files written by
    Keras 2.13-2.15 (and Keras 3's own, through `keras.saving.load_model`), and a `model.to_json()` file together
    with a weights file (`weights=`). Every weight and moving statistic is put in place; the file is opened read-only.

    Args:
        path: the file or SavedModel directory.
        custom_objects: classes of the model's own custom layers, by the class name the file holds.
        compile: compile the model with the file's training config (`.h5` only).
        weights: the weights file (`save_weights`, HDF5) for a JSON config; not used for other formats.

    Returns:
        The Keras 3 model (for the current backend).

    Raises:
        LegacyFileError: a file that is not a model, truncated or corrupt, a layer class that is unknown or not
            supported, or weights that do not fit (the layer and both shapes named).
    """
    path = os.fspath(path)
    source = read_source(path)
    if source.format == "keras_v3":
        import keras

        return keras.saving.load_model(path, custom_objects=_objects(custom_objects), compile=compile)
    if compile and source.format != "h5":
        raise LegacyFileError(
            f"{path}: compile=True is supported for .h5 files only; load with compile=False and call model.compile()"
        )
    if source.config is None:
        raise LegacyFileError(
            f"{path}: a weights-only file (no model config): build the model in Keras 3 and call "
            "normkit.load_legacy_weights(model, path)"
        )
    # A SavedModel's variables first: without TensorFlow that fails before anything is built.
    variables = savedmodel.read_variables(path) if source.format == "savedmodel" else None
    model = build_model(source.config, custom_objects, path)
    if source.format == "h5":
        with legacy_h5.open_h5(path) as handle:
            _assign_h5(model, legacy_h5.weights_group(handle, path), path, by_name=True, strict=True)
            if compile:
                _compile(model, legacy_h5.training_config(handle), custom_objects, path)
    elif source.format == "savedmodel":
        _assign_savedmodel(model, source.config, variables or {}, path)
    elif source.format == "keras_v2":
        _, _, weights_bytes = keras_v2_zip.read_zip(path)
        if weights_bytes is None:
            raise LegacyFileError(f"{path}: the .keras file has no model.weights.h5")
        _assign_keras_v2(model, source.raw_config or {}, weights_bytes, path)
    else:  # json
        if weights is None:
            raise LegacyFileError(f"{path}: a model config JSON holds no weights: pass weights='...h5'")
        _load_weights_file(model, os.fspath(weights), by_name=True, strict=True)
    return model


def load_legacy_weights(model: Any, path: str | os.PathLike[str], by_name: bool = False) -> None:
    """Loads a tf.keras 2 weights file (`model.save_weights("x.h5")`, or a whole-model `.h5`) into a Keras 3 model.

    `by_name=False`: the file's layers with weights, in order, go to `model.layers` with weights, in order (the
    counts must agree). `by_name=True`: each layer of the model takes the file's layer of the same name; layers the
    file does not have are left as they are. Shapes must agree (normalization layers' tf.keras 2 broadcast shapes
    are reshaped); otherwise a LegacyFileError names the layer and both shapes, and nothing is assigned to it.
    """
    _load_weights_file(model, os.fspath(path), by_name=by_name, strict=False)


def _load_weights_file(model: Any, path: str, *, by_name: bool, strict: bool) -> None:
    """`strict`: every layer of the model with weights must be in the file (a model and its own weights)."""
    if detect(path) != "h5":
        raise LegacyFileError(f"{path}: load_legacy_weights reads HDF5 weights files (.h5) only")
    with legacy_h5.open_h5(path) as handle:
        _assign_h5(model, legacy_h5.weights_group(handle, path), path, by_name=by_name, strict=strict)


def build_model(config: dict[str, Any], user_objects: dict[str, Any] | None, path: str) -> Any:
    plan = plan_conversion(config, user_objects)
    require_loadable(plan)
    return _deserialize(plan, user_objects, path)


def _deserialize(plan: ConversionPlan, user_objects: dict[str, Any] | None, path: str) -> Any:
    from keras.src.legacy.saving import saving_utils

    objects = {**_objects(user_objects), **plan.custom_objects}
    try:
        model = saving_utils.model_from_config(json.loads(json.dumps(plan.config)), custom_objects=objects)
    except (ValueError, TypeError, KeyError) as error:
        raise LegacyFileError(f"{path}: the model cannot be rebuilt from its config: {_first_line(error)}") from None
    if not getattr(model, "built", True):
        raise LegacyFileError(f"{path}: the model has no input shape in its config, so it cannot be built")
    return model


def _objects(user_objects: dict[str, Any] | None) -> dict[str, Any]:
    return {**custom_objects(), **(user_objects or {})}


def _compile(model: Any, training_config: dict[str, Any] | None, user_objects: Any, path: str) -> None:
    if training_config is None:
        return
    from keras.src.legacy.saving import saving_utils

    try:
        model.compile(**saving_utils.compile_args_from_training_config(training_config, _objects(user_objects)))
    except (ValueError, TypeError, KeyError) as error:
        raise LegacyFileError(f"{path}: its training config cannot be compiled: {_first_line(error)}") from None


# --------------------------------------------------------------------------------------------- weights


def _weighted_layers(model: Any) -> list[Any]:
    return [layer for layer in model.layers if layer.weights]


def _assign_h5(model: Any, group: Any, path: str, *, by_name: bool, strict: bool) -> None:
    owner_of = owners(model)
    pending: list[Any] = []
    file_layers = [name for name in legacy_h5.layer_names(group) if legacy_h5.layer_weights(group, name)[0]]
    if by_name:
        for layer in _weighted_layers(model):
            if layer.name not in file_layers:
                if strict:
                    raise LegacyFileError(f"{path}: the file has no weights for layer {layer.name!r}")
                continue
            names, arrays = legacy_h5.layer_weights(group, layer.name)
            pending += fit_layer(layer, arrays, names, path, owner_of)
        assign_all(pending)
        return
    layers = _weighted_layers(model)
    if len(layers) != len(file_layers):
        raise LegacyFileError(
            f"{path}: the file has weights for {len(file_layers)} layer(s) ({', '.join(file_layers)}) but the model "
            f"has {len(layers)} layer(s) with weights ({', '.join(layer.name for layer in layers)}); "
            "use by_name=True to match them by name"
        )
    for layer, file_layer in zip(layers, file_layers, strict=True):
        names, arrays = legacy_h5.layer_weights(group, file_layer)
        pending += fit_layer(layer, arrays, names, path, owner_of)
    assign_all(pending)


def _assign_keras_v2(model: Any, raw_config: dict[str, Any], weights_bytes: bytes, path: str) -> None:
    import h5py

    paths = keras_v2_zip.weight_paths(raw_config)
    owner_of = owners(model)
    try:
        with h5py.File(io.BytesIO(weights_bytes), "r") as handle:

            def assign(container: Any, names: tuple[str, ...]) -> None:
                for layer in _weighted_layers(container):
                    key = (*names, layer.name)
                    if type(layer).__name__ in _MODEL_CLASSES and hasattr(layer, "layers"):
                        assign(layer, key)
                        continue
                    if key not in paths or paths[key] not in handle:
                        raise LegacyFileError(f"{path}: model.weights.h5 has no weights for layer {layer.name!r}")
                    arrays, labels = _collect_vars(handle[paths[key]], paths[key])
                    pending.extend(fit_layer(layer, arrays, labels, path, owner_of))

            pending: list[Any] = []
            assign(model, ())
            assign_all(pending)
    except OSError as error:
        raise LegacyFileError(f"{path}: its model.weights.h5 is truncated or corrupt ({_first_line(error)})") from None


def _collect_vars(group: Any, label: str) -> tuple[list[np.ndarray], list[str]]:
    """A layer's own variables (`vars/0..n`), then those of its sublayers (e.g. an RNN's `cell`)."""
    arrays: list[np.ndarray] = []
    labels: list[str] = []
    if "vars" in group:
        for index in range(len(group["vars"])):
            arrays.append(np.asarray(group["vars"][str(index)]))
            labels.append(f"{label}/vars/{index}")
    for key in sorted(group):
        if key != "vars" and hasattr(group[key], "keys"):
            more, more_labels = _collect_vars(group[key], f"{label}/{key}")
            arrays += more
            labels += more_labels
    return arrays, labels


def _assign_savedmodel(model: Any, config: dict[str, Any], variables: dict[str, np.ndarray], path: str) -> None:
    owner_of = owners(model)

    def assign(container: Any, container_config: dict[str, Any], prefix: str) -> None:
        by_name = {layer.name: layer for layer in container.layers}
        index = 0
        for layer_config in container_config.get("config", {}).get("layers", []):
            name = layer_config.get("config", {}).get("name", layer_config.get("name"))
            layer = by_name.get(name)
            if layer is None or not layer.weights:
                continue
            key = f"{prefix}layer_with_weights-{index}"
            index += 1
            if layer_config.get("class_name") in _MODEL_CLASSES and hasattr(layer, "layers"):
                assign(layer, layer_config, key + "/")
                continue
            attributes = {k[len(key) + 1 :]: v for k, v in variables.items() if k.startswith(key + "/")}
            arrays, labels = [], []
            for variable in list(layer.trainable_weights) + list(layer.non_trainable_weights):
                match = _match_attribute(variable, attributes)
                if match is None:
                    raise LegacyFileError(
                        f"{path}: the checkpoint has no value for weight {variable.name!r} of layer {layer.name!r} "
                        f"(it has {sorted(attributes) or 'none'} under {key})"
                    )
                arrays.append(attributes[match])
                labels.append(f"{key}/{match}")
            pending.extend(fit_layer(layer, arrays, labels, path, owner_of))

    pending: list[Any] = []
    assign(model, config, "")
    assign_all(pending)


def _match_attribute(variable: Any, attributes: dict[str, np.ndarray]) -> str | None:
    exact = [key for key in attributes if key == variable.name]
    if exact:
        return exact[0]
    tail = [key for key in attributes if key.split("/")[-1] == variable.name]
    if len(tail) == 1:
        return tail[0]
    full = str(getattr(variable, "path", variable.name))
    suffix = [key for key in tail if full.endswith(key)]
    return suffix[0] if len(suffix) == 1 else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__

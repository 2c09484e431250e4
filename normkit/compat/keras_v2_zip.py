"""`.keras` zip files written by Keras 2.13-2.15 (`config.json`, `model.weights.h5`, `metadata.json`).

Their config uses Keras 2.15's module paths (`keras.src.engine.functional`, `keras.layers.experimental`,
`tensorflow_addons.layers.normalizations`) that Keras 3 cannot import; it is brought back to tf.keras 2's
`{"class_name", "config"}` form (registered names such as `Addons>GroupNormalization` kept as the class name) and
goes through the same mapping as an HDF5 file. The weights file stores each layer under
`layers/<snake_case of its Python class><_N>/vars/<i>`, N counting earlier layers of the same class in the
container's `layers` (a Sequential's InputLayer is not one of them), nested models one `layers/` level deeper.
"""

from __future__ import annotations

import json
import re
import zipfile
from typing import Any

from normkit.compat.errors import LegacyFileError


def read_zip(path: str) -> tuple[dict[str, Any], dict[str, Any], bytes | None]:
    """(metadata, raw config, weights file bytes) of a `.keras` zip."""
    try:
        with zipfile.ZipFile(path, "r") as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise LegacyFileError(f"{path}: a zip file but not a Keras model (no config.json)")
            config = json.loads(archive.read("config.json").decode("utf-8"))
            metadata = json.loads(archive.read("metadata.json").decode("utf-8")) if "metadata.json" in names else {}
            weights = archive.read("model.weights.h5") if "model.weights.h5" in names else None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise LegacyFileError(f"{path}: the .keras (zip) file is truncated or corrupt ({error})") from None
    return metadata, config, weights


def is_keras3(metadata: dict[str, Any]) -> bool:
    return str(metadata.get("keras_version", "")).startswith("3.")


def to_legacy_config(value: Any) -> Any:
    """Keras 2.13-2.15's serialized form -> tf.keras 2's (`module` and `registered_name` dropped)."""
    if isinstance(value, dict):
        if "class_name" in value and "config" in value and "module" in value:
            registered = value.get("registered_name")
            class_name = registered if isinstance(registered, str) and ">" in registered else value["class_name"]
            converted = {"class_name": class_name, "config": to_legacy_config(value["config"])}
            for key in ("name", "inbound_nodes"):  # a functional model's layer entries
                if key in value:
                    converted[key] = to_legacy_config(value[key])
            return converted
        return {key: to_legacy_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_legacy_config(item) for item in value]
    return value


def weight_paths(raw_config: dict[str, Any], prefix: str = "") -> dict[tuple[str, ...], str]:
    """(layer name, nested layer name, ...) -> its group in model.weights.h5, from the raw config."""
    paths: dict[tuple[str, ...], str] = {}
    _walk(raw_config, prefix, (), paths)
    return paths


def _walk(model: dict[str, Any], prefix: str, names: tuple[str, ...], paths: dict[tuple[str, ...], str]) -> None:
    is_sequential = model.get("class_name") == "Sequential"
    used: dict[str, int] = {}
    for layer in model.get("config", {}).get("layers", []):
        class_name = layer.get("class_name", "")
        if is_sequential and class_name == "InputLayer":
            continue
        snake = snake_case(class_name)
        if snake in used:
            used[snake] += 1
            snake = f"{snake}_{used[snake]}"
        else:
            used[snake] = 0
        name = layer.get("config", {}).get("name", layer.get("name"))
        path = f"{prefix}layers/{snake}"
        paths[(*names, name)] = path
        if class_name in ("Functional", "Sequential", "Model"):
            _walk(layer, path + "/", (*names, name), paths)


def snake_case(name: str) -> str:
    """Keras 2.15's `to_snake_case`."""
    intermediate = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    snake = re.sub("([a-z])([A-Z])", r"\1_\2", intermediate).lower()
    return snake if not snake.startswith("_") else "private" + snake

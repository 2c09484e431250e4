"""tf.keras 2 HDF5 files: whole-model files (`model_config` + `model_weights`) and weights-only files.

Opened read-only with h5py; every h5py/HDF5 failure becomes a LegacyFileError that names the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from normkit.compat.errors import LegacyFileError


@contextmanager
def open_h5(path: str) -> Iterator[Any]:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise LegacyFileError(
            f"{path}: cannot be read as an HDF5 file: it is truncated or corrupt ({_short(error)})"
        ) from None
    try:
        yield handle
    except (OSError, RuntimeError, KeyError) as error:
        raise LegacyFileError(f"{path}: the HDF5 file is truncated or corrupt ({_short(error)})") from None
    finally:
        handle.close()


def model_config(handle: Any, path: str) -> dict[str, Any] | None:
    """The file's model config, or None for a weights-only file."""
    raw = handle.attrs.get("model_config")
    if raw is None:
        return None
    try:
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
    except ValueError as error:
        raise LegacyFileError(f"{path}: its `model_config` attribute is not valid JSON ({error})") from None


def training_config(handle: Any) -> dict[str, Any] | None:
    raw = handle.attrs.get("training_config")
    if raw is None:
        return None
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))


def weights_group(handle: Any, path: str) -> Any:
    group = handle["model_weights"] if "model_weights" in handle else handle
    if "layer_names" not in group.attrs:
        raise LegacyFileError(f"{path}: an HDF5 file, but not a Keras model or weights file (no `layer_names`)")
    return group


def layer_names(group: Any) -> list[str]:
    return [_text(name) for name in group.attrs["layer_names"]]


def layer_weights(group: Any, layer_name: str) -> tuple[list[str], list[np.ndarray]]:
    """The weight names and arrays of one layer, in the order the file lists them."""
    if layer_name not in group:
        return [], []
    layer_group = group[layer_name]
    names = [_text(name) for name in layer_group.attrs.get("weight_names", [])]
    return names, [np.asarray(layer_group[name]) for name in names]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__

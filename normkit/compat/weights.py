"""Puts arrays read from a legacy file into a Keras 3 model's variables, checking every shape.

tf.keras 2 ordered a layer's weights as `trainable_weights + non_trainable_weights` (nested models included),
which is also the order of Keras 3's; both HDF5 layouts list them in that order. Two shape differences are
legitimate, both for normalization layers only, and both are C-order reshapes of the same values:
- BatchNormalization with a multi-axis `axis` or `virtual_batch_size`: tf.keras 2's broadcast shape
  (1, ..., C, ...) against normkit's shape of the feature dims;
- LayerNormalization with an out-of-order `axis` list ([3, 1]): tf.keras 2 made gamma/beta of shape
  (d3, d1) and reshaped (did not transpose) them to the broadcast shape when it applied them, so the values
  it used in ascending axis order are the same buffer reshaped to (d1, d3).
Any other difference is a LegacyFileError naming the layer, the weight and both shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normkit.compat.errors import LegacyFileError


def legacy_order(layer: Any) -> list[Any]:
    """The layer's variables in tf.keras 2's HDF5 order."""
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def owners(model: Any) -> dict[int, Any]:
    """id(variable) -> the innermost layer that created it."""
    found: dict[int, Any] = {}
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for variable in layer._trainable_variables + layer._non_trainable_variables:
            found.setdefault(id(variable), layer)
    for layer in reversed(list(model._flatten_layers(include_self=True, recursive=True))):
        for variable in layer.weights:
            found.setdefault(id(variable), layer)
    return found


def fit_layer(
    layer: Any, arrays: Sequence[np.ndarray], names: Sequence[str], source: str, owner_of: dict
) -> list[tuple[Any, np.ndarray]]:
    """Pairs `layer`'s variables with `arrays` (tf.keras 2 order), fitted to their shapes; assigns nothing.

    Errors name the layer and both shapes. Callers fit every layer first and then `assign_all`, so that a file
    that does not fit leaves the model as it was.
    """
    variables = legacy_order(layer)
    if len(variables) != len(arrays):
        raise LegacyFileError(
            f"{source}: layer {layer.name!r} has {len(variables)} weight(s) in the model "
            f"({', '.join(_describe(v) for v in variables) or 'none'}) but {len(arrays)} in the file "
            f"({', '.join(f'{n} {tuple(a.shape)}' for n, a in zip(names, arrays, strict=True)) or 'none'})"
        )
    pending = []
    for variable, array, name in zip(variables, arrays, names, strict=True):
        pending.append((variable, fit(variable, np.asarray(array), layer, name, source, owner_of)))
    return pending


def assign_all(pending: Sequence[tuple[Any, np.ndarray]]) -> None:
    for variable, value in pending:
        variable.assign(value)


def fit(variable: Any, array: np.ndarray, layer: Any, file_name: str, source: str, owner_of: dict) -> np.ndarray:
    target = tuple(int(d) for d in variable.shape)
    if tuple(array.shape) != target:
        owner = owner_of.get(id(variable), layer)
        if not (_is_normalization(owner) and array.size == int(np.prod(target, dtype=np.int64))):
            where = f"{layer.name!r}" if owner is layer else f"{layer.name!r} (sublayer {owner.name!r})"
            raise LegacyFileError(
                f"{source}: the weights do not fit layer {where}: weight {variable.name!r} has shape {target} in "
                f"the model, the file's {file_name!r} has shape {tuple(array.shape)}"
            )
        array = array.reshape(target)
    return array.astype(_numpy_dtype(variable))


def _is_normalization(layer: Any) -> bool:
    from normkit.layers.base import AffineNormalization

    return isinstance(layer, AffineNormalization) or type(layer).__module__.startswith("normkit.")


def _numpy_dtype(variable: Any) -> str:
    dtype = variable.dtype
    return dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))


def _describe(variable: Any) -> str:
    return f"{variable.name} {tuple(int(d) for d in variable.shape)}"

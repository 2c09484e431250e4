"""tf.keras 2 SavedModel directories: the model config from `keras_metadata.pb`, variables from the checkpoint.

`keras_metadata.pb` is a small protobuf (`SavedMetadata { repeated SavedObject nodes = 1 }`, each node
with `node_path = 3` and a JSON `metadata = 5`); it is decoded here without TensorFlow. The variables are read
with TensorFlow's checkpoint reader (`tf.train.load_checkpoint`), under any Keras backend, found through the
checkpoint's object graph (a variable reachable by several paths is stored under the first one only). Each
layer with weights is tracked as `layer_with_weights-K` (K counting the layers with weights in `model.layers`
order), nested models one level further, and each variable under its attribute name (`gamma`, `kernel`,
`cell/kernel`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from normkit.compat.errors import LegacyFileError


def is_savedmodel(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
        os.path.join(path, "saved_model.pbtxt")
    )


def model_config(path: str) -> dict[str, Any]:
    metadata_path = os.path.join(path, "keras_metadata.pb")
    if not os.path.isfile(metadata_path):
        raise LegacyFileError(
            f"{path}: a SavedModel without Keras metadata (no keras_metadata.pb): it was not written by a Keras "
            "model's save(), so there is no model to rebuild (keras.layers.TFSMLayer can still call it)"
        )
    with open(metadata_path, "rb") as stream:
        data = stream.read()
    try:
        for node in _messages(data, 1):
            fields = dict(_fields(node))
            if fields.get(3) == b"root":
                metadata = json.loads(fields[5].decode("utf-8"))
                config = metadata.get("model_config") or {
                    "class_name": metadata.get("class_name"),
                    "config": metadata.get("config"),
                }
                if not isinstance(config, dict) or not config.get("config"):
                    break
                return config
    except (ValueError, IndexError, KeyError, UnicodeDecodeError) as error:
        raise LegacyFileError(f"{metadata_path}: truncated or corrupt ({error})") from None
    raise LegacyFileError(f"{path}: its keras_metadata.pb holds no model config (a subclassed model?)")


def read_variables(path: str) -> dict[str, np.ndarray]:
    """Object path (`layer_with_weights-0/gamma`) -> value, for every path that leads to a variable."""
    try:
        import tensorflow as tf
    except ImportError:
        raise LegacyFileError(
            f"{path}: reading a SavedModel's variables needs TensorFlow: pip install \"normkit[tensorflow]\""
        ) from None
    prefix = os.path.join(path, "variables", "variables")
    try:
        reader = tf.train.load_checkpoint(prefix)
        keys = _object_paths(reader)
        return {object_path: np.asarray(reader.get_tensor(key)) for object_path, key in keys.items()}
    except (tf.errors.OpError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LegacyFileError(f"{path}: its variables checkpoint cannot be read ({message})") from None


_SKIPPED_CHILDREN = ("optimizer", "keras_api", "_self_saveable_object_factories", "save_counter")


def _object_paths(reader: Any) -> dict[str, str]:
    """Every object path from the root to a variable (`layer_with_weights-0/layer_with_weights-1/gamma`) -> the
    checkpoint key its value is stored under (a variable reachable by several paths is stored once)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    found: dict[str, str] = {}

    def walk(node_id: int, path: str, on_path: frozenset[int]) -> None:
        node = graph.nodes[node_id]
        for attribute in node.attributes:
            if attribute.name == "VARIABLE_VALUE" and path:
                found[path] = attribute.checkpoint_key
        if len(on_path) > 8:
            return
        for child in node.children:
            if child.local_name in _SKIPPED_CHILDREN or child.node_id in on_path:
                continue
            walk(child.node_id, f"{path}/{child.local_name}" if path else child.local_name, on_path | {child.node_id})

    walk(0, "", frozenset({0}))
    return found


def _varint(data: bytes, index: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[index]
        index += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, index


def _fields(data: bytes) -> Any:
    index = 0
    while index < len(data):
        key, index = _varint(data, index)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, index = _varint(data, index)
        elif wire_type == 2:
            length, index = _varint(data, index)
            value = data[index : index + length]
            if len(value) != length:
                raise ValueError("a field runs past the end of the data")
            index += length
        elif wire_type == 5:
            value, index = data[index : index + 4], index + 4
        elif wire_type == 1:
            value, index = data[index : index + 8], index + 8
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
        yield number, value


def _messages(data: bytes, number: int) -> list[bytes]:
    return [value for field, value in _fields(data) if field == number]

"""Which Keras 3 class every layer class of a tf.keras 2 / TensorFlow Addons config becomes, in one place.

A legacy config (`{"class_name": ..., "config": {...}}`, tf.keras 2's format) is rewritten before Keras 3
deserializes it:

- tf.keras 2 `BatchNormalization` (`fused`, `renorm`, `renorm_clipping`, `virtual_batch_size` with its shifted
  `axis`, multi-axis lists) -> `normkit.BatchNormalization`; `experimental.SyncBatchNormalization` -> the same
  with `synchronized=True`; `LayerNormalization` -> `normkit.LayerNormalization`; Addons (and tf.keras 2.11+)
  `GroupNormalization`, Addons `InstanceNormalization` -> normkit's; Addons `FilterResponseNormalization` and
  `TLU` -> normkit's once normkit has them, until then a LegacyFileError naming the layer.
- Every other class goes through Keras 3's own legacy deserialization. Keras 3 drops an `axis` that is a list
  of more than one entry (for every class); such a layer is given a per-layer loader that puts it back.
- Dtype policies written as `{"class_name": "Policy", "config": {"name": "mixed_float16"}}` become the name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

# Old class name -> (normkit attribute, config keys forced on the new layer).
NORMALIZATION_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "BatchNormalization": ("BatchNormalization", {}),
    "SyncBatchNormalization": ("BatchNormalization", {"synchronized": True}),
    "LayerNormalization": ("LayerNormalization", {}),
    "GroupNormalization": ("GroupNormalization", {}),
    "Addons>GroupNormalization": ("GroupNormalization", {}),
    "Addons>InstanceNormalization": ("InstanceNormalization", {}),
    "InstanceNormalization": ("InstanceNormalization", {}),
    "Addons>FilterResponseNormalization": ("FilterResponseNormalization", {}),
    "FilterResponseNormalization": ("FilterResponseNormalization", {}),
    "Addons>TLU": ("TLU", {}),
    "TLU": ("TLU", {}),
}
_MODEL_CLASSES = ("Functional", "Model", "Sequential")
# tf.keras 2 config keys Keras 3 layers no longer take.
_DROPPED_BATCH_NORM_KEYS: tuple[str, ...] = ()


@dataclass
class LayerPlan:
    """One layer of a legacy config: where it is, its old class, what it becomes, and why not if it cannot."""

    path: str
    name: str
    old_class: str
    new_class: str
    problem: str | None = None


@dataclass
class ConversionPlan:
    """A legacy model config rewritten for Keras 3, the per-layer loaders it needs, and a row per layer."""

    config: dict[str, Any]
    custom_objects: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerPlan] = field(default_factory=list)

    @property
    def problems(self) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.problem is not None]


class _LayerLoader:
    """Stands in for a class in `custom_objects`: Keras calls `from_config`, it builds the real layer.

    Keras 3's legacy deserializer pops `axis` before calling `from_config` when it is a list of several entries;
    the loader holds that axis and the forced keys (e.g. `synchronized=True`) and gives them back.
    """

    def __init__(self, target: Any, overrides: dict[str, Any]) -> None:
        self.target = target
        self.overrides = overrides

    def from_config(self, config: dict[str, Any]) -> Any:
        config = dict(config)
        config.update(self.overrides)
        return self.target.from_config(config)


def custom_objects() -> dict[str, Any]:
    """The names tf.keras 2 and TensorFlow Addons wrote for normalization layers, mapped to normkit's classes.

    For `keras.models.load_model(path, custom_objects=normkit.custom_objects())` on the `.h5` files Keras 3's own
    loader can read (it cannot restore a multi-element `axis`, SavedModels or Keras 2 `.keras` files: use
    `normkit.load_legacy_model` for those).
    """
    import normkit

    objects: dict[str, Any] = {}
    for old_name, (attribute, overrides) in NORMALIZATION_CLASSES.items():
        target = getattr(normkit, attribute)
        objects[old_name] = _LayerLoader(target, overrides) if overrides else target
    return objects


def plan_conversion(model_config: dict[str, Any], user_objects: dict[str, Any] | None = None) -> ConversionPlan:
    """Rewrites a legacy model config (not modified) for Keras 3's deserializer; raises nothing.

    Layers that cannot load are recorded in `plan.layers[i].problem`; `require_loadable` turns them into an error.
    """
    import keras

    import normkit

    known = set(_MODEL_CLASSES) | set(keras.saving.get_custom_objects()) | set(user_objects or {})
    known |= {name for name in dir(keras.layers) if not name.startswith("_")}
    plan = ConversionPlan(config=_clean(copy.deepcopy(model_config)))
    counter = [0]

    def visit(layer_config: dict[str, Any], path: str) -> None:
        old_class = layer_config.get("class_name", "?")
        inner = layer_config.setdefault("config", {})
        name = str(inner.get("name", layer_config.get("name", "?")))
        if old_class in _MODEL_CLASSES:
            plan.layers.append(LayerPlan(path, name, old_class, old_class))
            visit_model(inner, f"{path}/{name}" if path else name)
            return
        if user_objects and old_class in user_objects:
            plan.layers.append(LayerPlan(path, name, old_class, f"custom_objects[{old_class!r}]"))
            target, overrides = None, {}
        elif old_class in NORMALIZATION_CLASSES:
            attribute, overrides = NORMALIZATION_CLASSES[old_class]
            target = getattr(normkit, attribute)
            plan.layers.append(LayerPlan(path, name, old_class, f"normkit.{attribute}"))
        elif old_class in known:
            plan.layers.append(LayerPlan(path, name, old_class, _keras_name(old_class)))
            target, overrides = None, {}
        else:
            problem = (
                f"unknown layer class {old_class!r}: pass it as "
                f"custom_objects={{{old_class!r}: {old_class.split('>')[-1]}}}"
            )
            plan.layers.append(LayerPlan(path, name, old_class, "-", problem))
            return
        axis = inner.get("axis")
        # Keras 3 pops a list `axis` of several entries and turns a one-entry list into an int; normkit's layers
        # get every list back as a list (BatchNormalization reads a shifted ghost-batch axis only from a list).
        multi_axis = isinstance(axis, (list, tuple)) and (len(axis) > 1 or target is not None)
        if target is None and not multi_axis:
            return
        if target is None:
            target = (user_objects or {}).get(old_class) or getattr(keras.layers, old_class, None)
            if target is None:  # registered under a `package>Name` key
                target = keras.saving.get_custom_objects()[old_class]
        if multi_axis:
            overrides = {**overrides, "axis": list(axis)}
        counter[0] += 1
        key = f"normkit.compat>{counter[0]}>{old_class}"
        plan.custom_objects[key] = _LayerLoader(target, overrides)
        layer_config["class_name"] = key

    def visit_model(model_config_inner: Any, path: str) -> None:
        layers = model_config_inner.get("layers", []) if isinstance(model_config_inner, dict) else []
        _renumber_nested_model_nodes(layers)
        for index, layer_config in enumerate(layers):
            if isinstance(layer_config, dict):
                visit(layer_config, f"{path}[{index}]")

    top = plan.config
    if top.get("class_name") in _MODEL_CLASSES:
        visit_model(top.get("config", {}), str(top.get("config", {}).get("name", "model")))
    else:
        visit(top, "")
    return plan


def _renumber_nested_model_nodes(layers: list[Any]) -> None:
    """tf.keras 2 gave a model its own node 0, so calls of a nested model are nodes 1, 2, ...; Keras 3's are 0, 1."""
    nested = {
        layer.get("config", {}).get("name", layer.get("name"))
        for layer in layers
        if isinstance(layer, dict) and layer.get("class_name") in _MODEL_CLASSES
    }
    if not nested:
        return
    for layer in layers:
        for node in layer.get("inbound_nodes", []) if isinstance(layer, dict) else []:
            if not isinstance(node, list):
                continue
            for entry in node:
                if isinstance(entry, list) and len(entry) >= 3 and entry[0] in nested and entry[1] >= 1:
                    entry[1] -= 1


def require_loadable(plan: ConversionPlan) -> None:
    from normkit.compat.errors import LegacyFileError

    problems = plan.problems
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more layer(s): {', '.join(p.name for p in problems[1:])})" if len(
            problems
        ) > 1 else ""
        raise LegacyFileError(f"layer {first.name!r} at {first.path}: {first.problem}{more}")


def _keras_name(old_class: str) -> str:
    return old_class if ">" in old_class else f"keras.layers.{old_class}"


def _clean(value: Any) -> Any:
    """Decodes what tf.keras 2 encoded in configs and Keras 3 does not read: `__tuple__` and Policy dicts."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and "items" in value:
            return [_clean(item) for item in value["items"]]
        if value.get("class_name") in ("Policy", "DTypePolicy") and isinstance(value.get("config"), dict):
            name = value["config"].get("name")
            if isinstance(name, str):
                return name
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value

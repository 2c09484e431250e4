"""The normalizations `normkit compare` knows and the seed tutorial's model around them.

Each entry is the exact layer call (a string, shown in the report and part of a run's key) and a factory.
group, instance and layer are the seed's calls verbatim. ghost-batch uses V = gcd(B, --ghost-batch-size)
samples per ghost batch (tf.keras 2 semantics: B must be divisible by V), so at B <= V it equals batch.
rms normalizes each position over the channels (as the seed's layer call does); frn is filter response
normalization over H and W followed by its TLU activation (Singh & Krishnan 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from normkit.cli.errors import CLIError


@dataclass(frozen=True)
class NormSpec:
    name: str
    call: str  # the layer call as written in the report
    factory: Callable[[], Any] | None  # None: no normalization layer


def spec(name: str, batch_size: int, ghost_batch_size: int) -> NormSpec:
    """The layer `name` stands for at this batch size."""
    import normkit

    if name == "none":
        return NormSpec(name, "(no normalization layer)", None)
    if name == "batch":
        return NormSpec(name, "BatchNormalization(axis=3)", lambda: normkit.BatchNormalization(axis=3))
    if name == "batch-renorm":
        return NormSpec(
            name, "BatchNormalization(axis=3, renorm=True)", lambda: normkit.BatchNormalization(axis=3, renorm=True)
        )
    if name == "ghost-batch":
        v = math.gcd(batch_size, ghost_batch_size)
        return NormSpec(
            name,
            f"BatchNormalization(axis=3, virtual_batch_size={v})",
            lambda: normkit.BatchNormalization(axis=3, virtual_batch_size=v),
        )
    if name == "group":
        return NormSpec(
            name, "GroupNormalization(groups=5, axis=3)", lambda: normkit.GroupNormalization(groups=5, axis=3)
        )
    if name == "instance":
        return NormSpec(
            name,
            'InstanceNormalization(axis=3, center=True, scale=True, beta_initializer="random_uniform", '
            'gamma_initializer="random_uniform")',
            lambda: normkit.InstanceNormalization(
                axis=3, center=True, scale=True, beta_initializer="random_uniform", gamma_initializer="random_uniform"
            ),
        )
    if name == "layer":
        return NormSpec(
            name,
            "LayerNormalization(axis=3, center=True, scale=True)",
            lambda: normkit.LayerNormalization(axis=3, center=True, scale=True),
        )
    if name == "rms":
        return NormSpec(name, "RMSNormalization(axis=3)", lambda: normkit.RMSNormalization(axis=3))
    if name == "frn":
        # The paper's pairing: FRN followed by a TLU in place of the ReLU, as one block (one norm layer in the
        # model, its parameters counted together).
        return NormSpec(
            name,
            "Sequential([FilterResponseNormalization(), TLU()])",
            _frn_with_tlu,
        )
    raise CLIError(f"unknown norm {name!r}")


def _frn_with_tlu() -> Any:
    import keras

    import normkit

    return keras.Sequential([normkit.FilterResponseNormalization(), normkit.TLU()], name="frn_tlu")


def unavailable_reason(name: str, batch_size: int, ghost_batch_size: int) -> str | None:
    """Why this normkit cannot build `name` (a layer or argument not there yet), or None if it can."""
    try:
        s = spec(name, batch_size, ghost_batch_size)
        if s.factory is not None:
            s.factory()
    except (AttributeError, TypeError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def build_model(norm: NormSpec) -> Any:
    """The seed tutorial's model with `norm` after the convolution, compiled as the seed does."""
    import keras

    layers: list[Any] = [
        keras.Input(shape=(28, 28)),
        keras.layers.Reshape((28, 28, 1)),
        keras.layers.Conv2D(filters=10, kernel_size=(3, 3), data_format="channels_last"),
    ]
    if norm.factory is not None:
        layers.append(norm.factory())
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(10, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model

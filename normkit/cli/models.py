"""The models `normkit compare` trains, and the check of batch norm's moving statistics after training.

- seed: the seed tutorial's model (normkit.cli.norms.build_model): one Conv2D(10, 3x3), the normalization,
  Flatten, Dense 128, Dropout, Dense 10; adam at Keras's default learning rate.
- deep: a normalization after every convolution, so that batch norm's per-channel statistics at the last stage
  come from B x 7 x 7 values only (98 at B = 2), as in the deep ImageNet networks of Wu & He (2018):

      Reshape(28, 28, 1)
      3 stages, channels 8, 16, 32:  [Conv2D(c, 3x3, same, no bias) -> norm -> ReLU] x 2, then 2x2 max pooling
                                     (none after the last stage)
      GlobalAveragePooling2D -> Dense(10, softmax)

  trained with SGD, momentum 0.9, learning rate base_lr * B / 32 (the linear scaling rule of Goyal et al. 2017,
  which Wu & He use for their batch-size study: the same number of epochs then follows about the same path at
  every batch size). The convolutions have no bias because every normalization here subtracts a mean and has
  its own beta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from normkit.cli import norms as norms_mod

DEEP_CHANNELS = (8, 16, 32)
DEEP_BASE_LR = 0.05  # SGD learning rate at batch size 32
REFERENCE_BATCH = 32
SGD_MOMENTUM = 0.9
# The moving statistics keep momentum**steps of their initial values (0 and 1); below this share they are
# called converged (0.99**459 < 0.01: about 460 steps at tf.keras's default momentum).
CONVERGED_INITIAL_SHARE = 0.01
MOVING_STATS_NORMS = ("batch", "batch-renorm", "ghost-batch")


def deep_spec(name: str, batch_size: int, ghost_batch_size: int, channels: int) -> norms_mod.NormSpec:
    """The layer `name` stands for after a convolution with `channels` channels in the deep model.

    Group norm uses 4 groups (2, 4, 8 channels per group over the stages; Wu & He use 32 groups of wider layers)
    and layer norm normalizes each sample over (H, W, C) as in Wu & He's Figure 2; the others are the seed
    model's calls.
    """
    import normkit

    if name == "group":
        return norms_mod.NormSpec(
            name, "GroupNormalization(groups=4, axis=3)", lambda: normkit.GroupNormalization(groups=4, axis=3)
        )
    if name == "layer":
        return norms_mod.NormSpec(
            name, "LayerNormalization(axis=[1, 2, 3])", lambda: normkit.LayerNormalization(axis=[1, 2, 3])
        )
    return norms_mod.spec(name, batch_size, ghost_batch_size)


def layer_call(model: str, name: str, batch_size: int, ghost_batch_size: int) -> str:
    if model == "deep":
        return deep_spec(name, batch_size, ghost_batch_size, DEEP_CHANNELS[0]).call
    return norms_mod.spec(name, batch_size, ghost_batch_size).call


def learning_rate(base_lr: float | None, batch_size: int) -> float:
    """The deep model's SGD learning rate: linear in the batch size, base_lr at batch size 32."""
    return (DEEP_BASE_LR if base_lr is None else base_lr) * batch_size / REFERENCE_BATCH


def build(model: str, name: str, batch_size: int, ghost_batch_size: int, base_lr: float | None) -> Any:
    """The compiled model `model` ("seed" or "deep") with normalization `name`."""
    if model == "seed":
        return norms_mod.build_model(norms_mod.spec(name, batch_size, ghost_batch_size))
    import keras

    layers: list[Any] = [keras.Input(shape=(28, 28)), keras.layers.Reshape((28, 28, 1))]
    for stage, channels in enumerate(DEEP_CHANNELS):
        for _ in range(2):
            norm = deep_spec(name, batch_size, ghost_batch_size, channels)
            layers.append(keras.layers.Conv2D(channels, 3, padding="same", use_bias=norm.factory is None))
            if norm.factory is not None:
                layers.append(norm.factory())
            layers.append(keras.layers.ReLU())
        if stage < len(DEEP_CHANNELS) - 1:
            layers.append(keras.layers.MaxPooling2D(2))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")]
    network = keras.Sequential(layers)
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate(base_lr, batch_size), momentum=SGD_MOMENTUM)
    network.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return network


def steps_to_converge(momentum: float) -> int:
    """The fewest steps after which the moving statistics keep under 1% of their initial values."""
    return math.ceil(math.log(CONVERGED_INITIAL_SHARE) / math.log(momentum))


def epochs_to_converge(n_train: int, largest_batch: int, momentum: float = 0.99) -> int:
    """Epochs ("--epochs auto") that give the largest batch size enough steps for the moving statistics to
    converge (every step has B samples: floor(n / B) steps per epoch)."""
    steps_per_epoch = max(1, n_train // largest_batch)
    return max(1, math.ceil(steps_to_converge(momentum) / steps_per_epoch))


def norm_layers(network: Any) -> list[Any]:
    """The normalization layers of a built model (TLU, FRN's activation, counted with them), in order."""
    import normkit

    kinds = tuple(
        getattr(normkit, n)
        for n in (
            "BatchNormalization",
            "GroupNormalization",
            "InstanceNormalization",
            "LayerNormalization",
            "RMSNormalization",
            "FilterResponseNormalization",
            "TLU",
        )
        if hasattr(normkit, n)
    )
    # Recursive: a block such as `frn` (FilterResponseNormalization then TLU) is a nested Sequential.
    return [layer for layer in network._flatten_layers(include_self=False, recursive=True) if isinstance(layer, kinds)]


def moving_statistics_check(network: Any, images: np.ndarray | None, steps: int) -> list[dict[str, Any]]:
    """For each batch norm layer: its moving mean and variance against the statistics of its input over
    `images` (inference mode: what the moving statistics should estimate), per channel c:

        mean_error = mean_c |moving_mean_c - mu_c| / sqrt(var_c + eps)     (in the data's standard deviations)
        variance_ratio = exp(mean_c |log((moving_variance_c + eps) / (var_c + eps))|)   (1 = exact; 2 = off x2)
        initial_share = momentum ** steps  (the weight the initial values 0 and 1 still have)

    With `images` None only initial_share is given (the data pass costs a compiled forward pass per model).
    """
    import keras

    import normkit

    layers = [layer for layer in norm_layers(network) if isinstance(layer, normkit.BatchNormalization)]
    if not layers:
        return []
    if images is None:
        return [
            {"layer": i, "initial_share": float(float(layer.momentum) ** steps), "momentum": float(layer.momentum)}
            for i, layer in enumerate(layers)
        ]
    probe = keras.Model(inputs=network.inputs, outputs=[layer.input for layer in layers])
    outputs = probe.predict(images, batch_size=min(len(images), 500), verbose=0)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    found = []
    for index, (layer, features) in enumerate(zip(layers, outputs, strict=True)):
        values = np.asarray(features, dtype=np.float64)
        axes = tuple(a for a in range(values.ndim) if a != values.ndim - 1)
        mu, var = values.mean(axis=axes), values.var(axis=axes)
        eps = float(layer.epsilon)
        moving_mean = np.asarray(keras.ops.convert_to_numpy(layer.moving_mean), dtype=np.float64)
        moving_var = np.asarray(keras.ops.convert_to_numpy(layer.moving_variance), dtype=np.float64)
        found.append(
            {
                "layer": index,
                "mean_error": float(np.mean(np.abs(moving_mean - mu) / np.sqrt(var + eps))),
                "variance_ratio": float(np.exp(np.mean(np.abs(np.log((moving_var + eps) / (var + eps)))))),
                "initial_share": float(float(layer.momentum) ** steps),
                "momentum": float(layer.momentum),
            }
        )
    return found


def worst(check: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The layer whose moving statistics are furthest from the data's."""
    check = [c for c in check if "mean_error" in c]
    if not check:
        return None
    return max(check, key=lambda c: c["mean_error"] + abs(math.log(c["variance_ratio"])))

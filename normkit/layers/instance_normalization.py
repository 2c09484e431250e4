"""InstanceNormalization with TensorFlow Addons semantics (Ulyanov et al. 2016)."""

from __future__ import annotations

import warnings
from typing import Any

from normkit.core import validation as v
from normkit.layers.base import ConstraintArg, InitializerArg, RegularizerArg, register
from normkit.layers.group_normalization import GroupNormalization


@register("InstanceNormalization", "Addons>InstanceNormalization")
class InstanceNormalization(GroupNormalization):
    """Instance normalization layer, a drop-in for `tfa.layers.InstanceNormalization`.

    Every (sample, channel) is normalized by its own mean and variance over all other non-batch axes (the
    spatial ones in an image), then scaled and shifted per channel. It is GroupNormalization with one group
    per channel. On a rank-2 input each group is a single element, so the output is `beta`.

    Args:
        axis: the channel axis (not the batch axis). -1 for channels-last, 1 for channels-first.
        epsilon, center, scale: as for GroupNormalization.
        beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer: as for GroupNormalization.
        beta_constraint, gamma_constraint: as for GroupNormalization.
        groups: ignored, as TensorFlow Addons ignored it (its configs stored the channel count here after
            build). A positive int or -1; a value other than -1 or the channel count gives a UserWarning
            naming it at build.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).

    Example (the seed tutorial's call):

    >>> import numpy as np, keras, normkit
    >>> layer = normkit.InstanceNormalization(axis=3, center=True, scale=True,
    ...     beta_initializer="random_uniform", gamma_initializer="random_uniform")
    >>> y = layer(np.random.default_rng(0).normal(size=(2, 26, 26, 10)).astype("float32"))
    >>> tuple(layer.gamma.shape)
    (10,)

    Serialized as `normkit>InstanceNormalization`; `Addons>InstanceNormalization` configs load too.
    """

    def __init__(
        self,
        axis: int = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: InitializerArg = "zeros",
        gamma_initializer: InitializerArg = "ones",
        beta_regularizer: RegularizerArg = None,
        gamma_regularizer: RegularizerArg = None,
        beta_constraint: ConstraintArg = None,
        gamma_constraint: ConstraintArg = None,
        groups: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            groups=-1,
            axis=axis,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        # Addons rewrote groups=-1 to the channel count at build and saved that: silent; other values warn at
        # build, where the channel count is known.
        self._saved_groups = v.check_groups_arg(groups)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        super().build(input_shape)
        channels = int(input_shape[self._reduction.group_axis])
        if self._saved_groups not in (-1, channels):
            # TensorFlow Addons warned and ignored `groups` too, so that its users' code keeps running.
            warnings.warn(
                f"InstanceNormalization uses one group per channel ({channels} here) and ignores `groups`. "
                f"Received: groups={self._saved_groups}",
                UserWarning,
                stacklevel=2,
            )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["groups"]
        return config

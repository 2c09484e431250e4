"""GroupNormalization with TensorFlow Addons semantics (Wu & He 2018)."""

from __future__ import annotations

from typing import Any

import keras

from normkit.core import validation as v
from normkit.core.functional import group_reduction_for
from normkit.core.normalize import normalize_with_batch_statistics
from normkit.layers.base import AffineNormalization, ConstraintArg, InitializerArg, RegularizerArg, register
from normkit.layers.masks import full_rank_mask


@register("GroupNormalization", "Addons>GroupNormalization")
class GroupNormalization(AffineNormalization):
    """Group normalization layer (Wu & He, 2018), a drop-in for `tfa.layers.GroupNormalization`.

    The channels on `axis` are split into `groups` contiguous groups of `channels // groups`; every
    (sample, group) is normalized by the mean and (biased) variance of that group's channels over all other
    non-batch axes, then scaled by `gamma` and shifted by `beta` (one per channel). Statistics never mix
    samples, so the result does not depend on the batch size.

    `groups=1` normalizes each sample over all its non-batch axes (like LayerNormalization over them);
    `groups=-1` (or the number of channels) gives instance normalization.

    Args:
        groups: number of groups, a divisor of the channel count; -1 for one group per channel.
        axis: the channel axis (not the batch axis). -1 for channels-last, 1 for channels-first.
        epsilon: added to the variance inside the square root.
        center: if True, add the learned offset `beta`.
        scale: if True, multiply by the learned scale `gamma`.
        beta_initializer, gamma_initializer: initializers of `beta` and `gamma`.
        beta_regularizer, gamma_regularizer, beta_constraint, gamma_constraint: as for any Keras weight.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).

    Input shape: any rank >= 2, the channel dim defined, no other non-batch dim of size 0; once built, inputs
    must keep the rank and channel count. Integer and bool inputs are cast to the compute dtype (as Keras'
    normalization layers do), complex ones are a TypeError. Output shape: the input's;
    `compute_output_shape` checks the shape as `build` does but creates no weights (call `build` for that).

    Call arguments:
        inputs: the tensor to normalize.
        mask: optional; a Keras sequence mask (the input's rank minus one, e.g. from `Masking` or
            `Embedding(mask_zero=True)`, applied to every feature of a position) or a mask of the input's rank
            (broadcastable; 0/1 or weights, as tf-keras' GroupNormalization took): masked positions are left out
            of the statistics, their outputs are still computed, and a statistic with nothing unmasked gives
            `beta`. The mask propagates to the next layer.

    Example (the seed tutorial's call):

    >>> import numpy as np, keras, normkit
    >>> layer = normkit.GroupNormalization(groups=5, axis=3)
    >>> x = np.random.default_rng(0).normal(size=(2, 26, 26, 10)).astype("float32")
    >>> y = keras.ops.convert_to_numpy(layer(x))
    >>> bool(abs(y[0, :, :, :2].mean()) < 1e-4)
    True

    Serialized as `normkit>GroupNormalization`; configs saved as `Addons>GroupNormalization` load too.
    """

    def __init__(
        self,
        groups: int = 32,
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
        **kwargs: Any,
    ) -> None:
        super().__init__(
            axis=axis,
            allow_axis_list=False,
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
        self.groups = v.check_groups_arg(groups)
        self._reduction = None

    def _reduction_for(self, input_shape: tuple[int | None, ...]) -> Any:
        return group_reduction_for(tuple(input_shape), self.groups, self._axis_argument)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self._reduction = self._reduction_for(input_shape)
        channel_axis = self._reduction.group_axis
        channels = int(input_shape[channel_axis])
        self._build_affine((channels,))
        # Later inputs must have this rank and channel count (Keras raises its own clear error otherwise).
        self.input_spec = keras.InputSpec(ndim=len(input_shape), axes={channel_axis: channels})

    def call(self, inputs: Any, mask: Any = None) -> Any:
        inputs = v.layer_input(inputs, self.compute_dtype, self.name)
        return normalize_with_batch_statistics(
            inputs, self._reduction, self.gamma, self.beta, self.epsilon, mask=full_rank_mask(mask, inputs)
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["groups"] = self.groups
        return config

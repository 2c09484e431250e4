"""LayerNormalization with tf.keras 2 semantics (Ba et al. 2016)."""

from __future__ import annotations

from typing import Any

from normkit.core import validation as v
from normkit.core.functional import layer_reduction_for
from normkit.core.normalize import normalize_with_batch_statistics
from normkit.layers.base import AffineNormalization, ConstraintArg, InitializerArg, RegularizerArg, register


@register("LayerNormalization")
class LayerNormalization(AffineNormalization):
    """Layer normalization layer (Ba et al., 2016) with tf.keras 2 semantics.

    Every sample is normalized by the mean and (biased) variance over the `axis` dims, then scaled by
    `gamma` and shifted by `beta`, which have the shape of those dims (in ascending axis order).

    Args:
        axis: an int or a list/tuple of ints, the axes to normalize over, e.g. -1 (features) or [1, 2, 3]
            (height, width and channels of an NHWC image). No duplicates.
        epsilon, center, scale: as for GroupNormalization.
        beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer: as for GroupNormalization.
        beta_constraint, gamma_constraint: as for GroupNormalization.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).

    Example (the seed tutorial's call):

    >>> import numpy as np, keras, normkit
    >>> layer = normkit.LayerNormalization(axis=3, center=True, scale=True)
    >>> y = layer(np.random.default_rng(0).normal(size=(2, 26, 26, 10)).astype("float32"))
    >>> tuple(layer.gamma.shape)
    (10,)
    """

    def __init__(
        self,
        axis: v.AxisArg = -1,
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
            allow_axis_list=True,
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
        self._reduction = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self._reduction = layer_reduction_for(tuple(input_shape), self.axis)
        self._build_affine(tuple(int(input_shape[a]) for a in self._reduction.param_axes))

    def call(self, inputs: Any) -> Any:
        return normalize_with_batch_statistics(inputs, self._reduction, self.gamma, self.beta, self.epsilon)

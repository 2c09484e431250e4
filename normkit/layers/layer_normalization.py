"""LayerNormalization with tf.keras 2 semantics (Ba et al. 2016)."""

from __future__ import annotations

from typing import Any

import keras

from normkit.core import validation as v
from normkit.core.functional import layer_reduction_for
from normkit.core.normalize import normalize_with_batch_statistics
from normkit.layers.base import AffineNormalization, ConstraintArg, InitializerArg, RegularizerArg, register
from normkit.layers.masks import full_rank_mask


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

    After build, `layer.axis` is the list of non-negative axes (tf.keras 2's form: `[1]` for `axis=-1` on a
    rank-2 input); `get_config` writes `axis` as it was given, so a config builds on inputs of any rank.
    Inputs: the `axis` dims defined and no non-batch dim of size 0; once built, the same rank and `axis`
    dims. Integer and bool inputs are cast to the compute dtype (Keras' LayerNormalization does the same),
    complex ones are a TypeError. `compute_output_shape` checks the shape as `build` does (an `axis` out of
    range is a ValueError) and creates no weights.

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

    def _reduction_for(self, input_shape: tuple[int | None, ...]) -> Any:
        return layer_reduction_for(tuple(input_shape), self._axis_argument)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        input_shape = tuple(input_shape)
        self._reduction = self._reduction_for(input_shape)
        axes = self._reduction.param_axes
        self._build_affine(tuple(int(input_shape[a]) for a in axes))
        # tf.keras 2's `validate_axis`: the axes as a list of non-negative ints, in the order given.
        given = [self._axis_argument] if isinstance(self._axis_argument, int) else self._axis_argument
        self.axis = [a % len(input_shape) for a in given]
        self.input_spec = keras.InputSpec(ndim=len(input_shape), axes={a: int(input_shape[a]) for a in axes})

    def call(self, inputs: Any, mask: Any = None) -> Any:
        inputs = v.layer_input(inputs, self.compute_dtype, self.name)
        return normalize_with_batch_statistics(
            inputs, self._reduction, self.gamma, self.beta, self.epsilon, mask=full_rank_mask(mask, inputs)
        )

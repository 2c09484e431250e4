"""RMSNormalization (Zhang & Sennrich 2019), with the numbers of Keras 3's `keras.layers.RMSNormalization`."""

from __future__ import annotations

from typing import Any

from normkit.core import validation as v
from normkit.core.normalize import Reduction, layer_reduction, normalize_with_batch_statistics
from normkit.layers.base import AffineNormalization, ConstraintArg, InitializerArg, RegularizerArg, register
from normkit.layers.masks import full_rank_mask


@register("RMSNormalization")
class RMSNormalization(AffineNormalization):
    """Root mean square normalization layer (Zhang & Sennrich, 2019).

    Every sample is divided by the root mean square of its values over the `axis` dims (no mean is
    subtracted), then scaled by `gamma` (and shifted by `beta` when `center=True`):

        nu2 = mean(x^2 over axis),   y = x / sqrt(nu2 + epsilon) * gamma (+ beta)

    The elements of one sample that agree on every axis not in `axis` share one nu2. gamma and beta have
    the shape of the `axis` dims (in ascending axis order). With the default arguments the numbers are those
    of Keras 3's `keras.layers.RMSNormalization(axis, epsilon)` (whose weight is called `scale` there), and
    `from_config` takes that layer's config. Statistics of 16-bit inputs are computed in float32.

    Args:
        axis: an int or a list/tuple of ints, the axes to normalize over, e.g. -1 (features). No duplicates.
        epsilon: added to the mean of squares inside the square root.
        scale: if True, multiply by the learned `gamma`.
        center: if True, add the learned offset `beta` (not in the paper; off by default).
        beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer, beta_constraint,
        gamma_constraint: as for any Keras weight.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: a tensor of any rank >= 2 whose `axis` dims are defined.
        mask: optional; a Keras sequence mask (the input's rank minus one, e.g. from `Masking` or
            `Embedding(mask_zero=True)`, applied along the last axis) or a mask of the input's rank
            (broadcastable): masked positions are left out of nu2, their outputs are still computed, and
            a sample with nothing unmasked over `axis` gives `beta` (0 without center). The mask propagates.

    Example:

    >>> import numpy as np, keras, normkit
    >>> layer = normkit.RMSNormalization()
    >>> y = keras.ops.convert_to_numpy(layer(np.array([[3.0, 4.0]], dtype="float32")))
    >>> [[round(float(v), 4) for v in row] for row in y]  # rms = sqrt((9 + 16) / 2)
    [[0.8485, 1.1314]]
    """

    def __init__(
        self,
        axis: v.AxisArg = -1,
        epsilon: float = 1e-6,
        scale: bool = True,
        center: bool = False,
        gamma_initializer: InitializerArg = "ones",
        beta_initializer: InitializerArg = "zeros",
        gamma_regularizer: RegularizerArg = None,
        beta_regularizer: RegularizerArg = None,
        gamma_constraint: ConstraintArg = None,
        beta_constraint: ConstraintArg = None,
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
        self._reduction: Reduction | None = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self._reduction = rms_reduction_for(tuple(input_shape), self.axis)
        self._build_affine(tuple(int(input_shape[a]) for a in self._reduction.param_axes))

    def call(self, inputs: Any, mask: Any = None) -> Any:
        inputs = v.layer_input(inputs, self.compute_dtype, self.name)
        return normalize_with_batch_statistics(
            inputs,
            self._reduction,
            self.gamma,
            self.beta,
            self.epsilon,
            mask=full_rank_mask(mask, inputs),
            centered=False,
        )


def rms_reduction_for(shape: tuple[Any, ...], axis: v.AxisArg) -> Reduction:
    """Checks `axis` against an input of `shape`; the reduction over those axes, gamma/beta spanning them."""
    if len(shape) < 2:
        raise ValueError(
            "RMSNormalization needs an input of rank >= 2 (a batch axis and at least one more). "
            f"Received an input of shape {tuple(shape)}"
        )
    v.check_axis_arg(axis, allow_list=True)
    axes = v.canonical_axes(axis, len(shape))
    for a in axes:
        if shape[a] is None:
            raise ValueError(
                f"Axis {a} of the input must have a defined dimension (gamma spans it), but the input has shape "
                f"{tuple(shape)}. Received: axis={axis!r}"
            )
    return layer_reduction(len(shape), axes)

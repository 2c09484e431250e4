"""BatchNormalization with tf.keras 2 semantics (Ioffe & Szegedy 2015)."""

from __future__ import annotations

from typing import Any

from keras import initializers, ops

from normkit.core import validation as v
from normkit.core.functional import batch_reduction_for
from normkit.core.normalize import normalize_with_batch_statistics, normalize_with_given_statistics
from normkit.layers.base import AffineNormalization, ConstraintArg, InitializerArg, RegularizerArg, register


@register("BatchNormalization")
class BatchNormalization(AffineNormalization):
    """Batch normalization layer (Ioffe & Szegedy, 2015) with tf.keras 2 semantics.

    In training (`training=True` and the layer trainable) every feature on `axis` is normalized by the mean
    and biased variance of the batch (over every other axis), and the moving statistics are updated after
    the forward pass: `m <- m - (m - batch_value) * (1 - momentum)`. In inference (`training=False`, the
    default of predict/evaluate) or when `layer.trainable = False`, the moving statistics are used and
    nothing is updated.

    Args:
        axis: an int or a list of ints, the feature axes (1 for channels-first, -1 for channels-last).
        momentum: momentum of the moving averages, in [0, 1].
        epsilon, center, scale, beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer,
        beta_constraint, gamma_constraint: as for GroupNormalization.
        moving_mean_initializer, moving_variance_initializer: initializers of the moving statistics.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).

    Example:

    >>> import numpy as np, keras, normkit
    >>> layer = normkit.BatchNormalization(momentum=0.9)
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 4)).astype("float32")
    >>> y = layer(x, training=True)
    >>> [round(float(m), 2) for m in keras.ops.convert_to_numpy(layer.moving_mean)][:1] != [0.0]
    True
    """

    def __init__(
        self,
        axis: v.AxisArg = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: InitializerArg = "zeros",
        gamma_initializer: InitializerArg = "ones",
        moving_mean_initializer: InitializerArg = "zeros",
        moving_variance_initializer: InitializerArg = "ones",
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
        self.momentum = v.check_fraction("momentum", momentum)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self._reduction = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self._reduction = batch_reduction_for(tuple(input_shape), self.axis)
        param_shape = tuple(int(input_shape[a]) for a in self._reduction.param_axes)
        self._build_affine(param_shape)
        self.moving_mean = self.add_weight(
            name="moving_mean",
            shape=param_shape,
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance",
            shape=param_shape,
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if not (training and self.trainable):
            return normalize_with_given_statistics(
                inputs,
                self._reduction,
                self.moving_mean,
                self.moving_variance,
                self.gamma,
                self.beta,
                self.epsilon,
            )
        outputs, stats = normalize_with_batch_statistics(
            inputs, self._reduction, self.gamma, self.beta, self.epsilon, return_statistics=True
        )
        self._update_moving_statistics(inputs, stats.mean, stats.variance)
        return outputs

    def _update_moving_statistics(self, inputs: Any, mean: Any, variance: Any) -> None:
        shape = tuple(self.moving_mean.shape)
        mean = ops.reshape(mean, shape)
        variance = ops.reshape(variance, shape)
        # An empty batch has NaN statistics and must leave the moving ones alone. A static batch size decides
        # in Python; a dynamic one (a traced graph) selects, so that it still compiles.
        batch_size = inputs.shape[0]
        if batch_size == 0:
            return
        decay = 1.0 - self.momentum
        for moving, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            current = ops.convert_to_tensor(moving)
            updated = current - (current - ops.cast(value, current.dtype)) * decay
            if batch_size is None:
                updated = ops.where(ops.shape(inputs)[0] > 0, updated, current)
            moving.assign(updated)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
            }
        )
        return config

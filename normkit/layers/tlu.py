"""TLU, the thresholded linear unit, with TensorFlow Addons semantics (Singh & Krishnan 2019)."""

from __future__ import annotations

from typing import Any

import keras
from keras import constraints, initializers, ops, regularizers

from normkit.core import validation as v
from normkit.core.statistics import statistics_dtype
from normkit.layers.base import ConstraintArg, InitializerArg, RegularizerArg, _get, register


@register("TLU", "Addons>TLU")
class TLU(keras.layers.Layer):
    """Thresholded linear unit (Singh & Krishnan, 2019), a drop-in for `tfa.layers.TLU`.

    A ReLU with a learned threshold, the activation filter response normalization is paired with:

        y = max(x, tau)                    (affine=False)
        y = max(x, alpha * x + tau)        (affine=True)

    tau (and alpha) have the shape of one sample, `input_shape[1:]`, as in Addons: one threshold per
    element, not per channel. Where both sides are equal the gradient goes to x (TensorFlow's `maximum`),
    on every backend.

    Args:
        affine: if True, the TLU-affine form with the learned slope `alpha`.
        tau_initializer, tau_regularizer, tau_constraint: for the threshold `tau`.
        alpha_initializer, alpha_regularizer, alpha_constraint: for `alpha` (used only when affine=True).
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).

    Input shape: any rank >= 2, every non-batch dim defined. Output shape: the input's. Masks propagate.

    Example:

    >>> import numpy as np, keras, normkit
    >>> layer = normkit.TLU()
    >>> keras.ops.convert_to_numpy(layer(np.array([[-1.0, 2.0]], dtype="float32"))).tolist()
    [[0.0, 2.0]]

    Serialized as `normkit>TLU`; `Addons>TLU` configs load too.
    """

    def __init__(
        self,
        affine: bool = False,
        tau_initializer: InitializerArg = "zeros",
        tau_regularizer: RegularizerArg = None,
        tau_constraint: ConstraintArg = None,
        alpha_initializer: InitializerArg = "zeros",
        alpha_regularizer: RegularizerArg = None,
        alpha_constraint: ConstraintArg = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.affine = v.check_bool("affine", affine)
        self.tau_initializer = _get("tau_initializer", tau_initializer, initializers)
        self.tau_regularizer = _get("tau_regularizer", tau_regularizer, regularizers)
        self.tau_constraint = _get("tau_constraint", tau_constraint, constraints)
        self.alpha_initializer = _get("alpha_initializer", alpha_initializer, initializers)
        self.alpha_regularizer = _get("alpha_regularizer", alpha_regularizer, regularizers)
        self.alpha_constraint = _get("alpha_constraint", alpha_constraint, constraints)
        self.supports_masking = True
        self.tau = None
        self.alpha = None

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        shape = tuple(input_shape)
        if len(shape) < 2 or any(d is None for d in shape[1:]):
            raise ValueError(
                "TLU has one threshold per element of a sample, so it needs an input of rank >= 2 with every "
                f"non-batch dimension defined. Received an input of shape {shape}"
            )
        param_shape = tuple(int(d) for d in shape[1:])
        self.tau = self.add_weight(
            name="tau",
            shape=param_shape,
            initializer=self.tau_initializer,
            regularizer=self.tau_regularizer,
            constraint=self.tau_constraint,
            trainable=True,
            autocast=False,
        )
        if self.affine:
            self.alpha = self.add_weight(
                name="alpha",
                shape=param_shape,
                initializer=self.alpha_initializer,
                regularizer=self.alpha_regularizer,
                constraint=self.alpha_constraint,
                trainable=True,
                autocast=False,
            )

    def call(self, inputs: Any) -> Any:
        inputs = v.layer_input(inputs, self.compute_dtype, self.name)
        # float32 for 16-bit inputs (tau and alpha are float32), then back to the input's dtype.
        dtype = statistics_dtype(inputs.dtype)
        x = ops.cast(inputs, dtype)
        threshold = ops.cast(self.tau, dtype)
        if self.alpha is not None:
            threshold = threshold + ops.cast(self.alpha, dtype) * x
        # `where`, not `maximum`: at a tie JAX's and torch's maximum split the gradient in halves.
        return ops.cast(ops.where(x >= threshold, x, threshold), inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return mask

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "affine": self.affine,
                "tau_initializer": initializers.serialize(self.tau_initializer),
                "tau_regularizer": regularizers.serialize(self.tau_regularizer),
                "tau_constraint": constraints.serialize(self.tau_constraint),
            }
        )
        if self.affine:
            # Addons wrote the alpha keys only for the affine form.
            config.update(
                {
                    "alpha_initializer": initializers.serialize(self.alpha_initializer),
                    "alpha_regularizer": regularizers.serialize(self.alpha_regularizer),
                    "alpha_constraint": constraints.serialize(self.alpha_constraint),
                }
            )
        return config

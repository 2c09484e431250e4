"""FilterResponseNormalization with TensorFlow Addons semantics (Singh & Krishnan 2019)."""

from __future__ import annotations

import numbers
from typing import Any

import keras
from keras import constraints, initializers, ops, regularizers

from normkit.core import validation as v
from normkit.core.normalize import Reduction, normalize_with_batch_statistics
from normkit.layers.base import ConstraintArg, InitializerArg, RegularizerArg, _get, register
from normkit.layers.masks import full_rank_mask

# The learned epsilon starts here (Addons' constant initializer); the fixed `epsilon` is added to its |value|.
LEARNED_EPSILON_INITIAL_VALUE = 1e-4
_SPATIAL_AXES = [1, 2]


@register("FilterResponseNormalization", "Addons>FilterResponseNormalization")
class FilterResponseNormalization(keras.layers.Layer):
    """Filter response normalization layer (Singh & Krishnan, 2019), a drop-in for
    `tfa.layers.FilterResponseNormalization`.

    Every (sample, channel) of an NHWC input is divided by the root of the mean of squares of its filter
    response over the spatial axes (no mean is subtracted), then scaled and shifted per channel:

        nu2 = mean(x^2 over H, W),   y = gamma * x / sqrt(nu2 + |epsilon|) + beta

    where with `learned_epsilon=True` the epsilon is `epsilon + |eps_learned|`, a trainable (1,)-shaped
    weight named `learned_epsilon` that starts at 1e-4. The paper pairs it with `normkit.TLU` as the
    activation. As in Addons, inputs must be 4-D channels-last and `axis` the spatial axes [1, 2]; gamma
    and beta have shape (1, 1, 1, C). Statistics of 16-bit inputs are computed in float32.

    Args:
        epsilon: a float >= 0 added to nu2 inside the square root.
        axis: the axes reduced over; must be [1, 2] (H and W), as Addons required.
        beta_initializer, gamma_initializer, beta_regularizer, gamma_regularizer, beta_constraint,
        gamma_constraint: as for any Keras weight.
        learned_epsilon: if True, add the trainable epsilon described above.
        learned_epsilon_constraint: a constraint on the learned epsilon (e.g. "non_neg").
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`).

    Call arguments:
        inputs: a 4-D tensor (N, H, W, C) with H, W and C defined.
        mask: optional; a mask of shape (N, H, W) (applied to every channel) or of the input's rank
            (broadcastable): masked positions are left out of nu2, their outputs are still computed, and a
            (sample, channel) with nothing unmasked gives `beta`. The mask propagates.

    Example:

    >>> import numpy as np, keras, normkit
    >>> layer = normkit.FilterResponseNormalization(learned_epsilon=True)
    >>> y = layer(np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32"))
    >>> tuple(layer.gamma.shape), tuple(layer.eps_learned.shape)
    ((1, 1, 1, 3), (1,))

    Serialized as `normkit>FilterResponseNormalization`; `Addons>FilterResponseNormalization` configs load too.
    """

    def __init__(
        self,
        epsilon: float = 1e-6,
        axis: list[int] | tuple[int, ...] = (1, 2),
        beta_initializer: InitializerArg = "zeros",
        gamma_initializer: InitializerArg = "ones",
        beta_regularizer: RegularizerArg = None,
        gamma_regularizer: RegularizerArg = None,
        beta_constraint: ConstraintArg = None,
        gamma_constraint: ConstraintArg = None,
        learned_epsilon: bool = False,
        learned_epsilon_constraint: ConstraintArg = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.epsilon = v.check_epsilon(epsilon)
        self.axis = check_frn_axis(axis)
        self.beta_initializer = _get("beta_initializer", beta_initializer, initializers)
        self.gamma_initializer = _get("gamma_initializer", gamma_initializer, initializers)
        self.beta_regularizer = _get("beta_regularizer", beta_regularizer, regularizers)
        self.gamma_regularizer = _get("gamma_regularizer", gamma_regularizer, regularizers)
        self.beta_constraint = _get("beta_constraint", beta_constraint, constraints)
        self.gamma_constraint = _get("gamma_constraint", gamma_constraint, constraints)
        self.learned_epsilon = v.check_bool("learned_epsilon", learned_epsilon)
        self.learned_epsilon_constraint = _get("learned_epsilon_constraint", learned_epsilon_constraint, constraints)
        self.supports_masking = True
        self.gamma = None
        self.beta = None
        self.eps_learned = None
        if self.learned_epsilon:
            # Created here, before gamma and beta, as Addons did: its users read it before the first call, and
            # weight files list the weights in this order.
            self.eps_learned = self.add_weight(
                name="learned_epsilon",
                shape=(1,),
                initializer=initializers.Constant(LEARNED_EPSILON_INITIAL_VALUE),
                constraint=self.learned_epsilon_constraint,
                trainable=True,
                autocast=False,
            )
        self._reduction = Reduction(4, (3,), (1, 2))

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        shape = tuple(input_shape)
        if len(shape) != 4:
            raise ValueError(
                "FilterResponseNormalization takes 4-D channels-last inputs (N, H, W, C), as Addons did. "
                f"Received an input of shape {shape}"
            )
        for a, what in ((1, "H"), (2, "W"), (3, "C")):
            if shape[a] is None:
                raise ValueError(
                    f"FilterResponseNormalization needs a defined {what} dimension (axis {a}). "
                    f"Received an input of shape {shape}"
                )
        param_shape = (1, 1, 1, int(shape[3]))
        self.gamma = self.add_weight(
            name="gamma",
            shape=param_shape,
            initializer=self.gamma_initializer,
            regularizer=self.gamma_regularizer,
            constraint=self.gamma_constraint,
            trainable=True,
            autocast=False,
        )
        self.beta = self.add_weight(
            name="beta",
            shape=param_shape,
            initializer=self.beta_initializer,
            regularizer=self.beta_regularizer,
            constraint=self.beta_constraint,
            trainable=True,
            autocast=False,
        )

    def call(self, inputs: Any, mask: Any = None) -> Any:
        inputs = v.layer_input(inputs, self.compute_dtype, self.name)
        epsilon: Any = self.epsilon
        if self.eps_learned is not None:
            # A scalar tensor: the core lets its gradient through to the variable.
            epsilon = ops.reshape(ops.abs(ops.convert_to_tensor(self.eps_learned)), ()) + self.epsilon
        return normalize_with_batch_statistics(
            inputs,
            self._reduction,
            self.gamma,
            self.beta,
            epsilon,
            mask=full_rank_mask(mask, inputs),
            centered=False,
        )

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return mask

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "axis": list(self.axis),
                "epsilon": self.epsilon,
                "learned_epsilon": self.learned_epsilon,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint),
                "learned_epsilon_constraint": constraints.serialize(self.learned_epsilon_constraint),
            }
        )
        return config


def check_frn_axis(axis: object) -> list[int]:
    """FilterResponseNormalization's `axis`: the spatial axes [1, 2] of an NHWC input, as a list or tuple."""

    def is_int(a: object) -> bool:
        return isinstance(a, numbers.Integral) and not isinstance(a, bool)

    if not isinstance(axis, (list, tuple)) or not all(is_int(a) for a in axis):
        raise TypeError(
            "`axis` must be a list of ints, the spatial axes to normalize over ([1, 2]). "
            f"Received: axis={axis!r} (of type {type(axis).__name__})"
        )
    if [int(a) for a in axis] != _SPATIAL_AXES:
        raise ValueError(
            "FilterResponseNormalization normalizes each channel over the spatial axes of an NHWC input, so "
            f"`axis` must be [1, 2] (as in TensorFlow Addons). Received: axis={axis!r}"
        )
    return list(_SPATIAL_AXES)

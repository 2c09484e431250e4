"""What every normkit layer shares: the common arguments, the gamma/beta weights and their config."""

from __future__ import annotations

from typing import Any

import keras
from keras import constraints, initializers, regularizers

from normkit.core import validation as v

InitializerArg = str | keras.initializers.Initializer | dict[str, Any]
RegularizerArg = str | keras.regularizers.Regularizer | dict[str, Any] | None
ConstraintArg = str | keras.constraints.Constraint | dict[str, Any] | None


def register(name: str, *aliases: str) -> Any:
    """Registers a layer as `normkit>name`, and under each alias (e.g. `Addons>GroupNormalization`).

    The primary name is what new files are written with; aliases are only looked up when loading.
    """

    def decorate(cls: type) -> type:
        cls = keras.saving.register_keras_serializable(package="normkit", name=name)(cls)
        custom_objects = keras.saving.get_custom_objects()
        for alias in aliases:
            custom_objects[alias] = cls
        return cls

    return decorate


class AffineNormalization(keras.layers.Layer):
    """Base of normkit's layers: validates the common arguments and owns `gamma` and `beta`.

    Subclasses decide the parameter shape in `build` (then call `_build_affine`) and compute in `call`.
    Inputs are cast to the compute dtype as Keras layers do; gamma and beta stay float32 (no autocast),
    and statistics of 16-bit data are computed in float32 by the core.
    """

    def __init__(
        self,
        *,
        axis: Any,
        allow_axis_list: bool,
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
        super().__init__(**kwargs)
        self.axis = self._store_axis(v.check_axis_arg(axis, allow_list=allow_axis_list), axis)
        # The argument as given: configs are written with it (a layer may canonicalize `self.axis` at build).
        self._axis_argument = self._store_axis(self.axis, axis)
        self.epsilon = v.check_epsilon(epsilon)
        self.center = v.check_bool("center", center)
        self.scale = v.check_bool("scale", scale)
        self.beta_initializer = _get("beta_initializer", beta_initializer, initializers)
        self.gamma_initializer = _get("gamma_initializer", gamma_initializer, initializers)
        self.beta_regularizer = _get("beta_regularizer", beta_regularizer, regularizers)
        self.gamma_regularizer = _get("gamma_regularizer", gamma_regularizer, regularizers)
        self.beta_constraint = _get("beta_constraint", beta_constraint, constraints)
        self.gamma_constraint = _get("gamma_constraint", gamma_constraint, constraints)
        self.supports_masking = True
        self.gamma = None
        self.beta = None

    @staticmethod
    def _store_axis(checked: int | tuple[int, ...], given: Any) -> Any:
        # Keep a list as a list so that get_config gives back what the user (or an old config) gave.
        return list(checked) if isinstance(given, (list, tuple)) else checked

    def _build_affine(self, param_shape: tuple[int, ...]) -> None:
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma",
                shape=param_shape,
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta",
                shape=param_shape,
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """The input's shape, after the checks `build` makes (a bad axis, `groups` or rank is a ValueError).

        Creates no weights: as in Keras 3, only `build` (or the first call) does. tf.keras 2's base layer built
        a layer here; code that relied on that (TensorFlow Addons' examples) should call `build(shape)`.
        """
        input_shape = tuple(input_shape)
        self._reduction_for(input_shape)
        return input_shape

    def _reduction_for(self, input_shape: tuple[int | None, ...]) -> Any:
        """Validates an input shape against the layer's arguments and returns the core's `Reduction`."""
        raise NotImplementedError

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return mask

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "axis": self._axis_argument,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer),
                "beta_regularizer": regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
                "beta_constraint": constraints.serialize(self.beta_constraint),
                "gamma_constraint": constraints.serialize(self.gamma_constraint),
            }
        )
        return config


def _get(name: str, value: Any, module: Any) -> Any:
    """keras.{initializers,regularizers,constraints}.get with an error that names the argument."""
    try:
        return module.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"Could not interpret `{name}`. Received: {name}={value!r} ({error})") from None

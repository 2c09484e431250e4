"""BatchNormalization with tf.keras 2 semantics (Ioffe & Szegedy 2015), renorm, ghost batches and masks."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import initializers, ops

from normkit.core import validation as v
from normkit.core.functional import batch_reduction_for
from normkit.core.normalize import (
    Reduction,
    normalize,
    normalize_with_batch_statistics,
    normalize_with_given_statistics,
    param_broadcast_shape,
)
from normkit.core.statistics import compute_statistics, reduction_count
from normkit.layers.base import AffineNormalization, ConstraintArg, InitializerArg, RegularizerArg, _get, register
from normkit.layers.masks import full_rank_mask

Tensor = Any

_CLIPPING_KEYS = ("rmin", "rmax", "dmax")
# The compute dtypes tf.keras 2's fused kernel accepted (`_raise_if_fused_cannot_be_used`): float64 was not.
_FUSED_COMPUTE_DTYPES = ("float16", "bfloat16", "float32")
# The single feature axes tf.keras 2 accepted with fused=True before the rank was known.
_FUSED_AXIS_VALUES = (-4, -3, -1, 1, 3, 4)
# (rank, feature axis) layouts the fused kernel ran on: NCHW, NHWC, NCDHW, NDHWC.
_FUSED_LAYOUTS = {4: (1, 3), 5: (1, 4)}


@register("BatchNormalization")
class BatchNormalization(AffineNormalization):
    """Batch normalization layer (Ioffe & Szegedy, 2015) with tf.keras 2 semantics.

    **Training** (`training=True` and the layer trainable): every feature on `axis` is normalized by the mean
    and the biased variance of the batch (over every other axis, the batch axis included),
    `y = gamma * (x - mean) / sqrt(var + epsilon) + beta`, and the moving statistics are updated once per call,
    after the forward pass: `m <- m - (m - batch_value) * (1 - momentum)`. A batch of size 0 updates nothing.
    **Inference** (`training=False` or None, the default of `predict`/`evaluate`), **or `layer.trainable =
    False`** (given as a constructor argument or set later): the moving statistics are used and nothing is
    updated. Setting `trainable=False` switching to inference is tf.keras 2's behaviour for fine-tuning.

    **Bessel correction of the moving variance.** tf.keras 2 updated `moving_variance` with the unbiased
    batch variance `var * N / (N - 1)` wherever it ran its fused kernel, and with the biased one elsewhere;
    normkit reproduces this with one rule, decided at build time from static facts only: the correction is
    applied when `fused` is None or True, the input has rank 4 with feature axis 1 or 3 or rank 5 with feature
    axis 1 or 4 (one axis), `renorm`, `virtual_batch_size`, `adjustment` and `synchronized` are all off, and
    the compute dtype is float32, float16 or bfloat16 (tf.keras 2's fused kernel took the 16-bit compute
    dtypes of the mixed policies too; float64 it did not). `N` is the number of elements each feature's
    statistics came from in this batch (unmasked ones when a mask is given), with `N - 1` floored at 1.
    `fused=False` always gives the biased update; `fused=True` where the kernel could not apply is a
    ValueError (at construction, or at build for the rank and axis). Which backend kernel runs is not
    affected: `fused` only selects these semantics. The forward pass always uses the biased variance, and
    epsilon is used as given (tf.keras 2's kernel raised it to 1.001e-5).

    **`layer.fused`** is resolved as tf.keras 2 resolved it, and is the Bessel rule above: `fused=None`
    becomes False at construction where the kernel could not run (`renorm`, `virtual_batch_size`,
    `adjustment`, `synchronized`, an axis other than one of -4, -3, -1, 1, 3, 4, or a compute dtype other than
    float16/bfloat16/float32), else stays None until build, which sets True for a rank-4 input with axis 1 or
    3 or a rank-5 one with axis 1 or 4, and False otherwise. `get_config` writes `fused` as it was given
    (tf.keras 2 wrote no `fused` key), so a config does not depend on the input the layer was built on.

    **Batch renormalization** (`renorm=True`, Ioffe 2017) adds three non-trainable weights after
    `moving_mean` and `moving_variance`: `moving_stddev`, `renorm_mean` and `renorm_stddev` (initialized to
    `sqrt(moving_variance_initializer)`, `moving_mean_initializer` and `sqrt(moving_variance_initializer)`).
    In training, with `s_B = sqrt(var_B + epsilon)` and `s = max(renorm_stddev, sqrt(epsilon))` (values before
    this step), `r = s_B / s` and `d = (mean_B - renorm_mean) / s` are clipped to `[rmin, rmax]` and
    `[-dmax, dmax]` for the keys given in `renorm_clipping`, carry no gradient, and the output is
    `gamma * (r * xhat + d) + beta`. Then `renorm_mean`/`renorm_stddev` move toward `mean_B`/`s_B` with
    `renorm_momentum`, `moving_mean`/`moving_stddev` toward `mean_B`/`s_B` with `momentum`, and
    `moving_variance = max(moving_stddev**2 - epsilon, 0)`. Inference is the plain formula.

    **Ghost batches** (`virtual_batch_size=V`, Hoffer et al. 2017), training only: the batch `[B, ...]` is
    viewed as `[V, B/V, ...]` (tf.keras 2's reshape), so ghost batch `j` holds samples `j, j + n, j + 2n, ...`
    (`n = B/V`, strided, not contiguous) and is normalized with its own statistics. The moving statistics move
    once per call toward the average over ghost batches of their means and biased variances (with `renorm`,
    r and d come from those averages). A batch size not divisible by V is a ValueError when the batch size is
    static (always on JAX and PyTorch); when it is only known at run time (a TensorFlow graph with an unknown
    batch dim) TensorFlow's reshape fails at run time instead. Note that `model.fit`'s last batch is partial
    unless the dataset size is a multiple of the batch size: as with tf.keras 2, that batch then fails. Give
    whole batches (`drop_remainder=True`) or a batch size that divides the dataset. Inference ignores V (any
    batch size works).

    **Masks**: `call(inputs, training, mask)` with a mask of rank `rank - 1` (a Keras sequence mask, broadcast
    along the last axis) or of the input's rank (broadcastable): masked positions are left out of the batch
    statistics and of the updates; their outputs are still computed. A feature without any unmasked position
    (a fully masked batch, or one fully masked feature) has xhat = 0, so its output is `beta`, and its moving
    statistics are not updated; nothing is NaN. The mask's values weigh the positions (0 leaves one out).
    Keras 3's BatchNormalization differs there: it reads the mask as booleans, divides by the count plus
    1e-7, so a fully masked feature gets mean 0 and variance 0 (output `x / sqrt(epsilon) * gamma + beta`)
    and its moving statistics move toward 0.

    Args:
        axis: an int or a list of ints, the feature axes (1 after a channels-first Conv2D, -1 channels-last).
            Serialized as given.
        momentum: momentum of the moving averages, in [0, 1].
        epsilon: small float added to the variance (inside the square root).
        center: if True, add the learned offset `beta`; if False there is no `beta` weight.
        scale: if True, multiply by the learned `gamma`; if False there is no `gamma` weight.
        beta_initializer, gamma_initializer: initializers of `beta` and `gamma`.
        moving_mean_initializer, moving_variance_initializer: initializers of the moving statistics.
        beta_regularizer, gamma_regularizer: optional regularizers of `beta` and `gamma`.
        beta_constraint, gamma_constraint: optional constraints of `beta` and `gamma`.
        renorm: whether to use batch renormalization (see above).
        renorm_clipping: None or a dict with keys among `"rmin"`, `"rmax"`, `"dmax"` (scalars); missing keys do
            not clip. Every bound is finite; `rmin >= 0`, `rmax > 0` and `rmax >= rmin` (r is a ratio of
            standard deviations), `dmax >= 0`. Has no effect without `renorm` (tf.keras 2
            ignored it too) but is kept in the config.
        renorm_momentum: momentum of `renorm_mean`/`renorm_stddev`, in [0, 1].
        fused: None, True or False: which moving-variance semantics tf.keras 2 would have had (see above).
        trainable: if False the layer is frozen and runs in inference mode.
        virtual_batch_size: None or a positive int, the size of each ghost batch (see above). Cannot be used
            with `adjustment`, nor with a feature axis 0.
        adjustment: None or a callable taking the input's shape (a tuple; dims unknown when tracing are
            scalar tensors) and returning `(scale, bias)` broadcastable against the input (anything else is an
            error naming `adjustment`, raised when training calls it), applied to the
            normalized values before gamma and beta in training only:
            `y = gamma * (scale * (r * xhat + d) + bias) + beta`. Not serializable: left out of `get_config`
            with a warning, as tf.keras 2 did.
        synchronized: accepted and serialized. In tf.keras 2 it made the statistics global across
            `tf.distribute` replicas; here, without a distribution it changes nothing except that, as in tf.keras
            2, it turns the fused kernel (and so the Bessel correction) off. The core already takes a
            `cross_replica` hook (`normkit.core.statistics.compute_statistics`); the layer does not pass one yet.
        **kwargs: base layer arguments (`name`, `dtype`).

    Under the mixed policies ("mixed_float16", "mixed_bfloat16") the weights and moving statistics stay
    float32, statistics are computed in float32 and the output is in the compute dtype. Integer and bool
    inputs are cast to the compute dtype (as Keras' layers cast them), complex ones are a TypeError; a
    non-batch dim of size 0 is a ValueError (at build, and at call for a dim that was unknown at build): the
    statistics would have no values. A mask must broadcast against the input.

    Configs written by tf.keras 2 load: `axis` as a list (`[3]`), no `fused` key, renorm keys and
    `virtual_batch_size` only when set. tf.keras 2 also wrote, for a built layer with `virtual_batch_size`, each
    axis shifted by one (its internal `[V, B/V, ...]` view), which it could not load itself. The rule used here:
    a config without a `fused` key (normkit always writes one), with `virtual_batch_size` set and an `axis` list
    whose entries are all >= 2 is such a shifted config (a feature axis of a ghost-batched layer is >= 1, so a
    shifted one is >= 2), and each entry is brought back by one. The one ambiguous case, a tf.keras 2 config
    of a layer never built, given a list `axis` of entries all >= 2, is read as shifted too.

    Example:

    >>> import numpy as np, keras, normkit
    >>> layer = normkit.BatchNormalization(momentum=0.9)
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 4)).astype("float32")
    >>> y = layer(x, training=True)  # normalized with the batch's statistics
    >>> moving_mean = keras.ops.convert_to_numpy(layer.moving_mean)
    >>> bool(np.allclose(moving_mean, 0.1 * x.mean(axis=0), atol=1e-5))
    True
    >>> y = layer(x)  # inference: normalized with the moving statistics
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
        renorm: bool = False,
        renorm_clipping: dict[str, float] | None = None,
        renorm_momentum: float = 0.99,
        fused: bool | None = None,
        trainable: bool = True,
        virtual_batch_size: int | None = None,
        adjustment: Callable[[tuple[Any, ...]], tuple[Tensor, Tensor]] | None = None,
        synchronized: bool = False,
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
            trainable=v.check_bool("trainable", trainable),
            **kwargs,
        )
        self.momentum = v.check_fraction("momentum", momentum)
        self.moving_mean_initializer = _get("moving_mean_initializer", moving_mean_initializer, initializers)
        self.moving_variance_initializer = _get(
            "moving_variance_initializer", moving_variance_initializer, initializers
        )
        self.renorm = v.check_bool("renorm", renorm)
        self.renorm_clipping = _check_renorm_clipping(renorm_clipping)
        self.renorm_momentum = v.check_fraction("renorm_momentum", renorm_momentum)
        if fused is not None:
            v.check_bool("fused", fused)
        self.fused = fused
        self.virtual_batch_size = _check_virtual_batch_size(virtual_batch_size)
        if adjustment is not None and not callable(adjustment):
            raise TypeError(
                f"`adjustment` must be None or a callable (shape -> (scale, bias)). Received: adjustment={adjustment!r}"
            )
        self.adjustment = adjustment
        self.synchronized = v.check_bool("synchronized", synchronized)
        if self.virtual_batch_size is not None and self.adjustment is not None:
            raise ValueError(
                "`adjustment` cannot be used with `virtual_batch_size` (ghost batches). Received: "
                f"virtual_batch_size={self.virtual_batch_size}, adjustment={self.adjustment!r}"
            )
        given_axes = self.axis if isinstance(self.axis, list) else [self.axis]
        if self.virtual_batch_size is not None and 0 in given_axes:
            raise ValueError(
                "With `virtual_batch_size`, axis 0 is the batch axis and cannot be a feature axis. Received: "
                f"axis={self.axis!r}, virtual_batch_size={self.virtual_batch_size}"
            )
        # `fused` is resolved as tf.keras 2 resolved it: True is checked now (rank and axis at build); None
        # becomes False now where the kernel could not run, and True or False at build from the rank and axis.
        # get_config writes the argument as given, so that a config does not depend on the input it was built on.
        self._fused_argument = fused
        if self.fused:
            self._raise_if_fused_cannot_be_used()
        elif self.fused is None and self._fused_cannot_be_used_reasons():
            self.fused = False
        self._reduction: Reduction | None = None
        self._param_shape: tuple[int, ...] | None = None
        self._bessel = False
        self.moving_stddev = None
        self.renorm_mean = None
        self.renorm_stddev = None

    def _raise_if_fused_cannot_be_used(self) -> None:
        """fused=True where tf.keras 2's fused kernel could not run is an error (rank and axis: at build)."""
        reasons = self._fused_cannot_be_used_reasons()
        if reasons:
            raise ValueError(
                "`fused=True` asks for tf.keras 2's fused batch normalization, which cannot be used with "
                + ", ".join(reasons)
                + ". Use fused=None (the default) or fused=False. Received: fused=True"
            )

    def _fused_cannot_be_used_reasons(self) -> list[str]:
        """Why tf.keras 2's fused kernel could not run, from the constructor arguments alone (empty if it could)."""
        reasons = []
        if self.renorm:
            reasons.append("renorm=True")
        if self.virtual_batch_size is not None:
            reasons.append(f"virtual_batch_size={self.virtual_batch_size}")
        if self.adjustment is not None:
            reasons.append("an `adjustment`")
        if self.synchronized:
            reasons.append("synchronized=True")
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        if len(axes) != 1 or axes[0] not in _FUSED_AXIS_VALUES:
            reasons.append(f"axis={self.axis!r} (it needs one axis: 1 or 3 for rank 4, 1 or 4 for rank 5)")
        if self.compute_dtype not in _FUSED_COMPUTE_DTYPES:
            reasons.append(f"compute dtype {self.compute_dtype} (it needs float16, bfloat16 or float32)")
        return reasons

    def _reduction_for(self, input_shape: tuple[int | None, ...]) -> Reduction:
        return batch_reduction_for(tuple(input_shape), self._axis_argument)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        input_shape = tuple(input_shape)
        self._reduction = self._reduction_for(input_shape)
        rank = len(input_shape)
        axes = self._reduction.param_axes
        if self.virtual_batch_size is not None and 0 in axes:
            raise ValueError(
                "With `virtual_batch_size`, axis 0 is the batch axis and cannot be a feature axis. Received: "
                f"axis={self.axis!r} (axis 0 for an input of rank {rank}), virtual_batch_size={self.virtual_batch_size}"
            )
        fused_layout = len(axes) == 1 and axes[0] in _FUSED_LAYOUTS.get(rank, ())
        if self.fused and not fused_layout:
            raise ValueError(
                "`fused=True` needs an input of rank 4 with axis 1 or 3, or of rank 5 with axis 1 or 4 (tf.keras "
                f"2's fused kernel). Received: fused=True, axis={self.axis!r}, input shape {input_shape}"
            )
        if self.fused is None:
            self.fused = fused_layout
        # The Bessel rule (see the class docstring) is the resolved `fused`: only static facts (the constructor's
        # arguments at construction, the rank and axis here), so every backend and every call agree.
        self._bessel = bool(self.fused)
        param_shape = tuple(int(input_shape[a]) for a in axes)
        self._param_shape = param_shape
        self.input_spec = keras.layers.InputSpec(ndim=rank, axes={a: int(input_shape[a]) for a in axes})
        self._build_affine(param_shape)
        self.moving_mean = self._add_moving("moving_mean", self.moving_mean_initializer)
        self.moving_variance = self._add_moving("moving_variance", self.moving_variance_initializer)
        if self.renorm:
            # Created after the four usual weights, in tf.keras 2's order, so that weight lists line up.
            stddev_initializer = _SqrtInitializer(self.moving_variance_initializer)
            self.moving_stddev = self._add_moving("moving_stddev", stddev_initializer)
            self.renorm_mean = self._add_moving("renorm_mean", self.moving_mean_initializer)
            self.renorm_stddev = self._add_moving("renorm_stddev", stddev_initializer)

    def _add_moving(self, name: str, initializer: Any) -> Any:
        return self.add_weight(
            name=name,
            shape=self._param_shape,
            initializer=initializer,
            trainable=False,
            autocast=False,
        )

    # ------------------------------------------------------------------------------------------------ call

    def call(self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None) -> Tensor:
        inputs = v.layer_input(inputs, self.compute_dtype, self.name)
        reduction = self._reduction
        if not (training and self.trainable):
            # Inference ignores virtual_batch_size, adjustment and renorm: any batch size works.
            return normalize_with_given_statistics(
                inputs, reduction, self.moving_mean, self.moving_variance, self.gamma, self.beta, self.epsilon
            )
        mask = full_rank_mask(mask, inputs)
        if self.virtual_batch_size is None and not self.renorm and self.adjustment is None:
            # The common case goes through the core's one entry point (a backend fast path may take it).
            outputs, stats = normalize_with_batch_statistics(
                inputs, reduction, self.gamma, self.beta, self.epsilon, mask=mask, return_statistics=True
            )
            batch_mean, batch_variance = stats.mean, stats.variance
            count = None
            if self._bessel and mask is None:
                count = _static_count(inputs, reduction.reduction_axes)  # a Python int: no ops per call
            if count is None and (self._bessel or mask is not None):
                count = reduction_count(inputs, reduction.reduction_axes, mask=mask)
        else:
            outputs, batch_mean, batch_variance, count = self._train_general(inputs, mask)
        self._update(inputs, batch_mean, batch_variance, count, has_mask=mask is not None)
        return outputs

    def _train_general(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Training with ghost batches, renorm and/or adjustment: the core's two halves (`compute_statistics`
        and `normalize`) with one composed scale and offset."""
        reduction = self._reduction
        x, axes, bshape = inputs, reduction.reduction_axes, param_broadcast_shape(inputs.shape, reduction)
        if self.virtual_batch_size is not None:
            x, mask = self._ghost_view(inputs, mask)
            # In the [V, n, ...] view: reduce over the V samples of each ghost batch (axis 0) and the other
            # non-feature axes; axis 1 (which ghost batch) is kept.
            axes = (0, *(a + 1 for a in reduction.reduction_axes if a != 0))
            bshape = [1, *bshape]
        stats = compute_statistics(x, axes, mask=mask)
        batch_mean, batch_variance = stats.moments_of_x()
        count = None if mask is None else stats.count
        if self.virtual_batch_size is not None:
            # One update per call, toward the averages over ghost batches (tf.keras 2), not a sequence of them;
            # with a mask, over the ghost batches that hold a value of the feature.
            if mask is None:
                batch_mean = ops.mean(batch_mean, axis=1, keepdims=True)
                batch_variance = ops.mean(batch_variance, axis=1, keepdims=True)
            else:
                present = ops.cast(stats.count > 0, batch_mean.dtype)
                ghosts = ops.maximum(ops.sum(present, axis=1, keepdims=True), 1.0)
                batch_mean = ops.sum(batch_mean * present, axis=1, keepdims=True) / ghosts
                batch_variance = ops.sum(batch_variance * present, axis=1, keepdims=True) / ghosts
                count = ops.sum(count, axis=1, keepdims=True)

        dtype = batch_mean.dtype
        scale = ops.ones((), dtype) if self.gamma is None else ops.reshape(ops.cast(self.gamma, dtype), bshape)
        offset = ops.zeros((), dtype) if self.beta is None else ops.reshape(ops.cast(self.beta, dtype), bshape)
        # y = gamma * (a_s * (r * xhat + d) + a_b) + beta, composed into one scale and offset (tf.keras 2's order).
        inner_scale, inner_offset = ops.ones((), dtype), ops.zeros((), dtype)
        if self.renorm:
            r, d = self._renorm_correction(batch_mean, batch_variance)
            inner_scale, inner_offset = ops.reshape(r, bshape), ops.reshape(d, bshape)
        if self.adjustment is not None:
            adj_scale, adj_bias = v.check_adjustment_result(self.adjustment(_input_shape(inputs)), inputs.shape)
            adj_scale, adj_bias = ops.cast(adj_scale, dtype), ops.cast(adj_bias, dtype)
            inner_scale, inner_offset = adj_scale * inner_scale, adj_scale * inner_offset + adj_bias
        y = normalize(
            x,
            stats.mean,
            stats.variance,
            scale * inner_scale,
            scale * inner_offset + offset,
            self.epsilon,
            shift=stats.shift,
            count=None if mask is None else stats.count,
        )
        if self.virtual_batch_size is not None:
            y = ops.reshape(y, ops.shape(inputs))
        return y, batch_mean, batch_variance, count

    def _ghost_view(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """[B, ...] -> [V, B/V, ...]: ghost batch j holds samples j, j + n, j + 2n, ... (n = B/V)."""
        size = self.virtual_batch_size
        batch = inputs.shape[0]
        if batch is not None and int(batch) % size != 0:
            raise ValueError(
                f"`virtual_batch_size` must divide the batch size. Received: virtual_batch_size={size} and a batch "
                f"of size {int(batch)} (input shape {tuple(inputs.shape)}). Give whole batches (e.g. "
                "drop_remainder=True in a tf.data pipeline, or a batch size that divides the dataset)."
            )

        def view(t: Tensor) -> Tensor:
            rest = [ops.shape(t)[i] if s is None else int(s) for i, s in enumerate(t.shape)][1:]
            return ops.reshape(t, [size, -1, *rest])

        return view(inputs), None if mask is None else view(mask)

    def _renorm_correction(self, batch_mean: Tensor, batch_variance: Tensor) -> tuple[Tensor, Tensor]:
        """r and d of batch renormalization, from the renorm averages before this step; no gradient."""
        shape = self._param_shape
        mean = ops.reshape(batch_mean, shape)
        stddev = ops.sqrt(ops.reshape(batch_variance, shape) + self.epsilon)
        renorm_mean = ops.cast(self.renorm_mean, mean.dtype)
        # max with sqrt(epsilon) avoids a division by zero early in training (tf.keras 2).
        renorm_stddev = ops.maximum(ops.cast(self.renorm_stddev, mean.dtype), math.sqrt(self.epsilon))
        r = stddev / renorm_stddev
        d = (mean - renorm_mean) / renorm_stddev
        clipping = self.renorm_clipping or {}
        if "rmin" in clipping:
            r = ops.maximum(r, clipping["rmin"])
        if "rmax" in clipping:
            r = ops.minimum(r, clipping["rmax"])
        if "dmax" in clipping:
            d = ops.clip(d, -clipping["dmax"], clipping["dmax"])
        return ops.stop_gradient(r), ops.stop_gradient(d)

    def _update(self, inputs: Tensor, mean: Tensor, variance: Tensor, count: Tensor | None, *, has_mask: bool) -> None:
        """Moving averages, once per call, after the forward pass; nothing for an empty batch."""
        batch_size = inputs.shape[0]
        if batch_size == 0:
            return
        shape = self._param_shape
        mean = ops.stop_gradient(ops.reshape(mean, shape))
        variance = ops.stop_gradient(ops.reshape(variance, shape))
        if count is not None and not isinstance(count, int):
            count = ops.reshape(count, shape)
        # Statistics over nothing are NaN: a static batch size decided above; a dynamic one, or a mask that
        # leaves a feature without data, selects the old value (so that the graph still compiles).
        keep: Tensor | None = None
        if has_mask:
            keep = count > 0
        elif batch_size is None:
            keep = ops.shape(inputs)[0] > 0

        def move(variable: Any, value: Tensor, momentum: float) -> Tensor:
            current = ops.convert_to_tensor(variable)
            updated = current - (current - ops.cast(value, current.dtype)) * (1.0 - momentum)
            if keep is not None:
                updated = ops.where(keep, updated, current)
            variable.assign(updated)
            return updated

        if self.renorm:
            stddev = ops.sqrt(variance + self.epsilon)
            move(self.renorm_mean, mean, self.renorm_momentum)
            move(self.renorm_stddev, stddev, self.renorm_momentum)
            move(self.moving_mean, mean, self.momentum)
            new_stddev = move(self.moving_stddev, stddev, self.momentum)
            # The variance inference uses is derived from the stddev average (relu: rounding can go negative).
            derived = ops.maximum(ops.square(new_stddev) - self.epsilon, 0.0)
            if keep is not None:
                derived = ops.where(keep, derived, ops.convert_to_tensor(self.moving_variance))
            self.moving_variance.assign(derived)
            return
        if self._bessel:
            # tf.keras 2's fused kernel averaged the unbiased variance (N - 1 floored at 1).
            if isinstance(count, int):
                variance = variance * (count / max(count - 1, 1))
            else:
                variance = variance * count / ops.maximum(count - 1.0, 1.0)
        move(self.moving_mean, mean, self.momentum)
        move(self.moving_variance, variance, self.momentum)

    # ----------------------------------------------------------------------------------- serialization

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "moving_mean_initializer": initializers.serialize(self.moving_mean_initializer),
                "moving_variance_initializer": initializers.serialize(self.moving_variance_initializer),
                "renorm": self.renorm,
                "renorm_clipping": None if self.renorm_clipping is None else dict(self.renorm_clipping),
                "renorm_momentum": self.renorm_momentum,
                "fused": self._fused_argument,
                "virtual_batch_size": self.virtual_batch_size,
                "synchronized": self.synchronized,
            }
        )
        if self.adjustment is not None:
            warnings.warn(
                f"The `adjustment` function of BatchNormalization layer '{self.name}' cannot be serialized and is "
                "left out of its config: a layer re-created from this config has no adjustment.",
                UserWarning,
                stacklevel=2,
            )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BatchNormalization:
        config = dict(config)
        axis = config.get("axis")
        if (
            "fused" not in config
            and config.get("virtual_batch_size") is not None
            and isinstance(axis, (list, tuple))
            and len(axis) > 0
            and all(isinstance(a, numbers.Integral) and a >= 2 for a in axis)
        ):
            # tf.keras 2 wrote the axes of its [V, B/V, ...] view (each +1) once built: see the class docstring.
            config["axis"] = [int(a) - 1 for a in axis]
        return super().from_config(config)

    def load_own_variables(self, store: Any) -> None:
        """Loads weights, also from tf.keras 2 files whose parameters had broadcast shapes.

        tf.keras 2 gave gamma, beta and the moving statistics the shape (1, ..., C, ...) for a multi-axis `axis`
        or with `virtual_batch_size`; normkit uses the shape of the feature dims. Same values, reshaped.
        """
        variables = self._trainable_variables + self._non_trainable_variables
        adapted = {key: store[key] for key in store.keys()}
        for i, variable in enumerate(variables):
            key = f"{i}"
            if key in adapted:
                value = np.asarray(adapted[key])
                target = tuple(variable.shape)
                if value.shape != target and value.size == int(np.prod(target)):
                    adapted[key] = value.reshape(target)
        super().load_own_variables(adapted)


class _SqrtInitializer(keras.initializers.Initializer):
    """sqrt of another initializer: moving_stddev and renorm_stddev start at sqrt(moving_variance init)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, shape: Any, dtype: Any = None) -> Tensor:
        return ops.sqrt(self.base(shape, dtype=dtype))

    def get_config(self) -> dict[str, Any]:
        return {"base": initializers.serialize(self.base)}


def _check_renorm_clipping(clipping: Any) -> dict[str, float] | None:
    if clipping is None:
        return None
    if not isinstance(clipping, dict):
        raise TypeError(
            "`renorm_clipping` must be None or a dict with keys among 'rmin', 'rmax', 'dmax'. "
            f"Received: renorm_clipping={clipping!r}"
        )
    unknown = sorted(str(k) for k in set(clipping) - set(_CLIPPING_KEYS))
    if unknown:
        raise ValueError(
            f"`renorm_clipping` has unknown keys {unknown}; the supported keys are {list(_CLIPPING_KEYS)}. "
            f"Received: renorm_clipping={clipping!r}"
        )
    checked: dict[str, float] = {}
    for key in _CLIPPING_KEYS:
        if key not in clipping:
            continue
        value = clipping[key]
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or math.isnan(number):
            raise TypeError(
                f"`renorm_clipping['{key}']` must be a number. Received: renorm_clipping={clipping!r}"
            )
        checked[key] = number
    # r is a ratio of standard deviations (> 0) and d a distance in standard deviations: a negative rmax would
    # flip the output's sign, an infinite rmin make it infinite. rmin = 0 clips nothing (tf.keras 2's value for
    # a missing rmin) and stays accepted.
    bounds = {"rmin": ("finite and >= 0", lambda b: b >= 0), "rmax": ("finite and > 0", lambda b: b > 0),
              "dmax": ("finite and >= 0", lambda b: b >= 0)}
    for key, number in checked.items():
        rule, holds = bounds[key]
        if not math.isfinite(number) or not holds(number):
            raise ValueError(
                f"`renorm_clipping['{key}']` must be {rule}. Received: renorm_clipping={clipping!r}"
            )
    if "rmin" in checked and "rmax" in checked and checked["rmax"] < checked["rmin"]:
        raise ValueError(
            f"`renorm_clipping` needs rmax >= rmin. Received: rmin={checked['rmin']}, rmax={checked['rmax']}"
        )
    return checked


def _check_virtual_batch_size(size: Any) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"`virtual_batch_size` must be None or a positive int. Received: virtual_batch_size={size!r}")
    if size <= 0:
        raise ValueError(f"`virtual_batch_size` must be a positive int. Received: virtual_batch_size={size!r}")
    return int(size)


def _input_shape(inputs: Tensor) -> tuple[Any, ...]:
    """The input's shape for `adjustment`: static dims as ints, unknown ones as scalar tensors."""
    return tuple(ops.shape(inputs)[i] if s is None else int(s) for i, s in enumerate(inputs.shape))


def _static_count(inputs: Tensor, axes: tuple[int, ...]) -> int | None:
    """Elements per statistic when every reduced dim is static, else None."""
    count = 1
    for a in axes:
        if inputs.shape[a] is None:
            return None
        count *= int(inputs.shape[a])
    return count

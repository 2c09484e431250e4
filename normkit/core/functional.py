"""The functional API (`normkit.ops`): stateless normalizations over the one core.

Each function validates its arguments against the input's shape, builds the `Reduction` its normalization
means and calls the core. The layers call these same functions.
"""

from __future__ import annotations

from typing import Any

from normkit.core import statistics
from normkit.core import validation as v
from normkit.core.normalize import (
    Reduction,
    batch_reduction,
    group_reduction,
    layer_reduction,
    normalize_with_batch_statistics,
    normalize_with_given_statistics,
)
from normkit.core.statistics import Moments, SufficientStatistics

Tensor = Any


def _as_tensors(*values: Any) -> tuple[Any, ...]:
    """NumPy arrays (and Python scalars/lists) become backend tensors; tensors, symbolic Keras tensors, Keras
    variables and None pass through. The core mixes its arguments with backend results (`x - mean`), which a
    NumPy array on the left of a torch tensor does not support."""
    import keras
    from keras import ops

    return tuple(
        t
        if t is None or ops.is_tensor(t) or keras.backend.is_keras_tensor(t) or isinstance(t, keras.Variable)
        else ops.convert_to_tensor(t)
        for t in values
    )


def group_reduction_for(shape: tuple[Any, ...], groups: int, axis: int) -> Reduction:
    """Validates GroupNormalization's arguments against `shape` and returns its reduction."""
    rank = v.check_rank(shape, 2, "GroupNormalization")
    v.check_no_empty_dims(shape, "GroupNormalization")
    v.check_groups_arg(groups)
    v.check_axis_arg(axis, allow_list=False)
    (channel_axis,) = v.canonical_axes(axis, rank, allow_batch_axis=False)
    channels = shape[channel_axis]
    resolved = v.resolve_groups(groups, None if channels is None else int(channels), axis, shape)
    return group_reduction(rank, channel_axis, resolved)


def layer_reduction_for(shape: tuple[Any, ...], axis: v.AxisArg) -> Reduction:
    rank = v.check_rank(shape, 1, "LayerNormalization")
    v.check_no_empty_dims(shape, "LayerNormalization")
    v.check_axis_arg(axis, allow_list=True)
    axes = v.canonical_axes(axis, rank)  # the axis as given, for the messages (a list stays a list)
    _require_defined(shape, axes, axis)
    return layer_reduction(rank, axes)


def batch_reduction_for(shape: tuple[Any, ...], axis: v.AxisArg) -> Reduction:
    rank = v.check_rank(shape, 1, "BatchNormalization")
    v.check_no_empty_dims(shape, "BatchNormalization")
    v.check_axis_arg(axis, allow_list=True)
    axes = v.canonical_axes(axis, rank)  # the axis as given, for the messages (a list stays a list)
    _require_defined(shape, axes, axis)
    return batch_reduction(rank, axes)


def _check_operands(x: Tensor, reduction: Reduction, **params: Tensor | None) -> None:
    """x must be floating point; each of gamma/beta/mean/variance given must have the parameter shape."""
    v.check_floating("x", x)
    expected = tuple(int(x.shape[a]) for a in reduction.param_axes)
    for name, value in params.items():
        v.check_param_shape(name, value, expected, reduction.param_axes)


def _require_defined(shape: tuple[Any, ...], axes: tuple[int, ...], axis: Any) -> None:
    for a in axes:
        if shape[a] is None:
            raise ValueError(
                f"Axis {a} of the input must have a defined dimension (gamma and beta span it), but the input "
                f"has shape {tuple(shape)}. Received: axis={axis!r}"
            )


def group_norm(
    x: Tensor,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    groups: int = 32,
    axis: int = -1,
    epsilon: float = 1e-3,
) -> Tensor:
    """Group normalization (Wu & He 2018) with TensorFlow Addons semantics.

    The channels on `axis` are split into `groups` contiguous groups; each (sample, group) is normalized by
    its own mean and variance over the group's channels and every other non-batch axis. `groups=-1` means one
    group per channel (instance normalization). gamma and beta have shape (channels,).

    >>> import numpy as np, normkit
    >>> x = np.arange(2 * 4 * 6, dtype="float32").reshape(2, 4, 6)
    >>> y = normkit.ops.group_norm(x, groups=3)
    >>> tuple(y.shape)
    (2, 4, 6)
    """
    x, gamma, beta = _as_tensors(x, gamma, beta)
    reduction = group_reduction_for(tuple(x.shape), groups, axis)
    _check_operands(x, reduction, gamma=gamma, beta=beta)
    return normalize_with_batch_statistics(x, reduction, gamma, beta, v.check_epsilon(epsilon))


def instance_norm(
    x: Tensor,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    axis: int = -1,
    epsilon: float = 1e-3,
) -> Tensor:
    """Instance normalization (Ulyanov et al. 2016): group normalization with one group per channel."""
    return group_norm(x, gamma, beta, groups=-1, axis=axis, epsilon=epsilon)


def layer_norm(
    x: Tensor,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    axis: v.AxisArg = -1,
    epsilon: float = 1e-3,
) -> Tensor:
    """Layer normalization (Ba et al. 2016) with tf.keras 2 semantics: per sample over the `axis` dims.

    gamma and beta have the shape of the normalized dims (in ascending axis order).
    """
    x, gamma, beta = _as_tensors(x, gamma, beta)
    reduction = layer_reduction_for(tuple(x.shape), axis)
    _check_operands(x, reduction, gamma=gamma, beta=beta)
    return normalize_with_batch_statistics(x, reduction, gamma, beta, v.check_epsilon(epsilon))


def batch_norm(
    x: Tensor,
    mean: Tensor | None = None,
    variance: Tensor | None = None,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    axis: v.AxisArg = -1,
    epsilon: float = 1e-3,
) -> Tensor:
    """Batch normalization (Ioffe & Szegedy 2015) over every axis but `axis`.

    With `mean` and `variance` (shaped like the `axis` dims) those statistics are used (inference);
    without them the batch's own statistics are (training). For the batch statistics too, see
    `batch_norm_with_statistics`.
    """
    x, mean, variance, gamma, beta = _as_tensors(x, mean, variance, gamma, beta)
    reduction = batch_reduction_for(tuple(x.shape), axis)
    _check_operands(x, reduction, mean=mean, variance=variance, gamma=gamma, beta=beta)
    epsilon = v.check_epsilon(epsilon)
    if (mean is None) != (variance is None):
        raise ValueError(
            "`mean` and `variance` go together: give both (inference) or neither (batch statistics). "
            f"Received: mean={'None' if mean is None else 'a tensor'}, "
            f"variance={'None' if variance is None else 'a tensor'}"
        )
    if mean is not None:
        return normalize_with_given_statistics(x, reduction, mean, variance, gamma, beta, epsilon)
    return normalize_with_batch_statistics(x, reduction, gamma, beta, epsilon)


def batch_norm_with_statistics(
    x: Tensor,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    axis: v.AxisArg = -1,
    epsilon: float = 1e-3,
    mask: Tensor | None = None,
) -> tuple[Tensor, Moments]:
    """Batch normalization with the batch's statistics; returns (y, Moments(mean, variance)).

    The statistics have the shape of the `axis` dims (float32 for 16-bit inputs), variance biased.
    `mask` (broadcastable to x) leaves positions out of the statistics. They are for bookkeeping (moving
    averages, synchronization) and carry no gradient on any backend, as with tf.keras 2's fused kernel
    (the native kernels of the TensorFlow and torch fast paths have none to give); y's gradient is complete.
    """
    from keras import ops

    x, gamma, beta, mask = _as_tensors(x, gamma, beta, mask)
    reduction = batch_reduction_for(tuple(x.shape), axis)
    _check_operands(x, reduction, gamma=gamma, beta=beta)
    v.check_mask_shape(mask, x.shape)
    y, stats = normalize_with_batch_statistics(
        x, reduction, gamma, beta, v.check_epsilon(epsilon), mask=mask, return_statistics=True
    )
    param_shape = tuple(int(x.shape[a]) for a in reduction.param_axes)
    mean, variance = (ops.stop_gradient(ops.reshape(t, param_shape)) for t in (stats.mean, stats.variance))
    return y, Moments(mean, variance)


def moments(x: Tensor, axes: v.AxisArg, *, mask: Tensor | None = None, keepdims: bool = True) -> Moments:
    """Mean and biased variance of floating-point `x` over `axes` (two-pass, in float32 for 16-bit data).

    `axes`: an int or a list of ints (negative allowed). `mask`, if given, has x's rank and broadcasts against
    it; positions where it is 0 are left out. A reduction over zero elements gives NaN.
    """
    x, mask = _as_tensors(x, mask)
    v.check_floating("x", x)
    axes = v.check_reduction_axes(axes, len(x.shape))
    v.check_mask_shape(mask, x.shape)
    return statistics.moments(x, axes, mask=mask, keepdims=keepdims)


def sufficient_statistics(
    x: Tensor,
    axes: v.AxisArg,
    *,
    shift: Tensor | None = None,
    mask: Tensor | None = None,
    keepdims: bool = True,
) -> SufficientStatistics:
    """Count, sum of (x - shift) and sum of (x - shift)^2 of floating-point `x` over `axes`.

    They add across devices or sub-batches (`moments_from_sufficient_statistics` combines them). A shift near
    the mean keeps the sums small, so the variance survives a large offset; without one it is zero.
    `axes` and `mask` as for `moments`.
    """
    x, shift, mask = _as_tensors(x, shift, mask)
    v.check_floating("x", x)
    axes = v.check_reduction_axes(axes, len(x.shape))
    v.check_mask_shape(mask, x.shape)
    return statistics.sufficient_statistics(x, axes, shift=shift, mask=mask, keepdims=keepdims)

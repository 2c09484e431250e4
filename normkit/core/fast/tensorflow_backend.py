"""TensorFlow fast paths.

- batch normalization in training, channels-last (any rank, seen as [M, 1, 1, C]): `FusedBatchNormV3`,
  the kernel tf.keras 2 used, guarded for large offsets and used only up to a row cap (the
  ("tensorflow", "batch", "channels_last") row of `normkit.core.fast.GUARDS`; `_guarded_fused_batch_norm`).
  Its batch_variance output is Bessel-corrected (n / (n - 1)); it is converted back to the biased variance
  the layer's moving average needs.
- group/instance/layer normalization: a `tf.custom_gradient` kernel on the flat view (channels one
  contiguous axis): single-pass statistics in float32 (for 16-bit data too), so that a mean-1e4 input keeps
  its variance taken on shifted data: group/instance norm take them on x itself where the mean is small
  against the spread and on x shifted by its mean otherwise (`tf.cond`); layer norm always on x shifted by
  its first value per row. The analytic backward saves only x, the per-group shift, mean and 1/std.
  Column sums (over H*W, or the batch) are products with ones (`reduce_sum`): TensorFlow's reduce_sum over
  a middle axis loses digits in proportion to the count.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import tensorflow as tf
from keras import ops

from normkit.core.fast import guard, plain_variant, register
from normkit.core.fast._backward import backward as shared_backward
from normkit.core.fast._plan import FlatPlan, make_flat_plan, make_plan
from normkit.core.normalize import Reduction, batch_reduction, normalize
from normkit.core.statistics import Moments, compute_statistics, reduce_sum

_FLOATS = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


def _stat_dtype(dtype: tf.DType) -> tf.DType:
    return tf.float64 if dtype == tf.float64 else tf.float32


def _dynamic_shape(t: tf.Tensor, static: tuple[int | None, ...]) -> list[Any]:
    dyn = tf.shape(t)
    return [dyn[i] if d is None else d for i, d in enumerate(static)]


def _sum(t: tf.Tensor, axes: tuple[int, ...]) -> tf.Tensor:
    """Sum over `axes`, keepdims: column reductions as a product with ones (see `reduce_sum`)."""
    return reduce_sum(t, axes) if axes else t


class _Groups:
    """Per-group sums of small per-channel tensors, broadcast back to every channel."""

    def __init__(self, fp: FlatPlan) -> None:
        self.axis = fp.group_axis
        self.groups = fp.groups

    def _split(self, t: tf.Tensor) -> tuple[tf.Tensor, list[Any]]:
        shape = _dynamic_shape(t, tuple(t.shape))
        a = self.axis
        c = int(t.shape[a])
        return tf.reshape(t, shape[:a] + [self.groups, c // self.groups] + shape[a + 1 :]), shape

    def sum(self, t: tf.Tensor) -> tf.Tensor:
        if self.axis is None:
            return t
        s, shape = self._split(t)
        total = tf.reduce_sum(s, axis=self.axis + 1, keepdims=True)
        return tf.reshape(tf.broadcast_to(total, tf.shape(s)), shape)


@lru_cache(maxsize=256)
def _kernel(fp: FlatPlan, epsilon: float, has_gamma: bool, has_beta: bool, unshifted_limit: float) -> Any:
    """The custom-gradient kernel; `unshifted_limit` is the "group" row's limit of `GUARDS` (layer norm,
    whose parameters span the reduced axes, always shifts)."""
    plan = fp.plan
    count = float(fp.count)
    red = plan.reduced
    groups = _Groups(fp)
    params_span_reduced_axes = bool(set(plan.param) & set(red))

    @tf.custom_gradient
    def kernel(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) -> Any:
        sdt = _stat_dtype(x.dtype)
        xs = tf.cast(x, sdt)

        def shifted_moments(shift: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            d = xs - shift
            m = groups.sum(_sum(d, red)) / count
            return shift, m, tf.maximum(groups.sum(_sum(tf.square(d), red)) / count - m * m, 0.0)

        if params_span_reduced_axes:
            # Layer normalization: x shifted by its first value of each row (a tf.cond costs more here than
            # the shift pass it would save, measured on [100352, 64] rows).
            begin = [0] * len(plan.shape)
            size = [1 if a in red else -1 for a in range(len(plan.shape))]
            shift, m, variance = shifted_moments(tf.stop_gradient(tf.slice(xs, begin, size)))
            well_conditioned = None
        else:
            # TensorFlow runs each element-wise op as its own pass over x: take the plain sums first, and
            # only where the mean is not small against the spread (E[x^2] - E[x]^2 would lose digits) redo
            # them on x shifted by that mean (tf.cond runs one branch, in graphs and eagerly alike).
            m0 = groups.sum(_sum(xs, red)) / count
            v0 = tf.maximum(groups.sum(_sum(tf.square(xs), red)) / count - m0 * m0, 0.0)
            well_conditioned = tf.reduce_max(m0 * m0 / (v0 + (epsilon + 1e-30))) <= unshifted_limit**2
            shift, m, variance = tf.cond(
                well_conditioned, lambda: (tf.zeros_like(m0), m0, v0), lambda: shifted_moments(tf.stop_gradient(m0))
            )
        rstd = tf.math.rsqrt(variance + epsilon)
        gamma_s = tf.cast(gamma, sdt) if has_gamma else None
        beta_s = tf.cast(beta, sdt) if has_beta else None

        def normalize(centered: tf.Tensor) -> tf.Tensor:
            """y from x - shift in as few passes as possible; m is small against the spread of x - shift on
            either branch, so no term cancels."""
            if params_span_reduced_axes:  # layer norm: gamma varies along the statistic, apply it after
                y = centered * rstd - m * rstd
                y = y * gamma_s if has_gamma else y
                return y + beta_s if has_beta else y
            scale = rstd * gamma_s if has_gamma else rstd  # small: per statistic and channel
            offset = -m * scale
            return centered * scale + (offset + beta_s if has_beta else offset)

        if params_span_reduced_axes:
            y = normalize(xs - shift)
        else:
            y = tf.cond(well_conditioned, lambda: normalize(xs), lambda: normalize(xs - shift))

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            dy = tf.cast(dy, sdt)
            if params_span_reduced_axes:
                xhat = ((xs - shift) - m) * rstd
            else:
                xhat = tf.cond(well_conditioned, lambda: (xs - m) * rstd, lambda: ((xs - shift) - m) * rstd)
            gam = tf.cast(gamma, sdt) if has_gamma else None
            dx, dgamma, dbeta = shared_backward(dy, xhat, rstd, gam, plan, count, _sum, groups.sum)
            dgamma = tf.cast(tf.reshape(dgamma, tf.shape(gamma)), gamma.dtype) if has_gamma else tf.zeros_like(gamma)
            dbeta = tf.cast(tf.reshape(dbeta, tf.shape(beta)), beta.dtype) if has_beta else tf.zeros_like(beta)
            return tf.cast(dx, x.dtype), dgamma, dbeta

        return tf.cast(y, x.dtype), grad

    return kernel


def _custom_gradient_norm(x: tf.Tensor, reduction: Reduction, gamma: Any, beta: Any, epsilon: float) -> Any:
    fp = make_flat_plan(tuple(x.shape), reduction)
    if not fp.count:
        return NotImplemented
    plan = fp.plan
    sdt = _stat_dtype(x.dtype)
    shape = plan.param_shape
    g = tf.reshape(ops.convert_to_tensor(gamma), shape) if gamma is not None else tf.ones(shape, sdt)
    b = tf.reshape(ops.convert_to_tensor(beta), shape) if beta is not None else tf.zeros(shape, sdt)
    view = tf.reshape(x, _flat_shape(x, fp))
    limit = float(guard("tensorflow", "group", "any").limit)
    y = _kernel(fp, float(epsilon), gamma is not None, beta is not None, limit)(view, g, b)
    return tf.reshape(y, tf.shape(x))


@register("tensorflow", "group")
def group_norm(
    x: Any,
    reduction: Reduction,
    gamma: Any,
    beta: Any,
    epsilon: Any,
    *,
    return_statistics: bool = False,
    **variants: Any,
) -> Any:
    """Group/instance normalization: the custom-gradient kernel (row ("tensorflow", "group", "any"))."""
    x = tf.convert_to_tensor(x)
    if not plain_variant(epsilon, **variants) or return_statistics:
        return NotImplemented
    if x.dtype not in _FLOATS or x.shape.rank != reduction.rank:
        return NotImplemented
    return _custom_gradient_norm(x, reduction, gamma, beta, epsilon)


@register("tensorflow", "layer")
def layer_norm(
    x: Any,
    reduction: Reduction,
    gamma: Any,
    beta: Any,
    epsilon: Any,
    *,
    return_statistics: bool = False,
    **variants: Any,
) -> Any:
    """Layer normalization: the custom-gradient kernel (row ("tensorflow", "layer", "any"))."""
    return group_norm(x, reduction, gamma, beta, epsilon, return_statistics=return_statistics, **variants)


@register("tensorflow", "batch")
def batch_norm(
    x: Any,
    reduction: Reduction,
    gamma: Any,
    beta: Any,
    epsilon: Any,
    *,
    return_statistics: bool = False,
    **variants: Any,
) -> Any:
    """Batch normalization in training: FusedBatchNormV3 (row ("tensorflow", "batch", "channels_last"))."""
    x = tf.convert_to_tensor(x)
    if not plain_variant(epsilon, **variants):
        return NotImplemented
    if x.dtype not in _FLOATS or x.shape.rank != reduction.rank:
        return NotImplemented
    if x.shape[0] is not None and x.shape[0] == 0:
        return NotImplemented
    result = _fused_batch_norm(x, reduction, gamma, beta, epsilon)
    if result is NotImplemented or not return_statistics:
        return result if result is NotImplemented else result[0]
    y, mean, variance = result
    keep = [1 if a in reduction.reduction_axes else int(d) for a, d in enumerate(x.shape)]
    return y, Moments(tf.reshape(mean, keep), tf.reshape(variance, keep))


def _flat_shape(x: tf.Tensor, fp: FlatPlan) -> list[Any]:
    dyn = tf.shape(x)
    out: list[Any] = []
    for axes, d in zip(fp.plan.merged, fp.plan.shape, strict=True):
        if d is not None:
            out.append(d)
        else:
            size = 1
            for a in axes:
                size = size * dyn[a]
            out.append(size)
    return out


def _fused_view(x: tf.Tensor, reduction: Reduction) -> tf.Tensor | None:
    plan = make_plan(tuple(x.shape), reduction)
    if plan.kind != "batch_last":
        return None  # the CPU kernel is NHWC only
    return tf.reshape(x, [-1, 1, 1, int(plan.shape[-1])])


def _fused_max_rows() -> int:
    """The row cap of FusedBatchNormV3 (`GUARDS`): its CPU kernel adds each channel's values one after
    another, so its output error grows with the rows (5e-5 at 131072, 4e-4 at 524288, 3e-3 at 2M for
    zero-mean data; at 2M and mean 1e4 its mean is off by ~1e-2 relative and no check of its own statistics
    can tell). Above it the portable path runs (static shapes) or, for a dynamic batch, a two-pass branch of
    the guarded kernel (`_accurate_branch`)."""
    return int(guard("tensorflow", "batch", "channels_last").max_count)


def _fused_batch_norm(x: tf.Tensor, reduction: Reduction, gamma: Any, beta: Any, epsilon: float) -> Any:
    view = _fused_view(x, reduction)
    if view is None or x.dtype == tf.float64:
        return NotImplemented
    if view.shape[0] is not None and view.shape[0] > _fused_max_rows():
        return NotImplemented
    channels = int(view.shape[-1])
    scale = tf.cast(ops.convert_to_tensor(gamma), tf.float32) if gamma is not None else tf.ones([channels])
    offset = tf.cast(ops.convert_to_tensor(beta), tf.float32) if beta is not None else tf.zeros([channels])
    scale, offset = tf.reshape(scale, [-1]), tf.reshape(offset, [-1])
    # 16-bit inputs go through the same guard: under XLA the kernel's variance is the one-pass E[x^2] - E[x]^2
    # (a constant -6e4 batch gave a variance of -69). Their row cap is checked only when static, as before.
    dynamic_rows = view.shape[0] is None and view.dtype == tf.float32
    y, mean, variance = _guarded_fused_batch_norm(float(epsilon), dynamic_rows)(view, scale, offset)
    count = tf.cast(tf.shape(view)[0], tf.float32)
    # batch_variance is the unbiased one; the layer and the spec want the biased variance.
    variance = variance * tf.maximum(count - 1.0, 0.0) / count
    return tf.reshape(y, tf.shape(x)), mean, variance


def _fused_kernel(v: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor, epsilon: float) -> list[tf.Tensor]:
    """FusedBatchNormV3 in training: y, batch mean, unbiased batch variance and its three reserve spaces."""
    empty = tf.constant([], tf.float32)
    return list(
        tf.raw_ops.FusedBatchNormV3(
            x=v, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=epsilon, is_training=True
        )
    )


_ROWS = (0, 1, 2)  # the reduced axes of the [M, 1, 1, C] view
# The same view as [M, C] for the shared analytic backward (which reads only the axes' roles, not sizes).
_ROWS_PLAN = make_plan((None, 1), batch_reduction(2, (1,)))


def _accurate_branch(view: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor, epsilon: float) -> list[tf.Tensor]:
    """What `_fused_kernel`'s callers get, [x used, y, mean, unbiased variance, 3 reserve spaces], from the
    portable core's shifted two-pass statistics (`compute_statistics`, summed by `reduce_sum`: accurate for
    any row count). Its reserve spaces are the mean and biased variance of the x used, for `_accurate_grad`."""
    stats = compute_statistics(view, _ROWS)
    y = normalize(view - stats.shift, stats.mean, stats.variance, scale, offset, epsilon)
    rows = tf.cast(tf.shape(view)[0], view.dtype)
    mean, variance = tf.reshape(stats.mean, [-1]), tf.reshape(stats.variance, [-1])
    shift = tf.reshape(stats.shift, [-1])
    unbiased = variance * rows / tf.maximum(rows - 1.0, 1.0)
    return [tf.constant(True), shift, y, mean + shift, unbiased, mean, variance, tf.zeros([0], view.dtype)]


def _accurate_grad(
    dy: tf.Tensor, used: tf.Tensor, scale: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor, epsilon: float
) -> list[tf.Tensor]:
    """dx, dscale, doffset from the saved x and its statistics, by the shared analytic backward on [M, C]."""
    channels = tf.shape(used)[-1]
    rows = tf.shape(used)[0]
    rstd = tf.math.rsqrt(variance + epsilon)
    xhat = (tf.reshape(used, [rows, channels]) - mean) * rstd
    dx, dscale, doffset = shared_backward(
        tf.reshape(dy, [rows, channels]), xhat, rstd, scale, _ROWS_PLAN, tf.cast(rows, used.dtype), _sum, lambda t: t
    )
    return [tf.reshape(dx, tf.shape(used)), tf.reshape(dscale, [-1]), tf.reshape(doffset, [-1])]


@lru_cache(maxsize=64)
def _guarded_fused_batch_norm(epsilon: float, dynamic_rows: bool = False) -> Any:
    """(y, mean, unbiased variance) of FusedBatchNormV3 on [M, 1, 1, C] float32 or 16-bit data, accurate for any
    offset.

    The kernel runs on x as it is; only where its own statistics say it saw c = |mean| / std above the limit
    (activations rarely do: ReLU outputs have c ~ 1.3; the limit is the `GUARDS` row's) does it run again on x
    shifted by that mean, chosen by a tf.cond. The gradient is FusedBatchNormGradV3 on whichever data the
    kernel normalized (batch normalization is invariant to the shift): written by hand so that tf.cond's own
    gradient, which would make the unshifted branch output zeros the size of x for the other branch's
    intermediates, is never built. The statistics are for the moving averages: no gradient flows back through
    them (as with tf.keras 2's fused layer).

    With `dynamic_rows` (a batch size unknown when tracing) a first tf.cond sends more rows than the cap to
    `_accurate_branch` instead, and the gradient follows the branch taken."""

    max_rows = _fused_max_rows()
    limit = guard("tensorflow", "batch", "channels_last").limit

    @tf.custom_gradient
    def guarded(view: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor) -> Any:
        if dynamic_rows:
            many_rows = tf.shape(view)[0] > max_rows
            shifted, shift, y, mean, variance, *reserve = tf.cond(
                many_rows, lambda: _accurate_branch(view, scale, offset, epsilon), lambda: fused(view, scale, offset)
            )
        else:
            many_rows = None
            shifted, shift, y, mean, variance, *reserve = fused(view, scale, offset)

        def grad(dy: tf.Tensor, *_unused: Any) -> tuple[tf.Tensor, ...]:
            if many_rows is None:
                return tuple(fused_grad(dy))
            return tuple(
                tf.cond(
                    many_rows,
                    lambda: _accurate_grad(dy, view - shift, scale, reserve[0], reserve[1], epsilon),
                    lambda: fused_grad(dy),
                )
            )

        def fused_grad(dy: tf.Tensor) -> list[tf.Tensor]:
            def grad_on(x_used: tf.Tensor, dy_used: tf.Tensor) -> list[tf.Tensor]:
                dx, dscale, doffset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                    y_backprop=dy_used,
                    x=x_used,
                    scale=scale,
                    reserve_space_1=reserve[0],
                    reserve_space_2=reserve[1],
                    reserve_space_3=reserve[2],
                    epsilon=epsilon,
                    is_training=True,
                )
                return [tf.cast(dx, view.dtype), dscale, doffset]

            # The data the kernel normalized: x, or x - shift in float32 (recomputed here rather than kept).
            return tf.cond(
                shifted,
                lambda: grad_on(tf.cast(view, tf.float32) - shift, tf.cast(dy, tf.float32)),
                lambda: grad_on(view, dy),
            )

        return (y, mean, variance), grad

    def fused(view: tf.Tensor, scale: tf.Tensor, offset: tf.Tensor) -> list[tf.Tensor]:
        first = _fused_kernel(view, scale, offset, epsilon)
        mean, variance = first[1], first[2]
        # NaN (NaN data, or a sum of squares overflowing float32) counts as ill-conditioned.
        well_conditioned = tf.reduce_all(tf.abs(mean) * tf.math.rsqrt(variance + epsilon) <= limit)

        def reshift() -> list[tf.Tensor]:
            shift = tf.stop_gradient(mean)
            # In float32: 16-bit data shifted in 16 bits would round the differences.
            second = _fused_kernel(tf.cast(view, tf.float32) - shift, scale, offset, epsilon)
            return [tf.constant(True), shift, tf.cast(second[0], view.dtype), second[1] + shift, *second[2:]]

        return tf.cond(well_conditioned, lambda: [tf.constant(False), tf.zeros_like(mean), *first], reshift)

    return guarded

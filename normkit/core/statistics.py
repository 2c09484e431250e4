"""Statistics: the first half of every normalization.

Everything here is written with `keras.ops`, so it runs on every backend. `compute_statistics` is the one
function every layer's statistics come from (the portable path; a backend fast path may compute the same
numbers its own way). Its variants are arguments: the reduced axes, a mask (weights), whether the mean is
subtracted (`centered=False`: the mean of squares of RMSNormalization and FilterResponseNormalization) and
a `cross_replica` hook that sums across replicas.

Exactness under a large common offset (mean 1e4, std 1 in float32: a float32 mean near 1e4 alone is 0.5-1
ulp, 5e-4 to 1e-3, off, that many standard deviations). The statistics are taken on `x - shift` where the
shift is a value of x itself per statistic (the first position, or the first unmasked one), with no
gradient. For data near their mean, `x - shift` is exact (Sterbenz: a - b is exact for b/2 <= a <= 2b), so
the mean of `x - shift` is a small number held to full precision, and the normalization
`((x - shift) - mean) * rstd` loses nothing to the offset. The shift must be a value read from x, not
computed: a computed shift (sum / count) may be recomputed differently in each place it is used once a
compiler (XLA under jax.jit or tf.function(jit_compile=True)) fuses it into several consumers, e.g. as
sum * (1 / count) in one and sum / count in another, and x - shift is then not the same number in the
statistics and in the normalization (0.01 off at mean 1e4). A value read from x is the same everywhere.

float16 and bfloat16 data are reduced in float32: squares of |x| > 256 overflow float16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from keras import ops

Tensor = Any
# Sums the per-replica tensors of a tuple over replicas (an all-reduce sum); see `compute_statistics`.
CrossReplicaSum = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]


def statistics_dtype(dtype: Any) -> str:
    """The dtype statistics are computed in: float32 for 16-bit floats and float32, float64 stays."""
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    name = name.replace("torch.", "")
    if name == "float64":
        return "float64"
    return "float32"


def to_statistics_dtype(x: Tensor) -> Tensor:
    dtype = statistics_dtype(_dtype_name(x))
    return x if _dtype_name(x) == dtype else ops.cast(x, dtype)


def _dtype_name(x: Tensor) -> str:
    from keras import backend

    return backend.standardize_dtype(x.dtype)


def reduce_sum(x: Tensor, axes: Sequence[int], *, keepdims: bool = True) -> Tensor:
    """Sum of x over `axes`: `ops.sum`, except for TensorFlow column reductions (the last axis kept).

    TensorFlow's CPU reduce_sum over leading or middle axes adds the values one after another: its relative
    error grows with the count (7e-4 over 1M float32 values, 5e-3 over 4M), which ruins a variance (batch norm
    over 2M rows at mean 1e4 was off by 4). A batched matrix product with a row of ones accumulates in blocks
    (3e-8 over 2M) and is as fast or faster there; JAX's and torch's reductions are accurate as they are.
    """
    from keras import backend

    axes = tuple(sorted(int(a) for a in axes))
    rank = len(x.shape)
    # Size-1 axes sum to themselves: leaving them out makes more reductions column reductions.
    work = tuple(a for a in axes if x.shape[a] != 1)
    if (
        backend.backend() != "tensorflow"
        or not work
        or rank - 1 in work
        or work != tuple(range(work[0], work[-1] + 1))
        or _dtype_name(x) not in ("float32", "float64")
    ):
        return ops.sum(x, axis=axes, keepdims=keepdims)
    import tensorflow as tf

    dims = [tf.shape(x)[i] if d is None else int(d) for i, d in enumerate(x.shape)]
    count, rest = 1, 1
    for a in work:
        count = count * dims[a]
    for a in range(work[-1] + 1, rank):
        rest = rest * dims[a]
    # [B, K, M], summed over K; at least one batch dim: TensorFlow's 2-D MatMul kernel adds one after another
    # too (1e-2 over 2M values), its batched kernel does not.
    columns = tf.reshape(x, [*(dims[: work[0]] or [1]), count, rest])
    total = tf.matmul(tf.ones(tf.stack([1, count]), x.dtype), columns)  # [B, 1, M]
    if keepdims:
        return tf.reshape(total, [1 if a in axes else d for a, d in enumerate(dims)])
    return tf.reshape(total, [d for a, d in enumerate(dims) if a not in axes])


class Moments(NamedTuple):
    mean: Tensor
    variance: Tensor


class Statistics(NamedTuple):
    """What `compute_statistics` returns, per statistic (keepdims, in the statistics dtype).

    count: the summed weights (the number of values without a mask); 0 for a statistic over no value.
    shift: a value of x itself (no gradient): the first position with a positive weight, or the first position
        where there is none (0 when not centered, for an empty reduction, or where that value is not finite).
    mean: the mean of x - shift (0 when not centered).
    variance: the biased variance of x (centered), or the mean of squares nu2 = E[x^2] (not centered).

    The moments of x are (shift + mean, variance): `moments_of_x`.
    """

    count: Tensor
    shift: Tensor
    mean: Tensor
    variance: Tensor

    def moments_of_x(self) -> Moments:
        return Moments(self.shift + self.mean, self.variance)


class SufficientStatistics(NamedTuple):
    """Additive statistics: combine replicas or sub-batches by summing every field but `shift`."""

    count: Tensor
    shifted_sum: Tensor
    shifted_sum_of_squares: Tensor
    shift: Tensor


def compute_statistics(
    x: Tensor,
    axes: Sequence[int],
    *,
    mask: Tensor | None = None,
    centered: bool = True,
    cross_replica: CrossReplicaSum | None = None,
) -> Statistics:
    """The statistics of x over `axes` (keepdims), in the statistics dtype.

    centered=True: with s a value of x per statistic (see the module docstring) and w the weights,
        mean = sum(w (x - s)) / count,  variance = sum(w ((x - s) - mean)^2) / count   (two passes).
    centered=False: variance = nu2 = sum(w x^2) / count, no mean subtracted (shift and mean are 0).

    mask: broadcastable to x; 0 leaves a position out, other values weigh it (count is the sum of weights).
    A statistic whose count is 0 gets mean = variance = 0 (never NaN); `normalize` then gives xhat = 0 there.

    cross_replica: None, or a function that takes a tuple of this replica's tensors and returns, in the same
    order and shapes, their sums over all replicas (an all-reduce sum, differentiable: the gradient is then
    that of the global computation). Every replica calls `compute_statistics` with the same axes, and the
    hook is called twice, in this order, with per-statistic tensors of the statistics' (keepdims) shape:
      1. (has_data, has_data * s): has_data is 1 where this replica's count is positive, s its own shift.
         The common shift is S = sum(has_data * s) / max(sum(has_data), 1): every replica computes the same S.
      2. (count, sum(w (x - S)), sum(w (x - S)^2)): each replica's sums relative to the common shift, formed
         from its sums about its own s as sum(w (x - s)) + count u and
         sum(w (x - s)^2) + 2 u sum(w (x - s)) + count u^2, u = s - S (exact for s and S near each other).
    Then mean(x) - S = total sum / total count and variance = total sum of squares / total count -
    (mean(x) - S)^2, so a large common offset keeps its accuracy globally; counts may differ between
    replicas, and a replica may have no value at all (count 0: it contributes zeros). The local
    normalization uses its own s: mean = (mean(x) - S) - u. centered=False calls the hook once with
    (count, sum(w x^2)).
    """
    xs = to_statistics_dtype(x)
    axes = tuple(axes)
    dtype = xs.dtype
    weights = None if mask is None else _weights(mask, xs)
    count = _count(xs, axes, weights)
    zero = ops.zeros_like(count)
    if not centered:
        squares = ops.square(xs) if weights is None else ops.square(xs) * weights
        total = reduce_sum(squares, axes)
        if cross_replica is not None:
            count, total = _exchange(cross_replica, (count, total), 2)
        return Statistics(count, zero, zero, total / _safe(count))
    has_data = count > 0
    shift = _shift(xs, axes, weights)
    # Without data the shift is the first position's value (masked): the normalized values of those positions
    # keep their accuracy; 0 if it is not finite, so that no NaN reaches the statistics.
    shift = ops.where(ops.isfinite(shift), shift, zero)
    centered_x = xs - shift
    if cross_replica is None:
        safe_count = _safe(count)
        weighted = centered_x if weights is None else centered_x * weights
        mean = reduce_sum(weighted, axes) / safe_count
        deviations = ops.square(centered_x - mean)
        if weights is not None:
            deviations = deviations * weights
        return Statistics(count, shift, mean, reduce_sum(deviations, axes) / safe_count)
    # One pass on x - s per replica, then the exchanges of the docstring.
    present = ops.cast(has_data, dtype)
    replicas, shift_sum = _exchange(cross_replica, (present, present * shift), 2)
    common = ops.stop_gradient(shift_sum / ops.maximum(replicas, 1.0))
    offset = ops.stop_gradient(shift - common)  # u = s - S
    weighted = centered_x if weights is None else centered_x * weights
    local_sum = reduce_sum(weighted, axes)
    local_squares = reduce_sum(weighted * centered_x, axes)
    total_count, total_sum, total_squares = _exchange(
        cross_replica,
        (
            count,
            local_sum + count * offset,
            local_squares + 2.0 * offset * local_sum + count * ops.square(offset),
        ),
        3,
    )
    safe_count = _safe(total_count)
    mean_about_common = total_sum / safe_count
    variance = ops.maximum(total_squares / safe_count - ops.square(mean_about_common), 0.0)
    return Statistics(total_count, shift, mean_about_common - offset, variance)


def _exchange(cross_replica: CrossReplicaSum, tensors: tuple[Tensor, ...], size: int) -> tuple[Tensor, ...]:
    result = tuple(cross_replica(tensors))
    if len(result) != size:
        raise ValueError(
            f"`cross_replica` must return one summed tensor per tensor it receives ({size}). Received: "
            f"{len(result)} tensors"
        )
    return result


def _safe(count: Tensor) -> Tensor:
    """count, with 1 where it is 0: sums over no value are 0, so their quotient is 0 (not NaN)."""
    return ops.where(count > 0, count, ops.ones_like(count))


def _count(x: Tensor, axes: tuple[int, ...], weights: Tensor | None) -> Tensor:
    """The count per statistic, broadcast to the statistics' shape (keepdims)."""
    if weights is not None:
        return reduce_sum(weights, axes)
    stats_shape = [1 if i in axes else ops.shape(x)[i] for i in range(len(x.shape))]
    return ops.broadcast_to(_element_count(x, axes, x.dtype), stats_shape)


def _shift(x: Tensor, axes: tuple[int, ...], weights: Tensor | None) -> Tensor:
    """A value of x per statistic (keepdims), no gradient: the first position over `axes`, or with weights
    the first one (in the order of the axes) whose weight is positive."""
    x = ops.stop_gradient(x)
    if any(x.shape[a] == 0 for a in axes):
        return ops.zeros([1 if i in axes else ops.shape(x)[i] for i in range(len(x.shape))], x.dtype)
    # An axis of unknown size may be empty when run (a TensorFlow graph's batch): one zero slice appended
    # makes its first position exist.
    dynamic = [a for a in axes if x.shape[a] is None]
    if weights is None:
        for a in dynamic:
            x = _append_zero_slice(x[_first(x, a)], a)
        return x[tuple(slice(0, 1) if i in axes else slice(None) for i in range(len(x.shape)))]
    positive = ops.cast(weights > 0, "int32")
    for a in dynamic:
        x, positive = _append_zero_slice(x, a), _append_zero_slice(positive, a)
    for a in axes:
        # Along axis a, the first index at which any position (over the axes not yet narrowed) is unmasked.
        others = tuple(b for b in axes if b != a and positive.shape[b] != 1)
        any_positive = ops.max(positive, axis=others, keepdims=True) if others else positive
        index = ops.argmax(any_positive, axis=a, keepdims=True)
        x = _take(x, index, a)
        positive = _take(positive, index, a)
    return x


def _first(t: Tensor, axis: int) -> tuple[slice, ...]:
    return tuple(slice(0, 1) if i == axis else slice(None) for i in range(len(t.shape)))


def _append_zero_slice(t: Tensor, axis: int) -> Tensor:
    zeros = ops.zeros([1 if i == axis else ops.shape(t)[i] for i in range(len(t.shape))], t.dtype)
    return ops.concatenate([t, zeros], axis=axis)


def _take(t: Tensor, index: Tensor, axis: int) -> Tensor:
    """t at `index` (size 1 on `axis`, broadcastable to t elsewhere) along `axis`."""
    shape = [ops.shape(t)[i] if i != axis else 1 for i in range(len(t.shape))]
    return ops.take_along_axis(t, ops.broadcast_to(index, shape), axis=axis)


def moments(
    x: Tensor,
    axes: Sequence[int],
    *,
    mask: Tensor | None = None,
    keepdims: bool = True,
) -> Moments:
    """Mean and biased variance of `x` over `axes` (`compute_statistics`), in the statistics dtype.

    `mask`, if given, broadcasts against `x`; positions where it is 0 are left out of both statistics. A
    statistic over no value is 0 (mean and variance).
    """
    axes = tuple(axes)
    mean, variance = compute_statistics(x, axes, mask=mask).moments_of_x()
    if not keepdims:
        mean = ops.squeeze(mean, axis=axes)
        variance = ops.squeeze(variance, axis=axes)
    return Moments(mean, variance)


def _element_count(x: Tensor, axes: Sequence[int], dtype: str) -> Tensor:
    """The number of elements of `x` over `axes` (dynamic dims included), as a `dtype` scalar."""
    count = ops.ones((), dtype=dtype)
    for a in axes:
        count = count * ops.cast(ops.shape(x)[a], dtype)
    return count


def _weights(mask: Tensor, x: Tensor, dtype: Any = None) -> Tensor:
    """A mask as weights (in `dtype`, default x's), broadcast to x's shape: 0 leaves a position out."""
    return ops.broadcast_to(ops.cast(mask, dtype or x.dtype), ops.shape(x))


def sufficient_statistics(
    x: Tensor,
    axes: Sequence[int],
    *,
    shift: Tensor | None = None,
    mask: Tensor | None = None,
    keepdims: bool = True,
) -> SufficientStatistics:
    """Count, sum of (x - shift) and sum of (x - shift)^2 over `axes`.

    A good shift (any value near the mean, e.g. a moving mean or an earlier pass's mean) keeps the sums
    small so that the variance survives a large offset. Without one the shift is zero.
    """
    x = to_statistics_dtype(x)
    axes = tuple(axes)
    if shift is None:
        shift = ops.zeros((), dtype=x.dtype)
    shift = ops.cast(shift, x.dtype)
    centered = x - shift
    if mask is None:
        count = _element_count(x, axes, x.dtype)
        shifted_sum = reduce_sum(centered, axes, keepdims=keepdims)
        shifted_sum_of_squares = reduce_sum(ops.square(centered), axes, keepdims=keepdims)
    else:
        weights = _weights(mask, x)
        count = reduce_sum(weights, axes, keepdims=keepdims)
        shifted_sum = reduce_sum(centered * weights, axes, keepdims=keepdims)
        shifted_sum_of_squares = reduce_sum(ops.square(centered) * weights, axes, keepdims=keepdims)
    return SufficientStatistics(count, shifted_sum, shifted_sum_of_squares, shift)


def reduction_count(
    x: Tensor,
    axes: Sequence[int],
    *,
    mask: Tensor | None = None,
    keepdims: bool = True,
) -> Tensor:
    """How many elements of `x` each statistic over `axes` is computed from (in the statistics dtype).

    Without a mask this is the product of the reduced dims (dynamic dims included), broadcast to the shape of
    the statistics; with one it is the per-statistic sum of the mask's weights (the number of unmasked
    positions for a 0/1 mask). Batch normalization's Bessel correction and its empty-batch guard need it.
    """
    dtype = statistics_dtype(_dtype_name(x))
    axes = tuple(axes)
    if mask is None:
        count = _element_count(x, axes, dtype)
        stats_shape = [1 if i in axes else ops.shape(x)[i] for i in range(len(x.shape))]
        count = ops.broadcast_to(count, stats_shape)
        return count if keepdims else ops.squeeze(count, axis=axes)
    # The same weights `compute_statistics` uses, so that the count matches the statistics it goes with.
    return reduce_sum(_weights(mask, x, dtype), axes, keepdims=keepdims)


def moments_from_sufficient_statistics(stats: SufficientStatistics) -> Moments:
    """Mean and biased variance from (possibly summed-across-replicas) sufficient statistics."""
    shifted_mean = stats.shifted_sum / stats.count
    variance = ops.maximum(stats.shifted_sum_of_squares / stats.count - ops.square(shifted_mean), 0.0)
    return Moments(shifted_mean + stats.shift, variance)

"""Statistics: the first half of every normalization.

Everything here is written with `keras.ops`, so it runs on every backend. Two forms are offered:

- `moments`: mean and biased variance by two passes (the variance of `x - mean`), which survives a large
  common offset where the one-pass E[x^2] - E[x]^2 loses every digit;
- `sufficient_statistics`: count, shifted sum and shifted sum of squares, which add across devices or
  ghost batches and are combined by `moments_from_sufficient_statistics` (the form synchronized batch
  statistics need).

float16 and bfloat16 data are reduced in float32: squares of |x| > 256 overflow float16.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from keras import ops

Tensor = Any

_LOW_PRECISION = ("float16", "bfloat16")


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


class SufficientStatistics(NamedTuple):
    """Additive statistics: combine replicas or sub-batches by summing every field but `shift`."""

    count: Tensor
    shifted_sum: Tensor
    shifted_sum_of_squares: Tensor
    shift: Tensor


def moments(
    x: Tensor,
    axes: Sequence[int],
    *,
    mask: Tensor | None = None,
    keepdims: bool = True,
) -> Moments:
    """Mean and biased variance of `x` over `axes`, two-pass, in the statistics dtype.

    `mask`, if given, broadcasts against `x`; positions where it is 0 are left out of both statistics.
    A reduction over zero elements gives NaN (callers that must survive it check the count).
    """
    x = to_statistics_dtype(x)
    axes = tuple(axes)
    if mask is None:
        mean = _mean(x, axes)
        variance = _mean(ops.square(x - mean), axes)
    else:
        weights = _weights(mask, x)
        count = reduce_sum(weights, axes)
        mean = reduce_sum(x * weights, axes) / count
        variance = reduce_sum(ops.square(x - mean) * weights, axes) / count
    if not keepdims:
        mean = ops.squeeze(mean, axis=axes)
        variance = ops.squeeze(variance, axis=axes)
    return Moments(mean, variance)


def shift_estimate(x: Tensor, axes: Sequence[int], *, mask: Tensor | None = None) -> Tensor:
    """A constant (no gradient) near the mean of x over `axes` (keepdims, statistics dtype): the one-pass mean.

    Statistics and the normalization itself are computed on `x - shift`, which is exact in floating point
    where it matters (values near their mean: Sterbenz), so that a large common offset (mean 1e4, std 1 in
    float32) costs no digits: a float32 mean near 1e4 alone is 0.5-1 ulp (5e-4 to 1e-3) off, which is that
    many standard deviations.
    """
    x = to_statistics_dtype(x)
    axes = tuple(axes)
    if mask is None:
        return ops.stop_gradient(_mean(x, axes))
    weights = _weights(mask, x)
    count = ops.maximum(reduce_sum(weights, axes), 1.0)
    return ops.stop_gradient(reduce_sum(x * weights, axes) / count)


def centered_moments(x: Tensor, axes: Sequence[int], *, mask: Tensor | None = None) -> tuple[Tensor, Moments, Tensor]:
    """(x - shift, the moments of x - shift, shift), with `shift = shift_estimate(x)`, in the statistics dtype.

    Normalizing the centered values with these moments loses nothing to a large common offset; the moments of
    x itself are (mean + shift, variance).
    """
    shift = shift_estimate(x, axes, mask=mask)
    centered = to_statistics_dtype(x) - shift
    return centered, moments(centered, axes, mask=mask), shift


def _mean(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    """Mean over `axes` (keepdims) as sum / count: Keras 3.15's torch `ops.mean` reduces float64 in float32."""
    return reduce_sum(x, axes) / _element_count(x, axes, x.dtype)


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
    # The same weights `moments` uses, so that the count matches the statistics it goes with.
    return reduce_sum(_weights(mask, x, dtype), axes, keepdims=keepdims)


def moments_from_sufficient_statistics(stats: SufficientStatistics) -> Moments:
    """Mean and biased variance from (possibly summed-across-replicas) sufficient statistics."""
    shifted_mean = stats.shifted_sum / stats.count
    variance = ops.maximum(stats.shifted_sum_of_squares / stats.count - ops.square(shifted_mean), 0.0)
    return Moments(shifted_mean + stats.shift, variance)

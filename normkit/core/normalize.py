"""The one algorithm: y = gamma * (x - mean) / sqrt(variance + epsilon) + beta.

Every normkit normalization is this computation with a different `Reduction` (which axes share one mean
and variance, and whether channels are first split into groups). `normalize_with_batch_statistics` is the
single entry point the functional ops and the layers use; a backend fast path (`normkit.core.fast`) may
take over for a reduction it implements with the same semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keras import ops

from normkit.core import fast
from normkit.core.statistics import Moments, centered_moments, reduce_sum, statistics_dtype

Tensor = Any


@dataclass(frozen=True)
class Reduction:
    """Which elements of an input of rank `rank` share one mean and variance.

    param_axes: the (sorted, non-negative) axes of the input that gamma and beta span.
    reduction_axes: the axes statistics are reduced over, counted in the input's own axes.
    group_axis / groups: if set, the channels on `group_axis` are first split into `groups` contiguous groups
        (a reshape to [..., groups, channels // groups, ...]) and statistics are per group: the group axis
        itself is then kept and the within-group axis is reduced.
    """

    rank: int
    param_axes: tuple[int, ...]
    reduction_axes: tuple[int, ...]
    group_axis: int | None = None
    groups: int | None = None

    @property
    def grouped_reduction_axes(self) -> tuple[int, ...]:
        """Reduction axes counted in the grouped view (rank + 1) when channels are grouped."""
        if self.group_axis is None:
            return self.reduction_axes
        g = self.group_axis
        shifted = [a if a < g else a + 1 for a in self.reduction_axes if a != g]
        return tuple(sorted([*shifted, g + 1]))


def group_reduction(rank: int, channel_axis: int, groups: int) -> Reduction:
    """Per sample, per group of channels: every non-batch axis reduced, channels split into groups."""
    reduced = tuple(a for a in range(1, rank) if a != channel_axis)
    return Reduction(rank, (channel_axis,), reduced, group_axis=channel_axis, groups=groups)


def layer_reduction(rank: int, axes: Sequence[int]) -> Reduction:
    """Per sample over `axes`; gamma and beta span the same axes."""
    return Reduction(rank, tuple(axes), tuple(axes))


def batch_reduction(rank: int, axes: Sequence[int]) -> Reduction:
    """Over every axis but the feature `axes` (the batch included)."""
    return Reduction(rank, tuple(axes), tuple(a for a in range(rank) if a not in axes))


def param_broadcast_shape(x_shape: Sequence[Any], reduction: Reduction) -> list[int]:
    """Shape a (flattened) gamma/beta takes to broadcast against x, or against its grouped view."""
    shape = [1] * reduction.rank
    for a in reduction.param_axes:
        shape[a] = int(x_shape[a])
    if reduction.group_axis is not None:
        g = reduction.group_axis
        shape[g : g + 1] = [reduction.groups, shape[g] // reduction.groups]
    return shape


def _grouped_shape(x: Tensor, reduction: Reduction) -> list[Any]:
    """The shape of the grouped view of x, with dynamic sizes where the static shape has None."""
    static = list(x.shape)
    dynamic = ops.shape(x)
    shape: list[Any] = [dynamic[i] if s is None else int(s) for i, s in enumerate(static)]
    g = reduction.group_axis
    shape[g : g + 1] = [reduction.groups, int(static[g]) // reduction.groups]
    return shape


def normalize(
    x: Tensor,
    mean: Tensor,
    variance: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    epsilon: float,
) -> Tensor:
    """Applies given statistics and affine parameters (all broadcastable to x) in the statistics dtype.

    Written as (x - mean) * scale + beta, not x * scale + (beta - mean * scale): with a large common offset
    the subtraction of two nearby numbers is exact, the other order is not.
    """
    dtype = statistics_dtype(x.dtype)
    xs = ops.cast(x, dtype)
    scale = ops.rsqrt(ops.cast(variance, dtype) + _epsilon_in(epsilon, dtype))
    if gamma is not None:
        scale = scale * ops.cast(gamma, dtype)
    y = (xs - ops.cast(mean, dtype)) * scale
    if beta is not None:
        y = y + ops.cast(beta, dtype)
    return ops.cast(y, x.dtype)


def normalize_with_batch_statistics(
    x: Tensor,
    reduction: Reduction,
    gamma: Tensor | None,
    beta: Tensor | None,
    epsilon: float | Tensor,
    *,
    mask: Tensor | None = None,
    centered: bool = True,
    cross_replica: Any = None,
    return_statistics: bool = False,
) -> Tensor | tuple[Tensor, Moments]:
    """Normalizes x with statistics computed from x itself over `reduction`.

    gamma and beta have the shape of the parameter axes (flattened in the order of `param_axes`).
    With return_statistics the per-reduction mean and variance come back too (keepdims, in the grouped view
    when channels are grouped), in the statistics dtype: batch normalization needs them for its moving
    averages.

    centered=False normalizes by the mean of squares nu2 instead (no mean is subtracted):
    y = x * rsqrt(nu2 + epsilon) * gamma + beta (RMS and filter response normalization); its statistics
    come back as Moments(0, nu2). `epsilon` may be a scalar tensor or variable (a learned epsilon, whose
    gradient then flows). `mask` (broadcastable to x) leaves positions out of every statistic; where a
    statistic has no unmasked position the normalized value is 0 (the output is beta), never NaN.
    """
    if cross_replica is not None:
        raise NotImplementedError("cross_replica statistics are not available in this build of the core")
    if not centered or mask is not None:
        return _normalize_general(x, reduction, gamma, beta, epsilon, mask, centered, return_statistics)
    if mask is None and not return_statistics:
        result = fast.dispatch("normalize_with_batch_statistics", x, reduction, gamma, beta, epsilon)
        if result is not NotImplemented:
            return result
    if mask is None and return_statistics:
        # (y, Moments) with keepdims statistics in the statistics dtype, as the portable path returns.
        result = fast.dispatch("normalize_with_batch_statistics_and_moments", x, reduction, gamma, beta, epsilon)
        if result is not NotImplemented:
            return result

    param_shape = param_broadcast_shape(x.shape, reduction)
    gamma_b = None if gamma is None else ops.reshape(gamma, param_shape)
    beta_b = None if beta is None else ops.reshape(beta, param_shape)
    if reduction.group_axis is None:
        y, stats = _normalize_shifted(x, reduction.reduction_axes, mask, gamma_b, beta_b, epsilon)
    else:
        original_shape = ops.shape(x)
        grouped = ops.reshape(x, _grouped_shape(x, reduction))
        if mask is not None:
            mask = ops.expand_dims(mask, reduction.group_axis + 1)
        y, stats = _normalize_shifted(grouped, reduction.grouped_reduction_axes, mask, gamma_b, beta_b, epsilon)
        y = ops.reshape(y, original_shape)
    return (y, stats) if return_statistics else y


def _normalize_general(
    x: Tensor,
    reduction: Reduction,
    gamma: Tensor | None,
    beta: Tensor | None,
    epsilon: float | Tensor,
    mask: Tensor | None,
    centered: bool,
    return_statistics: bool,
) -> Tensor | tuple[Tensor, Moments]:
    """The portable path for masks and the uncentered (mean of squares) statistics; no fast path takes these."""
    param_shape = param_broadcast_shape(x.shape, reduction)
    gamma_b = None if gamma is None else ops.reshape(gamma, param_shape)
    beta_b = None if beta is None else ops.reshape(beta, param_shape)
    dtype = statistics_dtype(x.dtype)
    xs = ops.cast(x, dtype)
    weights = None if mask is None else ops.broadcast_to(ops.cast(mask, dtype), ops.shape(xs))
    axes = reduction.reduction_axes
    if reduction.group_axis is not None:
        grouped_shape = _grouped_shape(x, reduction)
        xs = ops.reshape(xs, grouped_shape)
        # The mask is broadcast to x first, so that a per-channel mask splits into groups with the channels.
        weights = None if weights is None else ops.reshape(weights, grouped_shape)
        axes = reduction.grouped_reduction_axes
    xhat, stats = _standardize(xs, axes, weights, epsilon, centered)
    if gamma_b is not None:
        xhat = xhat * ops.cast(gamma_b, dtype)
    if beta_b is not None:
        xhat = xhat + ops.cast(beta_b, dtype)
    if reduction.group_axis is not None:
        xhat = ops.reshape(xhat, ops.shape(x))
    y = ops.cast(xhat, x.dtype)
    return (y, stats) if return_statistics else y


def _standardize(
    xs: Tensor, axes: Sequence[int], weights: Tensor | None, epsilon: float | Tensor, centered: bool
) -> tuple[Tensor, Moments]:
    """(x - mean) / sqrt(variance + epsilon), or x / sqrt(nu2 + epsilon), with its statistics (keepdims).

    Counts of zero are replaced by one inside the divisions (the sums there are zero too), and the normalized
    value of such a statistic is set to 0 with a `where` whose other branch stays finite, so that neither the
    output nor any gradient is NaN.
    """
    eps = _epsilon_in(epsilon, xs.dtype)
    if weights is None:
        count = None
        for a in axes:
            size = ops.cast(ops.shape(xs)[a], xs.dtype)
            count = size if count is None else count * size
        safe_count = count

        def total(t: Tensor) -> Tensor:
            return reduce_sum(t, axes)
    else:
        count = reduce_sum(weights, axes)
        safe_count = ops.where(count > 0, count, ops.ones_like(count))

        def total(t: Tensor) -> Tensor:
            return reduce_sum(t * weights, axes)

    if centered:
        # Two passes on x - shift (shift: a constant near the mean), as `_normalize_shifted` explains.
        shift = ops.stop_gradient(total(xs) / safe_count)
        shifted = xs - shift
        mean = total(shifted) / safe_count
        deviation = shifted - mean
        variance = total(ops.square(deviation)) / safe_count
        xhat = deviation * ops.rsqrt(variance + eps)
        stats = Moments(mean + shift, variance)
    else:
        nu2 = total(ops.square(xs)) / safe_count
        xhat = xs * ops.rsqrt(nu2 + eps)
        stats = Moments(ops.zeros_like(nu2), nu2)
    if weights is not None:
        xhat = ops.where(count > 0, xhat, ops.zeros_like(xhat))
    return xhat, stats


def _epsilon_in(epsilon: float | Tensor, dtype: str) -> float | Tensor:
    """A Python epsilon as it is; a tensor or variable epsilon (a learned one) cast to the statistics dtype."""
    if isinstance(epsilon, (int, float)):
        return epsilon
    return ops.cast(epsilon, dtype)


def _normalize_shifted(
    x: Tensor, axes: Sequence[int], mask: Tensor | None, gamma: Tensor | None, beta: Tensor | None, epsilon: float
) -> tuple[Tensor, Moments]:
    """Two-pass statistics and the normalization, both on x - shift (see `centered_moments`): the mean is then
    a small number held to full precision, and (x - shift) - mean loses nothing to a large common offset."""
    centered, stats, shift = centered_moments(x, axes, mask=mask)
    y = ops.cast(normalize(centered, stats.mean, stats.variance, gamma, beta, epsilon), x.dtype)
    return y, Moments(stats.mean + shift, stats.variance)


def normalize_with_given_statistics(
    x: Tensor,
    reduction: Reduction,
    mean: Tensor,
    variance: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    epsilon: float,
) -> Tensor:
    """Normalizes x with given statistics shaped like the parameters (batch normalization's inference)."""
    if reduction.group_axis is not None:
        raise ValueError("normalize_with_given_statistics takes an ungrouped reduction")
    result = fast.dispatch("normalize_with_given_statistics", x, reduction, mean, variance, gamma, beta, epsilon)
    if result is not NotImplemented:
        return result
    shape = param_broadcast_shape(x.shape, reduction)

    def bcast(t: Tensor | None) -> Tensor | None:
        return None if t is None else ops.reshape(t, shape)

    return normalize(x, bcast(mean), bcast(variance), bcast(gamma), bcast(beta), epsilon)

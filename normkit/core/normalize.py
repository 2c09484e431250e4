"""The one algorithm: y = gamma * (x - mean) / sqrt(variance + epsilon) + beta.

Every normkit normalization is this computation with a different `Reduction` (which axes share one mean
and variance, and whether channels are first split into groups). `normalize_with_batch_statistics` is the
single entry point the functional ops and the layers use; `compute_statistics` (normkit.core.statistics)
and `normalize` (here) are its two halves, which batch normalization's ghost-batch, renorm and adjustment
training call directly. A backend fast path (`normkit.core.fast`) may take over for a reduction and variant it
implements with the same semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keras import ops

from normkit.core import fast
from normkit.core.statistics import CrossReplicaSum, Moments, compute_statistics, statistics_dtype

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
    mean: Tensor | None,
    variance: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    epsilon: float | Tensor,
    *,
    shift: Tensor | None = None,
    count: Tensor | None = None,
) -> Tensor:
    """Applies statistics and affine parameters (all broadcastable to x) in the statistics dtype:

        y = ((x - shift) - mean) * rsqrt(variance + epsilon) * gamma + beta

    (a missing shift or mean is 0, a missing gamma 1, a missing beta 0). Where `count` (the statistics'
    count, `compute_statistics`) is 0, xhat is 0: the output is beta. Written as ((x - shift) - mean) * scale
    + beta, not x * scale + (beta - mean * scale): with a large common offset the subtraction of two nearby
    numbers is exact, the other order is not. `epsilon` may be a tensor (a learned epsilon carries its
    gradient). The result has x's dtype.
    """
    dtype = statistics_dtype(x.dtype)
    xs = ops.cast(x, dtype)
    if not isinstance(epsilon, (int, float)):
        epsilon = ops.cast(epsilon, dtype)
    scale = ops.rsqrt(ops.cast(variance, dtype) + epsilon)
    if count is not None:
        scale = ops.where(count > 0, scale, ops.zeros_like(scale))
    if gamma is not None:
        scale = scale * ops.cast(gamma, dtype)
    centered = xs if shift is None else xs - ops.cast(shift, dtype)
    if mean is not None:
        centered = centered - ops.cast(mean, dtype)
    y = centered * scale
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
    cross_replica: CrossReplicaSum | None = None,
    return_statistics: bool = False,
) -> Tensor | tuple[Tensor, Moments]:
    """Normalizes x with statistics computed from x itself over `reduction` (the entry point of every layer).

    centered=True:  y = (x - mean) / sqrt(variance + epsilon) * gamma + beta  (biased variance);
    centered=False: y = x / sqrt(nu2 + epsilon) * gamma + beta,  nu2 = mean of x^2 (RMSNormalization,
    FilterResponseNormalization).

    gamma and beta have the shape of the parameter axes (flattened in the order of `param_axes`), or are
    None. `epsilon` is a Python float or a scalar tensor (a learned epsilon: its gradient flows). `mask`
    (broadcastable to x) leaves the positions where it is 0 out of the statistics, for every reduction; a
    statistic over no value gives xhat = 0 (y = beta) and statistics 0. `cross_replica` sums the statistics
    across replicas: see `compute_statistics` for the protocol. With `return_statistics`, the per-reduction
    Moments(mean, variance) come back too (keepdims, in the grouped view when channels are grouped, in the
    statistics dtype; Moments(0, nu2) when not centered).

    A backend fast path (`normkit.core.fast`, its table `GUARDS`) may compute the result; it declines
    (NotImplemented) every variant it does not implement, and the portable path below runs.
    """
    result = fast.dispatch(
        x,
        reduction,
        gamma,
        beta,
        epsilon,
        mask=mask,
        centered=centered,
        cross_replica=cross_replica,
        return_statistics=return_statistics,
    )
    if result is not NotImplemented:
        return result

    param_shape = param_broadcast_shape(x.shape, reduction)
    gamma_b = None if gamma is None else ops.reshape(gamma, param_shape)
    beta_b = None if beta is None else ops.reshape(beta, param_shape)
    view, axes = x, reduction.reduction_axes
    if reduction.group_axis is not None:
        grouped_shape = _grouped_shape(x, reduction)
        view, axes = ops.reshape(x, grouped_shape), reduction.grouped_reduction_axes
        if mask is not None:
            mask = ops.reshape(ops.broadcast_to(mask, ops.shape(x)), grouped_shape)
    stats = compute_statistics(view, axes, mask=mask, centered=centered, cross_replica=cross_replica)
    y = normalize(
        view, stats.mean if centered else None, stats.variance, gamma_b, beta_b, epsilon,
        shift=stats.shift if centered else None, count=stats.count if mask is not None or cross_replica else None,
    )
    if reduction.group_axis is not None:
        y = ops.reshape(y, ops.shape(x))
    return (y, stats.moments_of_x()) if return_statistics else y


def normalize_with_given_statistics(
    x: Tensor,
    reduction: Reduction,
    mean: Tensor,
    variance: Tensor,
    gamma: Tensor | None,
    beta: Tensor | None,
    epsilon: float,
) -> Tensor:
    """Normalizes x with given statistics shaped like the parameters (batch normalization's inference).

    No fast path: the native inference kernels compute x * a + (beta - mean * a), which loses the digits of a
    large common offset (mean 1e4) that (x - mean) * a + beta keeps.
    """
    if reduction.group_axis is not None:
        raise ValueError("normalize_with_given_statistics takes an ungrouped reduction")
    shape = param_broadcast_shape(x.shape, reduction)

    def bcast(t: Tensor | None) -> Tensor | None:
        return None if t is None else ops.reshape(t, shape)

    return normalize(x, bcast(mean), bcast(variance), bcast(gamma), bcast(beta), epsilon)

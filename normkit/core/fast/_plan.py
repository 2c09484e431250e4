"""Backend-agnostic planning for the fast paths: a reduction seen as a small canonical view of x.

The grouped view of x (channels split into groups) is simplified by merging adjacent axes that play the same
role (reduced or kept, spanned by gamma/beta or not). A GroupNormalization on NHWC becomes [N, H*W, G, C/G]
reduced over (1, 3); on NCHW [N, G, C/G*H*W] reduced over 2; a LayerNormalization over the last axis becomes
[M, D] reduced over 1; a channels-last BatchNormalization becomes [M, C] reduced over 0. The fast paths run
their kernels on that view, and only reshape (no copy) at the ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from normkit.core.normalize import Reduction


@dataclass(frozen=True)
class Plan:
    """The canonical view of one (input shape, reduction) pair.

    shape: the canonical shape (None where a merged dim is not statically known).
    merged: for each canonical axis, the tuple of original input axes it merges (group axis split shows up as
        the same original axis in two consecutive canonical axes).
    reduced: canonical axes statistics are reduced over.
    param: canonical axes gamma/beta span (in order: gamma flattened in param order reshapes to param_shape).
    param_shape: gamma/beta's broadcast shape in the canonical view (1 on axes they do not span).
    kind: a name for the layouts the native kernels handle, "" otherwise.
    """

    shape: tuple[int | None, ...]
    merged: tuple[tuple[int, ...], ...]
    reduced: tuple[int, ...]
    param: tuple[int, ...]
    param_shape: tuple[int, ...]
    kind: str

    @property
    def non_param(self) -> tuple[int, ...]:
        """Axes dgamma/dbeta are summed over."""
        return tuple(a for a in range(len(self.shape)) if a not in self.param)

    @property
    def static_count(self) -> int | None:
        """Number of elements per statistic, or None when some reduced dim is dynamic."""
        count = 1
        for a in self.reduced:
            if self.shape[a] is None:
                return None
            count *= self.shape[a]
        return count


def make_plan(shape: tuple[int | None, ...], reduction: Reduction) -> Plan:
    return _make_plan(tuple(None if d is None else int(d) for d in shape), reduction)


@lru_cache(maxsize=512)
def _make_plan(shape: tuple[int | None, ...], reduction: Reduction) -> Plan:
    rank = len(shape)
    # The grouped view: (size, original axis, reduced?, param?) per axis.
    axes: list[tuple[int | None, int, bool, bool]] = []
    for a in range(rank):
        reduced = a in reduction.reduction_axes
        param = a in reduction.param_axes
        if reduction.group_axis is not None and a == reduction.group_axis:
            groups = int(reduction.groups)
            axes.append((groups, a, False, param))
            axes.append((int(shape[a]) // groups, a, True, param))
        else:
            axes.append((shape[a], a, reduced, param))
    # Merge adjacent axes with the same role (size-1 axes merge with anything).
    merged: list[list[tuple[int | None, int, bool, bool]]] = []
    for item in axes:
        if merged and (merged[-1][0][2:] == item[2:]):
            merged[-1].append(item)
        else:
            merged.append([item])
    out_shape: list[int | None] = []
    for block in merged:
        size: int | None = 1
        for d, *_ in block:
            size = None if (size is None or d is None) else size * d
        out_shape.append(size)
    reduced = tuple(i for i, block in enumerate(merged) if block[0][2])
    param = tuple(i for i, block in enumerate(merged) if block[0][3])
    param_shape = tuple(int(out_shape[i]) if i in param else 1 for i in range(len(merged)))
    plan = Plan(
        shape=tuple(out_shape),
        merged=tuple(tuple(a for _, a, *_ in block) for block in merged),
        reduced=reduced,
        param=param,
        param_shape=param_shape,
        kind="",
    )
    return Plan(**{**plan.__dict__, "kind": _kind(plan, reduction)})


def _kind(plan: Plan, reduction: Reduction) -> str:
    n = len(plan.shape)
    if reduction.group_axis is not None:
        if plan.reduced == (1, 3) and plan.param == (2, 3) and n == 4:
            return "group_last"  # [N, S, G, K]
        if reduction.group_axis == 1 and plan.param == (1, 2) and plan.reduced in ((2, 3), (2,)) and n <= 4:
            return "group_first"  # [N, G, K, S] (or [N, G, K] for a rank-2 input)
        return ""
    if reduction.param_axes == reduction.reduction_axes:
        if plan.reduced == (1,) and plan.param == (1,) and n == 2:
            return "layer_trailing"  # [M, D]
        return ""
    if plan.reduced == (0,) and plan.param == (1,) and n == 2:
        return "batch_last"  # [M, C]
    if plan.reduced == (0, 2) and plan.param == (1,) and n == 3:
        return "batch_first"  # [N, C, S]
    return ""


@dataclass(frozen=True)
class FlatPlan:
    """The element-wise view: `plan` of the reduction with the channel grouping left out.

    Element-wise work runs on this view (channels stay one contiguous axis, so XLA and TF vectorize over
    them); per-group statistics are formed from per-channel partial sums by splitting `group_axis` into
    (groups, channels // groups) on small tensors only.
    """

    plan: Plan
    group_axis: int | None
    groups: int | None

    @property
    def count(self) -> int | None:
        """Elements per statistic (static), or None."""
        n = self.plan.static_count
        if n is None:
            return None
        if self.group_axis is not None:
            n *= int(self.plan.shape[self.group_axis]) // int(self.groups)
        return n


def make_flat_plan(shape: tuple[int | None, ...], reduction: Reduction) -> FlatPlan:
    ungrouped = Reduction(reduction.rank, reduction.param_axes, reduction.reduction_axes)
    plan = make_plan(shape, ungrouped)
    group_axis = None
    if reduction.group_axis is not None:
        group_axis = next(i for i, m in enumerate(plan.merged) if reduction.group_axis in m)
        if plan.merged[group_axis] != (reduction.group_axis,):
            raise AssertionError("the channel axis merged with another axis")
    return FlatPlan(plan, group_axis, reduction.groups if group_axis is not None else None)

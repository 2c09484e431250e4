"""The analytic backward pass shared by the JAX and TensorFlow custom-gradient kernels.

Only arithmetic operators are applied to the arrays here, so one body serves jnp and tf tensors alike; the
backend supplies its keepdims sum over axes and its per-group sum (see `_Groups.sum` in each backend).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from normkit.core.fast._plan import Plan

SumFn = Callable[[Any, tuple[int, ...]], Any]


def backward(
    dy: Any, xhat: Any, rstd: Any, gamma: Any, plan: Plan, count: Any, sum_: SumFn, group_sum: Callable[[Any], Any]
) -> tuple[Any, Any, Any]:
    """(dx, dgamma, dbeta) on the flat view, all in the statistics dtype; dgamma/dbeta not yet reshaped.

    dy, xhat = (x - mean) * rstd and gamma (None when the layer has none) are already in the statistics dtype;
    `count` is the number of elements per statistic. dgamma/dbeta are summed over `plan.non_param` (keepdims).

        dx = rstd * (g - mean_R(g) - xhat * mean_R(g * xhat)),  g = dy * gamma
    """
    red = plan.reduced
    pre = tuple(a for a in red if a in plan.non_param)
    g = dy if gamma is None else dy * gamma
    if pre:
        # gamma is constant along the reduced non-parameter axes (H, W; the batch for batch norm): sum dy and
        # dy * xhat over them once and derive all four reductions from those small partial sums.
        p1 = sum_(dy, pre)
        p2 = sum_(dy * xhat, pre)
        rest_r = tuple(a for a in red if a not in pre)
        rest_p = tuple(a for a in plan.non_param if a not in pre)
        c1 = group_sum(sum_(p1 if gamma is None else p1 * gamma, rest_r)) / count
        c2 = group_sum(sum_(p2 if gamma is None else p2 * gamma, rest_r)) / count
        dbeta, dgamma = sum_(p1, rest_p), sum_(p2, rest_p)
    else:
        c1 = group_sum(sum_(g, red)) / count
        c2 = group_sum(sum_(g * xhat, red)) / count
        dbeta, dgamma = sum_(dy, plan.non_param), sum_(dy * xhat, plan.non_param)
    dx = rstd * (g - c1 - xhat * c2)
    return dx, dgamma, dbeta

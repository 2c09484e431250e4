"""PyTorch fast paths: the native fused kernels where their semantics match normkit's exactly.

- group normalization (Group/Instance layers): `F.group_norm` (biased variance, epsilon inside the square
  root, per (sample, group) over the group's channels and every other non-batch axis: the TFA semantics);
  channels-first inputs go straight in; channels-last (NHWC) inputs are transposed to a contiguous NCHW copy
  (torch's channels-last kernel uses a one-pass E[x^2] - E[x]^2 variance that fails at mean 1e4).
- layer normalization over trailing axes: `F.layer_norm`.
- batch normalization (training) on a channels-last [M, C] or channels-first [N, C, S] view:
  `F.batch_norm`. Its batch statistics are read back through a throw-away running-statistics pair with
  momentum 1 (running_mean = batch mean exactly; running_var = the unbiased variance, converted back to
  the biased one); the layer does its own moving-average update.

All of them save only x (as a view), the per-group mean and 1/std for backward and have fused CPU/CUDA
backward kernels. 16-bit inputs go in as they are with float32 gamma/beta: torch's "mixed type" kernels
accumulate the statistics in float32 and save only the 16-bit x (a float32 copy would double the bytes kept
for backward); other dtypes fall back. Layouts and reductions the kernels do not cover fall back to the
portable path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from keras import ops

from normkit.core.fast import register
from normkit.core.fast._plan import Plan, make_plan
from normkit.core.normalize import Reduction
from normkit.core.statistics import Moments

_LOW = (torch.float16, torch.bfloat16)


def _param(t: Any, dtype: torch.dtype) -> torch.Tensor | None:
    if t is None:
        return None
    t = ops.convert_to_tensor(t)
    t = t.reshape(-1)
    return t if t.dtype == dtype else t.to(dtype)


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype of gamma, beta and the statistics (x itself keeps its dtype)."""
    if x.dtype in _LOW:
        return torch.float32
    if x.dtype in (torch.float32, torch.float64):
        return x.dtype
    return None


def _plan(x: torch.Tensor, reduction: Reduction) -> Plan | None:
    if x.dim() != reduction.rank or x.numel() == 0:
        return None
    plan = make_plan(tuple(x.shape), reduction)
    if plan.kind.startswith("group") and plan.static_count == 1:
        return None  # F.group_norm refuses one value per group (the portable path gives beta)
    return plan if plan.kind else None


def _group_norm(x: torch.Tensor, plan: Plan, reduction: Reduction, w: Any, b: Any, eps: float) -> torch.Tensor:
    """F.group_norm on x shifted by one sample of each (sample, group).

    Group normalization is invariant to a per-group shift, so the result and every gradient are unchanged
    (the shift is detached: its true gradient is zero). torch's float32 mean of values near 1e4 is off by
    ~1e-3 after normalization and a constant input does not give beta exactly; x - shift is exact
    (Sterbenz) for nearby values, which makes both exact. 16-bit inputs are not shifted (the subtraction
    would round in 16 bits; their statistics are accumulated in float32 by torch).
    """
    groups = int(reduction.groups)
    n = x.shape[0]
    shift_it = x.dtype in (torch.float32, torch.float64)
    if plan.kind == "group_first":
        if shift_it:
            xg = x.reshape(n, groups, -1)
            x = (xg - xg[:, :, :1].detach()).reshape(x.shape)
        return F.group_norm(x, groups, w, b, eps)
    # Channels last: [N, S, C] -> a contiguous [N, C, S] copy. torch's channels-last CPU kernel (the no-copy
    # route) computes the variance as E[x^2] - E[x]^2 and fails the mean-1e4 test, and its backward is slower
    # than a transpose plus the contiguous kernel's. The result is handed back as an [N, ..., C] view.
    c = x.shape[-1]
    nsc = x.reshape(n, -1, c)
    if shift_it:
        # The first position's value of each group's first channel, for all of the group's channels.
        first = nsc[:, 0, :].detach().reshape(n, groups, c // groups)[:, :, :1]
        shift = first.expand(n, groups, c // groups).reshape(n, c, 1)
    else:
        shift = None
    nchw = _TransposeShift.apply(nsc, shift)
    y = F.group_norm(nchw, groups, w, b, eps)
    return y.transpose(1, 2).reshape(x.shape)


class _TransposeShift(torch.autograd.Function):
    """[N, S, C] -> contiguous [N, C, S] minus a (detached) [N, C, 1] shift, in one pass over x."""

    @staticmethod
    def forward(ctx: Any, nsc: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        n, s, c = nsc.shape
        out = torch.empty((n, c, s), dtype=nsc.dtype, device=nsc.device)
        if shift is None:
            out.copy_(nsc.transpose(1, 2))
        else:
            torch.sub(nsc.transpose(1, 2), shift, out=out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.transpose(1, 2), None


def _batch_view(x: torch.Tensor, plan: Plan) -> torch.Tensor:
    if plan.kind == "batch_last":  # [M, C] (C: the merged feature axes)
        return x.reshape(-1, plan.shape[-1])
    return x.reshape(plan.shape[0], plan.shape[1], -1)


@register("torch", "normalize_with_batch_statistics")
def normalize_with_batch_statistics(x: Any, reduction: Reduction, gamma: Any, beta: Any, epsilon: float) -> Any:
    x = ops.convert_to_tensor(x)
    dtype = _compute_dtype(x)
    plan = None if dtype is None else _plan(x, reduction)
    if plan is None:
        return NotImplemented
    w, b = _param(gamma, dtype), _param(beta, dtype)
    if plan.kind.startswith("group"):
        y = _group_norm(x, plan, reduction, w, b, epsilon)
    elif plan.kind == "layer_trailing":
        shape = tuple(x.shape[reduction.reduction_axes[0] :])
        xc = x
        if x.dtype in (torch.float32, torch.float64):
            # Shift each row by its first element (exact; layer normalization is invariant to it): torch's
            # float32 row mean near 1e4 is off by ~1e-3 after normalization otherwise.
            rows = xc.reshape(-1, plan.shape[-1])
            xc = (rows - rows[:, :1].detach()).reshape(x.shape)
        y = F.layer_norm(
            xc, shape, None if w is None else w.reshape(shape), None if b is None else b.reshape(shape), epsilon
        )
    else:
        result = _batch_norm_training(x, plan, w, b, epsilon)
        if result is NotImplemented:
            return NotImplemented
        y = result[0].reshape(x.shape)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _batch_norm_training(x: torch.Tensor, plan: Plan, w: Any, b: Any, eps: float) -> Any:
    view = _batch_view(x, plan)
    count = view.numel() // view.shape[1]
    if count < 2:
        return NotImplemented  # torch refuses a single value per channel in training
    channels = view.shape[1]
    sdt = torch.float32 if x.dtype in _LOW else x.dtype
    running_mean = torch.zeros(channels, dtype=sdt, device=x.device)
    running_var = torch.zeros(channels, dtype=sdt, device=x.device)
    y = F.batch_norm(view, running_mean, running_var, w, b, training=True, momentum=1.0, eps=eps)
    variance = running_var * ((count - 1) / count)  # torch stores the unbiased batch variance
    return y, running_mean, variance


@register("torch", "normalize_with_batch_statistics_and_moments")
def normalize_with_batch_statistics_and_moments(
    x: Any, reduction: Reduction, gamma: Any, beta: Any, epsilon: float
) -> Any:
    x = ops.convert_to_tensor(x)
    dtype = _compute_dtype(x)
    plan = None if dtype is None else _plan(x, reduction)
    if plan is None or not plan.kind.startswith("batch"):
        return NotImplemented
    result = _batch_norm_training(x, plan, _param(gamma, dtype), _param(beta, dtype), epsilon)
    if result is NotImplemented:
        return NotImplemented
    y, mean, variance = result
    y = y.reshape(x.shape)
    keep = [1 if a in reduction.reduction_axes else int(d) for a, d in enumerate(x.shape)]
    # The statistics feed the moving averages (no gradient flows back through them on this path).
    return y if y.dtype == x.dtype else y.to(x.dtype), Moments(mean.reshape(keep), variance.reshape(keep))


# No "normalize_with_given_statistics" (inference) fast path: the native inference kernels compute
# x * a + (beta - mean * a), which loses the digits of a large common offset (mean 1e4) that the portable
# (x - mean) * a + beta keeps.

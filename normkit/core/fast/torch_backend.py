"""PyTorch fast paths: the native fused kernels where their semantics match normkit's, guarded for numerics.

One function per family (`group_norm`, `layer_norm`, `batch_norm`); the limits, caps and shift strategies
are the "torch" rows of `normkit.core.fast.GUARDS`.

- group normalization (Group/Instance layers), biased variance with epsilon inside the square root, per
  (sample, group) over the group's channels and every other non-batch axis (the TFA semantics):
  - channels first: `F.group_norm` on x shifted by one sample per group;
  - channels last (NHWC) on the CPU: torch's channels-last kernel on the same memory (no transpose), under a
    guard (below), and an analytic NHWC backward (`_GroupNormChannelsLast`) that saves only the shifted x and
    the per-group statistics. torch's own channels-last backward is 3-6x slower than the forward;
  - channels last elsewhere (CUDA, torch.compile): one transpose+shift pass to NCHW, `F.group_norm`.
- layer normalization over trailing axes: `F.layer_norm`.
- batch normalization (training) on a channels-last [M, C] or channels-first [N, C, S] view: `F.batch_norm`.
  Its batch statistics are read back through a throw-away running-statistics pair with momentum 1
  (running_mean = batch mean exactly; running_var = the unbiased variance, converted back to the biased one);
  the layer does its own moving-average update.

The guard. The native CPU kernels lose digits when the mean is large against the standard deviation: the
channels-last group-norm kernel computes E[x^2] - E[x]^2 (output error ~5e-6 * c^2 for c = |mean| / std), the
layer- and batch-norm kernels round a float32 mean (~6e-7 * c and ~2e-6 * c). So the condition number
c = |mean| * rstd each kernel returns is checked on the host (CPU: no device sync to pay); above a per-kernel
limit the data is shifted by the kernel's own mean (then c ~ 0) and the kernel re-run; one more failure falls
back to the two-pass portable formula. Group norm, whose limit (1) ReLU-like data can exceed, first shifts x
by a cheap estimate of its mean (about 128 values per statistic from evenly spaced slices of x) when that
estimate says the mean is not small; layer and batch norm (limits 8 and 2) run the kernel on x as it is. A
mean-1e4/std-1 input therefore costs one extra shift pass (and one extra kernel run for layer and batch norm),
and the common case runs at the native kernel's speed. Under torch.compile (no host checks in a graph) and on
non-CPU devices group and layer norm shift by one sample unconditionally; batch norm passes x as it is there
(not measured on a GPU: none was available).

All of them save only x (or its shifted copy), the per-group mean and 1/std for backward. 16-bit inputs go
in as they are with float32 gamma/beta on the CPU: torch's "mixed type" kernels accumulate the statistics in
float32 and save only the 16-bit x (a float32 copy would double the bytes kept for backward); where the
kernel's own c says its mean was not exact enough (a large common offset) and off the CPU, the float32 path
runs on x converted to float32 (`_sixteen_bit`). Other dtypes fall back.
Layouts and reductions the kernels do not cover fall back to the portable path.
"""

from __future__ import annotations

from typing import Any

import keras
import torch
import torch.nn.functional as F
from keras import ops

from normkit.core.fast import guard, plain_variant, register
from normkit.core.fast._plan import Plan, make_plan
from normkit.core.normalize import Reduction
from normkit.core.statistics import Moments

_LOW = (torch.float16, torch.bfloat16)


def _as_torch(t: Any) -> torch.Tensor:
    """A torch tensor for t; the common cases (a tensor, a Keras variable) without keras.ops' dispatch, which
    costs ~10 us a call (a tenth of a small layer's whole time)."""
    if isinstance(t, torch.Tensor):
        return t
    if isinstance(t, keras.Variable):
        return t.value  # honours an autocast scope as convert_to_tensor does
    return ops.convert_to_tensor(t)


def _param(t: Any, dtype: torch.dtype) -> torch.Tensor | None:
    if t is None:
        return None
    t = _as_torch(t)
    if t.dim() != 1:
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


# ------------------------------------------------------------------------------------------- the guard

# The limits, caps and sampling sizes are the "torch" rows of `GUARDS`. The limits on c are where each float32
# kernel's output error on centered data stays at its own accuracy: ~5e-6 (group norm, channels last), ~5e-6
# (layer norm), ~1.5e-5 (batch norm over 1e5 rows). The channels-last group-norm and the batch-norm CPU
# kernels also accumulate in float32 over each statistic's values: their output error grows with the count
# (~5e-5 at 131072, ~1.6e-4 at 524288 values, zero-mean data), hence their max_count.


def _guarded(x: torch.Tensor) -> bool:
    """Whether the guarded native-kernel paths apply: float32/float64 on the CPU, outside torch.compile."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()


def _condition(mean: torch.Tensor, rstd: torch.Tensor) -> float:
    """max |mean| * rstd, NaN when any statistic is NaN: from NaN data, or from a kernel's E[x^2] overflowing
    (|x| near 1e19) where the shifted paths stay finite. NaN fails every `<= limit` check."""
    return float((mean.detach().abs() * rstd.detach()).max())


def _sample_step(size: int, values_per_slice: int) -> tuple[int, int]:
    """(step, slices): evenly spaced slices along an axis of `size` that give each statistic about
    the `GUARDS` row's sampled_values when each slice adds `values_per_slice`."""
    sampled = int(guard("torch", "group", "channels_last_cpu").sampled_values)
    slices = min(size, -(-sampled // max(1, values_per_slice)))
    return size // slices, slices


def _sample_rows(nsc: torch.Tensor, values_per_slice: int) -> torch.Tensor:
    """The positions of `_sample_step` along S of [N, S, C] (a view)."""
    step, slices = _sample_step(nsc.shape[1], values_per_slice)
    return nsc[:, 0 : step * slices : step]


def _shift_from_sample(sample: torch.Tensor, groups: int) -> torch.Tensor | None:
    """The [N, G] group means of an [N, R, C] sample (C split into `groups` groups) as the shift, or None when
    the sample says no shift is needed (c <= the row's pre_shift_limit). Sums over R per channel first, then within each
    group on those small sums: torch reduces a strided [N, R, G, K] view over (1, 3) ~8x slower.

    One-pass sums are enough for this decision: where they lose digits (c of 1e3 and more) c still comes out
    large. With s1, s2 the sums of x and x^2 over n values, c > b  <=>  mean^2 > b^2 (E[x^2] - mean^2)  <=>
    s2 - (1 + b^2) / (b^2 n) * s1^2 < 0; a non-finite s2 (x^2 overflowing at |x| near 1e19, or NaN data)
    asks for the shift too. Sums rather than var_mean (~10x slower over strided dims): ~30 us a call.
    """
    sample = sample.detach()
    n, rows, channels = sample.shape
    count = rows * (channels // groups)
    s1 = sample.sum(1).unflatten(-1, (groups, -1)).sum(-1)
    s2 = torch.mul(sample, sample).sum(1).unflatten(-1, (groups, -1)).sum(-1)
    below = float(guard("torch", "group", "channels_last_cpu").pre_shift_limit)
    b2 = below * below
    small = (torch.addcmul(s2, s1, s1, value=-(1 + b2) / (b2 * count)) >= 0).logical_and_(torch.isfinite(s2))
    return None if bool(small.all()) else s1 / count


# ------------------------------------------------------------------------- group norm, channels last


def _per_channel(stat: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, G] per-group values -> [N, 1, C] (each group's value for all of its channels)."""
    n, groups = stat.shape
    return stat.reshape(n, 1, groups, 1).expand(n, 1, groups, channels // groups).reshape(n, 1, channels)


def _channels_last_kernel(xs: torch.Tensor, w: Any, b: Any, groups: int, eps: float) -> tuple[torch.Tensor, ...]:
    """torch's channels-last group-norm kernel on [N, S, C] memory as it lies: (y [N, S, C], mean, rstd)."""
    n, s, c = xs.shape
    nc_s1 = xs.view(n, s, 1, c).permute(0, 3, 1, 2)  # [N, C, S, 1] with channels-last strides
    y, mean, rstd = torch.native_group_norm(nc_s1, w, b, n, c, s, groups, eps)
    return y.permute(0, 2, 3, 1).reshape(n, s, c), mean, rstd


def _channels_last_forward(nsc: torch.Tensor, w: Any, b: Any, groups: int, eps: float) -> tuple[torch.Tensor, ...]:
    """(y, xs, mean, rstd): y from the channels-last kernel on xs = x - shift, with the guard of the module
    docstring; mean is the mean of xs. Falls back to two-pass statistics of xs if the guard fails twice."""
    n, s, c = nsc.shape
    shift = _shift_from_sample(_sample_rows(nsc, c // groups), groups)
    xs = nsc if shift is None else nsc - _per_channel(shift, c)
    row = guard("torch", "group", "channels_last_cpu")
    for _attempt in range(2 if s * (c // groups) <= row.max_count else 0):
        y, mean, rstd = _channels_last_kernel(xs, w, b, groups, eps)
        if _condition(mean, rstd) <= row.limit:
            return y, xs, mean, rstd
        # Shift again by the kernel's own mean: its error is far below the standard deviation.
        xs = xs - _per_channel(mean.to(xs.dtype), c)
    # Two-pass statistics of xs (only reached by a spread so small that c stays large after two shifts).
    grouped = xs.reshape(n, s, groups, c // groups)
    mean = grouped.mean(dim=(1, 3))
    centered = xs - _per_channel(mean, c)
    variance = centered.square().reshape(n, s, groups, c // groups).mean(dim=(1, 3))
    rstd = torch.rsqrt(variance + eps)
    y = centered * _per_channel(rstd, c)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y, xs, mean, rstd


class _GroupNormChannelsLast(torch.autograd.Function):
    """Group normalization of [N, S, C] in place (no transpose), with an analytic backward in the same layout.

    Saves xs (the shifted x), the per-group mean (of xs) and rstd, and gamma. With g = dy * gamma and M the
    elements per group:

        dx = rstd * (g - mean_group(g) - xhat * mean_group(g * xhat))
           = a[n, c] * dy + b[n, g] * xs + d[n, g]

    from two per-(sample, channel) sums over S, sum(dy) and sum(dy * xs), so the backward reads dy and xs
    twice and writes dx once; dgamma and dbeta come from the same sums.
    """

    @staticmethod
    def forward(ctx: Any, nsc: torch.Tensor, w: Any, b: Any, groups: int, eps: float) -> torch.Tensor:
        y, xs, mean, rstd = _channels_last_forward(nsc, w, b, groups, eps)
        ctx.save_for_backward(xs, mean, rstd, w)
        ctx.groups = groups
        ctx.has_beta = b is not None
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        xs, mean, rstd, w = ctx.saved_tensors
        n, s, c = xs.shape
        groups = ctx.groups
        dy = dy.contiguous()
        sum_dy = dy.sum(1)  # [N, C]
        work = torch.mul(dy, xs)  # reused below for dx
        sum_dy_xs = work.sum(1)
        mean_c, rstd_c = _per_channel(mean, c)[:, 0], _per_channel(rstd, c)[:, 0]
        sum_dy_xhat = rstd_c * (sum_dy_xs - mean_c * sum_dy)  # [N, C]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dw = sum_dy_xhat.sum(0) if (w is not None and need_w) else None
        db = sum_dy.sum(0) if (ctx.has_beta and need_b) else None
        dx = None
        if need_x:
            g_sum, g_xhat_sum = (sum_dy, sum_dy_xhat) if w is None else (sum_dy * w, sum_dy_xhat * w)
            count = s * (c // groups)
            mean_g = g_sum.reshape(n, groups, -1).sum(2) / count  # [N, G]
            mean_g_xhat = g_xhat_sum.reshape(n, groups, -1).sum(2) / count
            a = rstd_c if w is None else rstd_c * w
            coef = _per_channel(-rstd * rstd * mean_g_xhat, c)
            const = _per_channel(rstd * (mean * rstd * mean_g_xhat - mean_g), c)
            dx = torch.addcmul(const, dy, a[:, None, :], out=work)
            dx.addcmul_(xs, coef)
        return dx, dw, db, None, None


def _group_norm(x: torch.Tensor, plan: Plan, reduction: Reduction, w: Any, b: Any, eps: float) -> torch.Tensor:
    """Group normalization by torch's kernels: channels last on the CPU through `_GroupNormChannelsLast` (the
    guard); otherwise F.group_norm on x shifted by one sample of each (sample, group).

    Group normalization is invariant to a per-group shift, so the result and every gradient are unchanged
    (the shift is detached: its true gradient is zero). torch's float32 mean of values near 1e4 is off by
    ~1e-3 after normalization and a constant input does not give beta exactly; x - shift is exact
    (Sterbenz) for nearby values, which makes both exact. x is float32 or float64 (16-bit inputs: see
    `_sixteen_bit`).
    """
    groups = int(reduction.groups)
    n = x.shape[0]
    if plan.kind == "group_first":
        xg = x.reshape(n, groups, -1)
        return F.group_norm((xg - xg[:, :, :1].detach()).reshape(x.shape), groups, w, b, eps)
    c = x.shape[-1]
    if _guarded(x):
        y = _GroupNormChannelsLast.apply(x.reshape(n, -1, c), w, b, groups, eps)
        return y.reshape(x.shape)
    # Channels last elsewhere: [N, S, C] -> a contiguous [N, C, S] copy. torch's channels-last kernel computes
    # the variance as E[x^2] - E[x]^2, unusable without the guard's host check, and its backward is slower
    # than a transpose plus the contiguous kernel's. The result is an [N, ..., C] view.
    nsc = x.reshape(n, -1, c)
    # The first position's value of each group's first channel, for all of the group's channels.
    first = nsc[:, 0, :].detach().reshape(n, groups, c // groups)[:, :, :1]
    shift = first.expand(n, groups, c // groups).reshape(n, c, 1)
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


def _prepare(x: Any, reduction: Reduction, gamma: Any, beta: Any, family: str) -> Any:
    """(x, plan, w, b) for a layout the family's kernels take, or None."""
    x = _as_torch(x)
    dtype = _compute_dtype(x)
    plan = None if dtype is None else _plan(x, reduction)
    if plan is None or not plan.kind.startswith(family):
        return None
    w, b = _param(gamma, dtype), _param(beta, dtype)
    if w is None and b is not None:
        # torch's group-norm backward with a bias but no weight fails ("tensor does not have a device"); a
        # weight of ones is the same computation.
        w = torch.ones_like(b)
    return x, plan, w, b


def _sixteen_bit(x: torch.Tensor, native: Any, float32_path: Any) -> torch.Tensor:
    """A 16-bit input, by the ("torch", "sixteen_bit", "any") row of `GUARDS`.

    `native()` runs the kernel on x as it is and returns (y, mean, rstd); `float32_path(xf)` normalizes a
    float32 x by the float32 rows (which shift it by a value of x: exact). The kernels accumulate 16-bit
    data in float32, but their float32 mean of values with a large common offset is an ulp off, and rstd
    (up to 1/sqrt(epsilon) for a constant input) multiplies that error: a constant -6e4 gave |y| = 0.06
    where beta = 0 was due. So on the CPU the kernel's own c is checked, and above the limit (and wherever
    no host check can run) the float32 path runs: its x - shift, formed in float32 from 16-bit values, is
    exact for nearby values.
    """
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        y, mean, rstd = native()
        if _condition(mean, rstd) <= guard("torch", "sixteen_bit", "any").limit:
            return y
    return float32_path(x.float()).to(x.dtype)


def _native_group_norm(x: torch.Tensor, plan: Plan, groups: int, w: Any, b: Any, eps: float) -> Any:
    """torch.native_group_norm on a contiguous [N, C, S] view of x: (y shaped like x, mean, rstd)."""
    n = x.shape[0]
    if plan.kind == "group_first":
        ncs = x.reshape(n, plan.shape[1] * plan.shape[2], -1)
        y, mean, rstd = torch.native_group_norm(ncs, w, b, n, ncs.shape[1], ncs.shape[2], groups, eps)
        return y.reshape(x.shape), mean, rstd
    c = x.shape[-1]
    ncs = _TransposeShift.apply(x.reshape(n, -1, c), None)
    y, mean, rstd = torch.native_group_norm(ncs, w, b, n, c, ncs.shape[2], groups, eps)
    return y.transpose(1, 2).reshape(x.shape), mean, rstd


@register("torch", "group")
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
    """Group/instance normalization: the ("torch", "group", ...) rows of `GUARDS`."""
    if not plain_variant(epsilon, **variants) or return_statistics:
        return NotImplemented
    prepared = _prepare(x, reduction, gamma, beta, "group")
    if prepared is None:
        return NotImplemented
    x, plan, w, b = prepared
    if x.dtype in _LOW:
        groups = int(reduction.groups)
        return _sixteen_bit(
            x,
            lambda: _native_group_norm(x, plan, groups, w, b, epsilon),
            lambda xf: _group_norm(xf, plan, reduction, w, b, epsilon),
        )
    return _group_norm(x, plan, reduction, w, b, epsilon)


@register("torch", "layer")
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
    """Layer normalization over trailing axes: the ("torch", "layer", ...) rows of `GUARDS`."""
    if not plain_variant(epsilon, **variants) or return_statistics:
        return NotImplemented
    prepared = _prepare(x, reduction, gamma, beta, "layer")
    if prepared is None:
        return NotImplemented
    x, plan, w, b = prepared
    shape = tuple(x.shape[reduction.reduction_axes[0] :])
    w, b = (None if w is None else w.reshape(shape)), (None if b is None else b.reshape(shape))
    if x.dtype in _LOW:
        return _sixteen_bit(
            x,
            lambda: torch.native_layer_norm(x, shape, w, b, epsilon),
            lambda xf: _layer_norm(xf, plan, shape, w, b, epsilon),
        )
    return _layer_norm(x, plan, shape, w, b, epsilon)


def _layer_norm(x: torch.Tensor, plan: Plan, shape: tuple[int, ...], w: Any, b: Any, eps: float) -> torch.Tensor:
    if _guarded(x):
        # The kernel on x itself first (it returns the statistics the guard needs).
        y, mean, rstd = torch.native_layer_norm(x, shape, w, b, eps)
        if _condition(mean, rstd) <= guard("torch", "layer", "cpu").limit:
            return y
    # Shift each row by its first element (exact; layer normalization is invariant to it): torch's float32
    # row mean near 1e4 is off by ~1e-3 after normalization otherwise.
    rows = x.reshape(-1, plan.shape[-1])
    shifted = (rows - rows[:, :1].detach()).reshape(x.shape)
    return F.layer_norm(shifted, shape, w, b, eps)


@register("torch", "batch")
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
    """Batch normalization in training: the ("torch", "batch", ...) rows of `GUARDS`. The statistics feed
    the moving averages (no gradient flows back through them on this path)."""
    if not plain_variant(epsilon, **variants):
        return NotImplemented
    prepared = _prepare(x, reduction, gamma, beta, "batch")
    if prepared is None:
        return NotImplemented
    x, plan, w, b = prepared
    if x.dtype in _LOW:
        statistics: list[Any] = []

        def native() -> Any:
            y, mean, variance = _batch_norm_kernel(_batch_view(x, plan), w, b, epsilon, _count(x, plan))
            statistics[:] = [mean, variance]
            return y, mean, torch.rsqrt(variance + epsilon)

        def float32_path(xf: torch.Tensor) -> torch.Tensor:
            result = _batch_norm_training(xf, plan, w, b, epsilon)
            if result is NotImplemented:
                result = _batch_norm_two_pass(xf, plan, w, b, epsilon)
            statistics[:] = result[1:]
            return result[0]

        if _count(x, plan) < 2:
            return NotImplemented
        y = _sixteen_bit(x, native, float32_path)
        mean, variance = statistics
    else:
        result = _batch_norm_training(x, plan, w, b, epsilon)
        if result is NotImplemented:
            return NotImplemented
        y, mean, variance = result
    y = y.reshape(x.shape)
    y = y if y.dtype == x.dtype else y.to(x.dtype)
    if not return_statistics:
        return y
    keep = [1 if a in reduction.reduction_axes else int(d) for a, d in enumerate(x.shape)]
    return y, Moments(mean.reshape(keep), variance.reshape(keep))


def _count(x: torch.Tensor, plan: Plan) -> int:
    return x.numel() // int(plan.shape[1])


def _batch_norm_two_pass(x: torch.Tensor, plan: Plan, w: Any, b: Any, eps: float) -> tuple[torch.Tensor, ...]:
    """(y, mean, biased variance) by torch's own reductions on x minus one row of x (exact for nearby
    values), for a float32 x the guarded kernel declined."""
    view = _batch_view(x, plan)
    dims = (0,) if view.dim() == 2 else (0, 2)
    shift = view[:1].detach() if view.dim() == 2 else view[:1, :, :1].detach()
    centered = view - shift
    variance, mean = torch.var_mean(centered, dim=dims, correction=0, keepdim=True)
    scale = torch.rsqrt(variance + eps)
    column = (lambda t: t) if view.dim() == 2 else (lambda t: t.reshape(-1, 1))
    if w is not None:
        scale = scale * column(w)
    y = (centered - mean) * scale
    if b is not None:
        y = y + column(b)
    return y, (mean + shift).reshape(-1), variance.reshape(-1)


def _batch_norm_training(x: torch.Tensor, plan: Plan, w: Any, b: Any, eps: float) -> Any:
    """(y, batch mean, biased batch variance) from F.batch_norm, or NotImplemented.

    On the CPU the kernel runs on x as it is and its statistics are checked (the ("torch", "batch", "cpu")
    row of `GUARDS`: batch norm's limit c <= 2 covers what it normalizes in practice, ReLU outputs have
    c ~ 1.3); above the limit it runs again on x shifted by its own mean.
    """
    view = _batch_view(x, plan)
    count = view.numel() // view.shape[1]
    if count < 2:
        return NotImplemented  # torch refuses a single value per channel in training
    row = guard("torch", "batch", "cpu")
    if count > row.max_count and _guarded(x):
        return NotImplemented  # the portable two-pass path (the row's max_count)
    if not _guarded(x):
        return _batch_norm_kernel(view, w, b, eps, count)
    shift = None
    for _attempt in range(2):
        shifted = view if shift is None else view - _channel_column(shift.detach(), view)
        y, mean, variance = _batch_norm_kernel(shifted, w, b, eps, count)
        if _condition(mean, torch.rsqrt(variance + eps)) <= row.limit:
            break
        shift = mean if shift is None else shift + mean  # shift again by the kernel's own mean
    else:
        return NotImplemented  # the portable two-pass path
    return y, mean if shift is None else mean + shift, variance


def _channel_column(per_channel: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
    return per_channel if view.dim() == 2 else per_channel.reshape(-1, 1)


def _batch_norm_kernel(view: torch.Tensor, w: Any, b: Any, eps: float, count: int) -> tuple[torch.Tensor, ...]:
    channels = view.shape[1]
    sdt = torch.float32 if view.dtype in _LOW else view.dtype
    running_mean = torch.zeros(channels, dtype=sdt, device=view.device)
    running_var = torch.zeros(channels, dtype=sdt, device=view.device)
    y = F.batch_norm(view, running_mean, running_var, w, b, training=True, momentum=1.0, eps=eps)
    variance = running_var * ((count - 1) / count)  # torch stores the unbiased batch variance
    return y, running_mean, variance

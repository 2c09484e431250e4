"""JAX fast paths: one jit-friendly kernel with an analytic custom VJP.

Forward: statistics in float32 (for 16-bit data too) from one sum and one sum of squares per channel over
the reduced axes; per-group statistics are then formed on those small per-channel sums, and the
normalization is one fused element-wise pass over x. The sums are numerically shifted so that a
mean-1e4/std-1 input keeps its variance, as the "jax" rows of `normkit.core.fast.GUARDS` say: on the CPU
(float32/float64 input, column reductions: batch, group and instance norm) the plain sums come first and only
a group whose |mean| is above half its spread makes the kernel redo them on x minus that mean (a `lax.cond`:
XLA's CPU column reductions of x run at memory speed, of a broadcast x - shift at a third of it); otherwise
(layer norm, other devices, 16-bit inputs) the sums are always taken on x minus one value of x per group.

All element-wise work runs on the "flat" view (e.g. [N, H*W, C] for NHWC group normalization): XLA's CPU
code is ten times slower on a grouped [N, H*W, G, C/G] view with a small last axis, which is what makes the
Keras built-in slow.

Backward (`jax.custom_vjp`) saves only x, the per-group shift and mean of x - shift, and 1/sqrt(var + eps)
(and gamma):

    dx = rstd * (g - mean_R(g) - xhat * mean_R(g * xhat)),  g = dy * gamma,  xhat = (x - mean) * rstd

with dgamma = sum(dy * xhat), dbeta = sum(dy) over the non-parameter axes; xhat is formed as
((x - shift) - mean(x - shift)) * rstd, so that a large common offset costs no digits.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
from keras import ops

from normkit.core.fast import guard, plain_variant, register
from normkit.core.fast._backward import backward as shared_backward
from normkit.core.fast._plan import FlatPlan, make_flat_plan
from normkit.core.normalize import Reduction
from normkit.core.statistics import Moments

_FLOATS = ("float16", "bfloat16", "float32", "float64")


_TINY = 1e-30


def _plain_sums_first(fp: FlatPlan, input_dtype: Any) -> bool:
    """Whether the kernel takes plain sums first (rows "columns_cpu" of `GUARDS`): on the CPU backend (a GPU
    conditional would sync), for a float32/float64 input (XLA materializes the float32 copy of a 16-bit input
    for the plain sums) and a column reduction: the last, contiguous axis kept (batch, group and instance
    norm). XLA's CPU row reductions (layer norm) are faster on the shifted data than as plain sums plus a
    conditional (measured on [100352, 64] rows: 7 ms vs 24 ms)."""
    columns = len(fp.plan.shape) - 1 not in fp.plan.reduced
    return jax.default_backend() == "cpu" and input_dtype in (jnp.float32, jnp.float64) and columns


def _stat_dtype(dtype: Any) -> Any:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _sum(t: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Sum over `axes` (keepdims), staged in the order XLA's CPU reductions are fast at.

    XLA reduces a contiguous last axis (rows) or leading axes with the last kept (columns) at memory speed,
    a mixed reduction much slower: reduce the big part first, then the small remainder.
    """
    axes = tuple(a for a in axes if t.shape[a] != 1)
    last = t.ndim - 1
    if not axes:
        return t
    if last not in axes or len(axes) == 1:
        return jnp.sum(t, axis=axes, keepdims=True)
    outer = tuple(a for a in axes if a != last)
    if t.shape[last] >= 16:
        return jnp.sum(jnp.sum(t, axis=(last,), keepdims=True), axis=outer, keepdims=True)
    return jnp.sum(jnp.sum(t, axis=outer, keepdims=True), axis=(last,), keepdims=True)


class _Groups:
    """Per-group reductions of small per-channel tensors (keepdims on the flat view's reduced axes)."""

    def __init__(self, fp: FlatPlan) -> None:
        self.axis = fp.group_axis
        self.groups = fp.groups

    def split(self, t: jax.Array) -> jax.Array:
        shape = list(t.shape)
        a = self.axis
        return t.reshape(shape[:a] + [self.groups, shape[a] // self.groups] + shape[a + 1 :])

    def sum(self, t: jax.Array) -> jax.Array:
        """Sum within each group of channels, broadcast back to every channel."""
        if self.axis is None:
            return t
        s = self.split(t)
        return jnp.broadcast_to(jnp.sum(s, axis=self.axis + 1, keepdims=True), s.shape).reshape(t.shape)

    def first(self, t: jax.Array) -> jax.Array:
        """The first channel's value of each group, broadcast back to every channel."""
        if self.axis is None:
            return t
        s = self.split(t)
        index = tuple(slice(0, 1) if i == self.axis + 1 else slice(None) for i in range(s.ndim))
        return jnp.broadcast_to(s[index], s.shape).reshape(t.shape)


@lru_cache(maxsize=256)
def _kernel(fp: FlatPlan, epsilon: float, has_gamma: bool, has_beta: bool, unshifted_limit: float | None) -> Any:
    """custom_vjp function (x, gamma, beta) -> (y, mean, variance) on the flat view (statistics per channel).

    unshifted_limit: the `GUARDS` limit on c below which the plain sums are kept, or None to always shift by
    one value of x per statistic."""
    plan = fp.plan
    count = fp.count
    red = plan.reduced
    groups = _Groups(fp)

    def shifted_moments(xs: jax.Array, shift: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(shift, mean of xs - shift, variance): one pass over xs - shift."""
        shift = jax.lax.stop_gradient(shift)
        d = xs - shift
        m = groups.sum(_sum(d, red)) / count
        return shift, m, jnp.maximum(groups.sum(_sum(d * d, red)) / count - m * m, 0.0)

    def moments(xs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        if unshifted_limit is None:
            first = tuple(slice(0, 1) if a in red else slice(None) for a in range(xs.ndim))
            return shifted_moments(xs, groups.first(xs[first]))
        # XLA's CPU code reduces x and x * x at memory speed but materializes a broadcast x - shift first
        # (a write and page faults of a whole x): take the plain sums, and only where the mean is not small
        # against the spread (where E[x^2] - E[x]^2 would lose digits) redo them on x shifted by that mean.
        m0 = groups.sum(_sum(xs, red)) / count
        v0 = jnp.maximum(groups.sum(_sum(xs * xs, red)) / count - m0 * m0, 0.0)
        well_conditioned = jnp.max(m0 * m0 / (v0 + epsilon + _TINY)) <= unshifted_limit**2
        return jax.lax.cond(
            well_conditioned, lambda: (jnp.zeros_like(m0), m0, v0), lambda: shifted_moments(xs, m0)
        )

    def forward(x: jax.Array, gamma: jax.Array, beta: jax.Array) -> tuple[Any, Any]:
        sdt = _stat_dtype(x.dtype)
        xs = x.astype(sdt)
        shift, m, variance = moments(xs)
        d = xs - shift
        rstd = jax.lax.rsqrt(variance + epsilon)
        scale = rstd * gamma.astype(sdt) if has_gamma else rstd
        # (x - shift) - m, not x - (shift + m): the float32 sum shift + m near 1e4 is up to half an ulp
        # (4.9e-4) off, that many standard deviations of a std-1 input.
        y = (d - m) * scale
        if has_beta:
            y = y + beta.astype(sdt)
        return (y.astype(x.dtype), shift + m, variance), (x, shift, m, rstd, gamma)

    @jax.custom_vjp
    def kernel(x: jax.Array, gamma: jax.Array, beta: jax.Array) -> Any:
        return forward(x, gamma, beta)[0]

    def backward(residuals: Any, cotangents: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        x, shift, m, rstd, gamma = residuals
        dy, dmean, dvariance = cotangents
        sdt = m.dtype
        centered = (x.astype(sdt) - shift) - m
        dy = dy.astype(sdt)
        xhat = centered * rstd
        gam = gamma.astype(sdt) if has_gamma else None
        dx, dgamma, dbeta = shared_backward(dy, xhat, rstd, gam, plan, count, _sum, groups.sum)
        # Cotangents of the returned statistics (zero unless a caller differentiates through them); the
        # statistics are per channel here, each group's total flows to all of its channels.
        dx = dx + groups.sum(dmean) / count + groups.sum(dvariance) * (2.0 / count) * centered
        dgamma = dgamma.reshape(gamma.shape).astype(gamma.dtype) if has_gamma else jnp.zeros_like(gamma)
        dbeta_out = dbeta.reshape(plan.param_shape).astype(sdt) if has_beta else jnp.zeros(plan.param_shape, sdt)
        return dx.astype(x.dtype), dgamma, dbeta_out

    kernel.defvjp(forward, backward)
    return kernel


def _varying_axes(t: Any) -> frozenset:
    """The mapped axes (jax.shard_map with check_vma) over which t's type says it varies; empty elsewhere."""
    aval = jax.typeof(t) if hasattr(jax, "typeof") else jax.core.get_aval(t)
    vma = getattr(aval, "vma", None)
    if vma is None:
        vma = getattr(getattr(aval, "manual_axis_type", None), "varying", frozenset())
    return frozenset(vma)


def _same_varying_axes(*arrays: Any) -> tuple[Any, ...]:
    """The arrays (None passes through) cast to vary over the union of their mapped axes.

    A custom_vjp's backward must return each cotangent with its primal's type. Inside jax.shard_map x varies
    over the batch axis and a replicated gamma/beta does not, but their cotangents (sums of dy * xhat over the
    local rows) do: the primals are cast to varying first, outside the custom VJP. That cast's transpose is a
    psum over the axis, so a replicated gamma gets the sum of every shard's gradient, as JAX's own ops give it.
    """
    axes = frozenset().union(*(_varying_axes(a) for a in arrays if a is not None))
    if not axes:
        return arrays
    cast = []
    for a in arrays:
        missing = () if a is None else tuple(sorted(axes - _varying_axes(a)))
        if missing:
            a = jax.lax.pcast(a, missing, to="varying") if hasattr(jax.lax, "pcast") else jax.lax.pvary(a, missing)
        cast.append(a)
    return tuple(cast)


def _run(x: Any, reduction: Reduction, gamma: Any, beta: Any, epsilon: float, family: str) -> Any:
    x = jnp.asarray(x)
    if jnp.dtype(x.dtype).name not in _FLOATS or x.ndim != reduction.rank or x.size == 0:
        return NotImplemented
    fp = make_flat_plan(tuple(x.shape), reduction)
    if not fp.count:
        return NotImplemented
    plan = fp.plan
    sdt = _stat_dtype(x.dtype)
    has_gamma, has_beta = gamma is not None, beta is not None
    g = jnp.reshape(ops.convert_to_tensor(gamma), plan.param_shape) if has_gamma else None
    b = jnp.reshape(ops.convert_to_tensor(beta), plan.param_shape) if has_beta else None
    # Only the given parameters: the placeholders stay invariant, as the zero cotangents returned for them.
    xv, g, b = _same_varying_axes(jnp.reshape(x, plan.shape), g, b)
    g = jnp.ones(plan.param_shape, sdt) if g is None else g
    b = jnp.zeros(plan.param_shape, sdt) if b is None else b
    limit = guard("jax", family, "columns_cpu").limit if family != "layer" and _plain_sums_first(fp, x.dtype) else None
    kernel = _kernel(fp, float(epsilon), has_gamma, has_beta, limit)
    y, mean, variance = kernel(xv, g, b)
    return jnp.reshape(y, x.shape), mean, variance


def _family_fast_path(family: str) -> Any:
    def fast_path(
        x: Any,
        reduction: Reduction,
        gamma: Any,
        beta: Any,
        epsilon: Any,
        *,
        return_statistics: bool = False,
        **variants: Any,
    ) -> Any:
        if not plain_variant(epsilon, **variants):
            return NotImplemented
        if return_statistics and family == "group":
            return NotImplemented  # statistics in the grouped view: only batch normalization asks for them
        result = _run(x, reduction, gamma, beta, epsilon, family)
        if result is NotImplemented or not return_statistics:
            return result if result is NotImplemented else result[0]
        y, mean, variance = result
        keep = [1 if a in reduction.reduction_axes else int(d) for a, d in enumerate(y.shape)]
        return y, Moments(jnp.reshape(mean, keep), jnp.reshape(variance, keep))

    fast_path.__name__ = f"{family}_norm"
    fast_path.__doc__ = f"The {family} family's fast path (see `normkit.core.fast`)."
    return fast_path


# One kernel serves the three families; each is registered as its own function with the family signature.
group_norm = register("jax", "group")(_family_fast_path("group"))
layer_norm = register("jax", "layer")(_family_fast_path("layer"))
batch_norm = register("jax", "batch")(_family_fast_path("batch"))

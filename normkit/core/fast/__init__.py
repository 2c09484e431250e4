"""Per-backend fast paths behind the one core, and the table of their guards (`GUARDS`).

A fast path is one plain function per (backend, family), registered with `register(backend, family)`. The
families and their reductions:

- "group": group and instance normalization (`Reduction.group_axis` set);
- "layer": layer normalization (the parameters span the reduced axes);
- "batch": batch normalization in training (the parameters span the axes that are kept).

Every family has the one signature of `normalize_with_batch_statistics`:

    fn(x, reduction, gamma, beta, epsilon, *, mask, centered, cross_replica, return_statistics)

and returns what it returns (y, or (y, Moments) with `return_statistics`), or `NotImplemented` for any
call it cannot match exactly: a variant argument it does not implement (a mask, centered=False, a
cross-replica hook, a tensor epsilon), a layout, dtype or size outside its guard. The portable `keras.ops`
path (`normkit.core.statistics.compute_statistics`) then runs. A new variant argument is therefore declined
by every fast path until one implements it. Fast paths give the portable path's numbers within float32
rounding: the test suite runs on both (`NORMKIT_DISABLE_FAST_PATHS=1` turns them off).

Which kernel runs for a backend, family and input is the one row of `GUARDS` that matches (backend, family,
layout), read top to bottom; a call outside every row of its (backend, family) runs the portable path.
`c` below is |mean| / sqrt(variance + epsilon) of the data a kernel sees: a float32 kernel that forms a
mean or E[x^2] - E[x]^2 without a shift loses digits in proportion to c (or c^2); a shift makes c small.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

FAMILIES = ("group", "layer", "batch")


@dataclass(frozen=True)
class Guard:
    """One row of the guard table: a kernel, the inputs it takes, and how its numbers are kept exact.

    kernel: what computes the result.
    applies_to: the layouts, dtypes and devices of the row.
    shift: how the data is shifted before (or after checking) the kernel.
    limit: the largest c the kernel's result is accepted with (checked on its own statistics), or None when
        the row shifts unconditionally and checks nothing.
    max_count: the most values per statistic the kernel accumulates accurately (its float32 sums add one
        after another), or None for no cap.
    fallback: what runs when `limit` or `max_count` is exceeded.
    pre_shift_limit, sampled_values: where a cheap sample decides a shift before the kernel runs, the c of
        the sample above which it shifts, and about how many values per statistic it reads.
    """

    kernel: str
    applies_to: str
    shift: str
    limit: float | None
    max_count: int | None
    fallback: str
    pre_shift_limit: float | None = None
    sampled_values: int | None = None


# Read by the backends at call time (tests replace rows). Keys: (backend, family, layout).
GUARDS: dict[tuple[str, str, str], Guard] = {
    ("jax", "group", "columns_cpu"): Guard(
        kernel="normkit's XLA kernel (custom VJP) on the flat view, statistics per channel then per group",
        applies_to="CPU, float32/float64 input (channels are columns: the last axis is kept)",
        shift="plain sums first; if any statistic has c > limit, one lax.cond redoes them on x minus that mean",
        limit=0.5,
        max_count=None,
        fallback="none needed (the shifted branch is exact)",
    ),
    ("jax", "group", "any"): Guard(
        kernel="the same XLA kernel",
        applies_to="other devices, 16-bit input",
        shift="always by one value of x per statistic (its first position)",
        limit=None,
        max_count=None,
        fallback="none needed",
    ),
    ("jax", "batch", "columns_cpu"): Guard(
        kernel="the same XLA kernel (statistics per feature)",
        applies_to="CPU, float32/float64 input, the feature axes last (columns)",
        shift="as the group row: plain sums, lax.cond redo on x minus the mean for c > limit",
        limit=0.5,
        max_count=None,
        fallback="none needed",
    ),
    ("jax", "batch", "any"): Guard(
        kernel="the same XLA kernel",
        applies_to="other layouts and devices, 16-bit input",
        shift="always by one value of x per statistic",
        limit=None,
        max_count=None,
        fallback="none needed",
    ),
    ("jax", "layer", "any"): Guard(
        kernel="the same XLA kernel (rows: a conditional costs more than the shift pass)",
        applies_to="every layout, dtype and device",
        shift="always by the first value of each row",
        limit=None,
        max_count=None,
        fallback="none needed",
    ),
    ("tensorflow", "group", "any"): Guard(
        kernel="normkit's tf.custom_gradient kernel on the flat view (column sums as products with ones)",
        applies_to="every layout, float16/bfloat16/float32/float64",
        shift="plain sums first; if any statistic has c > limit, one tf.cond redoes them on x minus that mean",
        limit=0.5,
        max_count=None,
        fallback="none needed",
    ),
    ("tensorflow", "layer", "any"): Guard(
        kernel="the same tf.custom_gradient kernel",
        applies_to="every layout, float16/bfloat16/float32/float64",
        shift="always by the first value of each row",
        limit=None,
        max_count=None,
        fallback="none needed",
    ),
    ("tensorflow", "batch", "channels_last"): Guard(
        kernel="FusedBatchNormV3 on an [M, 1, 1, C] view (tf.keras 2's kernel), FusedBatchNormGradV3",
        applies_to="features last (any rank), float32, 16-bit; M static or dynamic",
        shift="none first; if the kernel's own c > limit (or is NaN), tf.cond re-runs it in float32 on x minus the "
        "kernel's mean (16-bit too: under XLA the kernel's variance is the one-pass E[x^2] - E[x]^2)",
        limit=2.0,
        max_count=1 << 17,
        fallback="static M > max_count: the portable path; dynamic M: a tf.cond to two-pass statistics",
    ),
    ("torch", "group", "channels_last_cpu"): Guard(
        kernel="torch.native_group_norm's channels-last kernel on [N, S, C] memory, normkit's NHWC backward",
        applies_to="CPU, eager, float32/float64, channels last",
        shift="x minus the group means of sampled values (evenly spaced slices) where the sample's c > "
        "pre_shift_limit; then, if the kernel's c > limit, x minus the kernel's mean, once more",
        limit=1.0,
        max_count=1 << 18,
        fallback="two-pass statistics of the shifted x (torch's reductions)",
        # The sampled c's noise is ~1/sqrt(128) = 0.09: even the largest of thousands of statistics (instance
        # norm) of zero-mean data stays below 0.5.
        pre_shift_limit=0.5,
        sampled_values=128,
    ),
    ("torch", "group", "any"): Guard(
        kernel="F.group_norm on a contiguous [N, C, S] view (channels last: one transpose-and-shift pass)",
        applies_to="channels first anywhere; channels last on other devices, under torch.compile, 16-bit",
        shift="always by one value of x per (sample, group) (16-bit: in float32, see 'torch', 'sixteen_bit')",
        limit=None,
        max_count=None,
        fallback="none needed",
    ),
    ("torch", "layer", "cpu"): Guard(
        kernel="torch.native_layer_norm on x as it is",
        applies_to="CPU, eager, float32/float64, trailing axes",
        shift="none first; if the kernel's c > limit, F.layer_norm on x minus the first value of each row",
        limit=8.0,
        max_count=None,
        fallback="the shifted kernel run",
    ),
    ("torch", "layer", "any"): Guard(
        kernel="F.layer_norm",
        applies_to="trailing axes on other devices and under torch.compile",
        shift="always by the first value of each row",
        limit=None,
        max_count=None,
        fallback="none needed",
    ),
    ("torch", "batch", "cpu"): Guard(
        kernel="F.batch_norm in training ([M, C] or [N, C, S] view), statistics read back by momentum 1",
        applies_to="CPU, eager, float32/float64, at least 2 values per feature",
        shift="none first; if the kernel's c > limit, re-run on x minus the kernel's mean (twice at most)",
        limit=2.0,
        max_count=1 << 18,
        fallback="the portable path (over max_count values, or after two failed runs)",
    ),
    ("torch", "batch", "any"): Guard(
        kernel="F.batch_norm in training",
        applies_to="other devices and torch.compile, float32/float64",
        shift="none (not measured on a GPU)",
        limit=None,
        max_count=None,
        fallback="none",
    ),
    ("torch", "sixteen_bit", "any"): Guard(
        kernel="the rows above, on float16/bfloat16 x",
        applies_to="16-bit input of every torch family (the kernels accumulate in float32)",
        shift="CPU eager: none first; if the kernel's c > limit, the kernel re-runs on float32 x minus one "
        "value of x per statistic. Elsewhere: always on float32 x minus one value of x per statistic",
        limit=2.0,
        max_count=None,
        fallback="the shifted float32 run",
    ),
}


def guard(backend: str, family: str, layout: str) -> Guard:
    """The row of `GUARDS` a fast path follows (looked up at call time)."""
    return GUARDS[(backend, family, layout)]


_REGISTRY: dict[tuple[str, str], Callable[..., Any]] = {}
_LOADED: set[str] = set()


def register(backend: str, family: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if family not in FAMILIES:
        raise ValueError(f"Unknown fast-path family {family!r}; the families are {FAMILIES}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[(backend, family)] = fn
        return fn

    return decorate


def enabled() -> bool:
    return os.environ.get("NORMKIT_DISABLE_FAST_PATHS", "") in ("", "0")


def _load(backend: str) -> None:
    if backend in _LOADED:
        return
    _LOADED.add(backend)
    try:
        importlib.import_module(f"normkit.core.fast.{backend}_backend")
    except ModuleNotFoundError as error:
        if error.name != f"normkit.core.fast.{backend}_backend":
            raise


def lookup(family: str) -> Callable[..., Any] | None:
    backend = keras.backend.backend()
    _load(backend)
    return _REGISTRY.get((backend, family))


def load_active_backend() -> None:
    """Imports the active backend's fast paths. `import normkit` calls it, so that the first import does not
    happen inside a traced function (tf.function's autograph would convert the import machinery and warn)."""
    _load(keras.backend.backend())


def family_of(reduction: Any) -> str:
    """The family of a `normkit.core.normalize.Reduction`."""
    if reduction.group_axis is not None:
        return "group"
    if reduction.param_axes == reduction.reduction_axes:
        return "layer"
    return "batch"


def dispatch(x: Any, reduction: Any, gamma: Any, beta: Any, epsilon: Any, **variants: Any) -> Any:
    """Runs the active backend's fast path of the reduction's family, or returns NotImplemented."""
    if not enabled():
        return NotImplemented
    fn = lookup(family_of(reduction))
    if fn is None:
        return NotImplemented
    return fn(x, reduction, gamma, beta, epsilon, **variants)


def plain_variant(
    epsilon: Any,
    *,
    mask: Any = None,
    centered: bool = True,
    cross_replica: Any = None,
    return_statistics: bool = False,
) -> bool:
    """Whether a call asks only for what every fast path implements: no mask, centered statistics, no
    cross-replica hook and a Python-number epsilon (`return_statistics` each path checks itself)."""
    del return_statistics
    return mask is None and centered and cross_replica is None and isinstance(epsilon, (int, float))

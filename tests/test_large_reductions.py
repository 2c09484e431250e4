"""Large reductions at a large offset, and the guards of the native kernels.

The other numerics tests use small shapes, where even a float32 running sum of values near 1e4 is accurate
enough. Here each statistic covers 16k-2M values, where a float32 mean near 1e4 is a few ulp off and a
one-pass variance is meaningless: every path must stay within 1e-4 of the float64 reference at mean 1e4 /
std 1 with gamma up to 3 (the spec asks for 1e-3), forward, and within 2e-3 relative in dx.

The guards (normkit/core/fast/torch_backend.py, tensorflow_backend.py) are checked branch by branch: the
native kernel on data it is accurate for, a second shift when the sampled shift was misleading or skipped,
and the fallback when the guard keeps failing, each against the float64 reference, forward and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest
from _helpers import autodiff, backend_name, float64_enabled

import normkit

BACKEND = backend_name()
# What float32 gives when the offset costs no digits (about 10x the unit-scale rounding of a few passes):
# forming x - (shift + mean) instead of (x - shift) - mean already misses it by ~10x at mean 1e4.
PRECISE_TOL = 1e-4


def _rng_data(shape: tuple[int, ...], loc: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(loc, 1.0, size=shape).astype("float32"), rng.normal(size=shape).astype("float32")


def _params(channels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    # gamma up to 3: an error in the mean counts three times in y.
    return rng.uniform(0.5, 3.0, channels).astype("float32"), rng.normal(size=channels).astype("float32")


def _normalize_grad(x: np.ndarray, gamma_b: np.ndarray, ct: np.ndarray, axes: tuple[int, ...], eps: float) -> Any:
    """float64 gradient of sum(ct * ((x - mean) / sqrt(var + eps) * gamma + beta)) w.r.t. x, for statistics
    over `axes` (keepdims), written from the definition: dx = rstd * (g - mean(g) - xhat * mean(g * xhat))."""
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    g = ct.astype(np.float64) * gamma_b
    return rstd * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))


# name -> (layer factory, the same normalization as a pure function of (x, gamma, beta) for autodiff,
#          input shape, (the view of x the statistics are taken on, its reduced axes))
CASES = {
    "batch_dense_16k_rows": (
        lambda: normkit.BatchNormalization(),
        lambda x, g, b: normkit.ops.batch_norm(x, None, None, g, b),
        (16384, 8),
        ((16384, 8), (0,)),
    ),
    # 2M rows: past the row counts the native batch-norm kernels accumulate accurately over (TensorFlow's
    # FusedBatchNormV3 was off by 4 at mean 1e4, torch's F.batch_norm by 1e-3 at mean 0).
    "batch_dense_2m_rows": (
        lambda: normkit.BatchNormalization(),
        lambda x, g, b: normkit.ops.batch_norm(x, None, None, g, b),
        (1 << 21, 2),
        ((1 << 21, 2), (0,)),
    ),
    "batch_nhwc_32k_per_channel": (
        lambda: normkit.BatchNormalization(),
        lambda x, g, b: normkit.ops.batch_norm(x, None, None, g, b),
        (8, 64, 64, 4),
        ((8, 64, 64, 4), (0, 1, 2)),
    ),
    "group_nhwc_32k_per_group": (
        lambda: normkit.GroupNormalization(groups=2),
        lambda x, g, b: normkit.ops.group_norm(x, g, b, groups=2),
        (2, 128, 128, 4),
        ((2, 128, 128, 2, 2), (1, 2, 4)),
    ),
    # 2M values per group: TensorFlow's reduce_sum over a middle axis adds them one after another (its mean
    # near 1e4 was then ~1e-3 off, and the fast path's variance 0: y off by 162).
    "group_nhwc_2m_per_group": (
        lambda: normkit.GroupNormalization(groups=1),
        lambda x, g, b: normkit.ops.group_norm(x, g, b, groups=1),
        (1, 1024, 1024, 2),
        ((1, 1024, 1024, 1, 2), (1, 2, 4)),
    ),
    "instance_nhwc_16k_per_channel": (
        lambda: normkit.InstanceNormalization(),
        lambda x, g, b: normkit.ops.instance_norm(x, g, b),
        (2, 128, 128, 3),
        ((2, 128, 128, 3), (1, 2)),
    ),
    "layer_64k_features": (
        lambda: normkit.LayerNormalization(),
        lambda x, g, b: normkit.ops.layer_norm(x, g, b),
        (2, 65536),
        ((2, 65536), (1,)),
    ),
}


def _reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, view: tuple, ct: np.ndarray) -> tuple:
    """(y, dx, xhat) in float64: normalize over `view`'s reduced axes with gamma/beta on the last axis of x."""
    shape, axes = view
    xv = x.astype(np.float64).reshape(shape)
    mean = xv.mean(axis=axes, keepdims=True)
    var = ((xv - mean) ** 2).mean(axis=axes, keepdims=True)
    xhat = ((xv - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
    y = xhat * gamma + beta
    gamma_v = np.broadcast_to(gamma, x.shape).reshape(shape)
    dx = _normalize_grad(xv, gamma_v, ct.reshape(shape), axes, 1e-3).reshape(x.shape)
    return y, dx, xhat


def _layer_with(factory: Callable[[], Any], shape: tuple[int, ...]) -> tuple[Any, np.ndarray, np.ndarray]:
    layer = factory()
    layer.build(shape)
    gamma, beta = _params(shape[-1])
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    return layer, gamma, beta


def _forward(layer: Any, x: np.ndarray) -> np.ndarray:
    """The layer's output as NumPy; batch normalization in training (its batch statistics)."""
    kwargs = {"training": True} if isinstance(layer, normkit.BatchNormalization) else {}
    return keras.ops.convert_to_numpy(layer(x, **kwargs))


@pytest.mark.parametrize("loc", [1e4, -3e3])
@pytest.mark.parametrize("name", sorted(CASES))
def test_large_reduction_at_large_offset(name, loc):
    factory, fn, shape, view = CASES[name]
    layer, gamma, beta = _layer_with(factory, shape)
    x, ct = _rng_data(shape, loc)
    y_ref, dx_ref, _ = _reference(x, gamma, beta, view, ct)
    y = _forward(layer, x)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=PRECISE_TOL, err_msg="y")
    dx, _, _ = autodiff(fn, [x, gamma, beta], ct)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=2e-3 * np.abs(dx_ref).max(), err_msg="dx")


@pytest.mark.parametrize("name", ["batch_dense_2m_rows", "group_nhwc_2m_per_group"])
def test_portable_path_on_millions_of_values_per_statistic(name, monkeypatch):
    """The portable keras.ops path, which every fast path falls back to, on 2M values per statistic at mean
    1e4 (TensorFlow's reduce_sum over leading axes lost ~1e-3 relative there: BatchNorm's y was off by 4.2,
    InstanceNorm's over 1M values by 6e-2)."""
    monkeypatch.setenv("NORMKIT_DISABLE_FAST_PATHS", "1")
    factory, _, shape, view = CASES[name]
    layer, gamma, beta = _layer_with(factory, shape)
    x, _ = _rng_data(shape, 1e4, seed=9)
    y_ref, _, _ = _reference(x, gamma, beta, view, np.zeros_like(x))
    np.testing.assert_allclose(_forward(layer, x), y_ref, rtol=0, atol=PRECISE_TOL)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a dynamic batch size in a TensorFlow graph")
@pytest.mark.parametrize("rows", [4096, 1 << 21])
def test_tf_batch_norm_with_a_dynamic_batch_size(rows):
    """Traced with an unknown batch size, the row count is not known ahead of time: past _FUSED_MAX_ROWS rows
    a branch with two-pass statistics must run instead of FusedBatchNormV3, forward and gradient."""
    import tensorflow as tf

    gamma, beta = _params(2)
    x, noise = _rng_data((rows, 2), 1e4, seed=10)
    # A cotangent correlated with x: every term of dx (the one in mean(dy * xhat) too) is then well above
    # the tolerance.
    x64 = x.astype(np.float64)
    ct = (noise + (x64 - x64.mean(0)) / x64.std(0)).astype("float32")
    y_ref, dx_ref, xhat = _reference(x, gamma, beta, ((rows, 2), (0,)), ct)
    spec, param = tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([2], tf.float32)

    @tf.function(input_signature=[spec, spec, param, param])
    def step(t: Any, upstream: Any, g: Any, b: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch([t, g, b])
            y = normkit.ops.batch_norm(t, None, None, g, b)
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, [t, g, b])

    y, (dx, dgamma, dbeta) = step(*(tf.constant(a) for a in (x, ct, gamma, beta)))
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=0, atol=PRECISE_TOL)
    np.testing.assert_allclose(dx.numpy(), dx_ref, rtol=0, atol=2e-3 * np.abs(dx_ref).max())
    ct64 = ct.astype(np.float64)
    np.testing.assert_allclose(dgamma.numpy(), (ct64 * xhat).sum(0), rtol=1e-4)
    np.testing.assert_allclose(dbeta.numpy(), ct64.sum(0), rtol=1e-4, atol=1e-2)


def test_large_batch_moving_statistics_at_large_offset():
    layer, _, _ = _layer_with(lambda: normkit.BatchNormalization(momentum=0.0), (16384, 8))
    x, _ = _rng_data((16384, 8), 1e4)
    layer(x, training=True)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), x64.mean(0), rtol=1e-7, atol=0)
    # momentum 0 with the Bessel correction of the fused rule (rank 2 is not fused: biased variance).
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), x64.var(0), rtol=2e-3)


# The CASES at a small size too: the paths for small reductions differ (TF batch norm under 4096 rows).
SMALL_CASES = {
    "group_nhwc_small": (lambda: normkit.GroupNormalization(groups=2), (2, 8, 8, 4), ((2, 8, 8, 2, 2), (1, 2, 4))),
    "instance_nhwc_small": (lambda: normkit.InstanceNormalization(), (2, 8, 8, 3), ((2, 8, 8, 3), (1, 2))),
    "layer_small": (lambda: normkit.LayerNormalization(), (4, 64), ((4, 64), (1,))),
    "batch_nhwc_small": (lambda: normkit.BatchNormalization(), (4, 8, 8, 3), ((4, 8, 8, 3), (0, 1, 2))),
}


@pytest.mark.parametrize("name", sorted(CASES) + sorted(SMALL_CASES))
def test_offset_whose_square_overflows_float32(name):
    """Mean 1e20, std 1e16 (c = 1e4, as mean 1e4 / std 1): x^2 overflows float32 (3.4e38), so a kernel's
    E[x^2] - E[x]^2 is inf - inf, while the shifted paths stay finite (the float32 analogue of the spec's
    float16 |x| > 256). The guards must not take a NaN statistic for a passed check (torch gave NaN here)."""
    if name in CASES:
        factory, _, shape, view = CASES[name]
    else:
        factory, shape, view = SMALL_CASES[name]
    layer, gamma, beta = _layer_with(factory, shape)
    rng = np.random.default_rng(6)
    x = (1e20 + 1e16 * rng.normal(size=shape)).astype("float32")
    y_ref, _, _ = _reference(x, gamma, beta, view, np.zeros_like(x))
    y = _forward(layer, x)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=PRECISE_TOL)


@pytest.mark.skipif(BACKEND == "jax", reason="the batch-norm guards of the torch and TensorFlow kernels")
def test_batch_norm_kernel_guard_catches_an_unshifted_large_offset():
    """The batch-norm kernels first see mean-1e4 data as it is (their naive float32 mean is then ~4e-2 off);
    the check of the kernel's own statistics must catch that and redo it shifted."""
    _, fn, shape, view = CASES["batch_dense_16k_rows"]
    x, ct = _rng_data(shape, 1e4, seed=4)
    gamma, beta = _params(shape[-1])
    y_ref, dx_ref, _ = _reference(x, gamma, beta, view, ct)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fn(x, gamma, beta)), y_ref, rtol=0, atol=PRECISE_TOL)
    dx, _, _ = autodiff(fn, [x, gamma, beta], ct)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=2e-3 * np.abs(dx_ref).max())


# ------------------------------------------------------------------------------- torch: the guard

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="the guard of torch's native CPU kernels")


class _Counter:
    """Wraps a module function, counting calls (with the fast paths on: the count is the fast path's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        monkeypatch.delenv("NORMKIT_DISABLE_FAST_PATHS", raising=False)
        self.calls = 0
        original = getattr(module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)


def _torch_group_case(x: np.ndarray, groups: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """y and (dx, dgamma, dbeta) of normkit.ops.group_norm on NHWC x through torch autograd."""
    import torch

    gamma, beta = _params(x.shape[-1])
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    y = normkit.ops.group_norm(xt, gt, bt, groups=groups)
    ct = torch.tensor(np.random.default_rng(5).normal(size=x.shape).astype(x.dtype))
    (y * ct).sum().backward()
    return y.detach().double().numpy(), [t.grad.double().numpy() for t in (xt, gt, bt)]


def _group_reference(x: np.ndarray, groups: int) -> tuple[np.ndarray, list[np.ndarray]]:
    gamma, beta = _params(x.shape[-1])
    n, *_, c = x.shape
    ct = np.random.default_rng(5).normal(size=x.shape).astype(x.dtype)
    flat, ct_flat = x.reshape(n, -1, c), ct.reshape(n, -1, c).astype(np.float64)
    view = ((n, flat.shape[1], groups, c // groups), (1, 3))
    y, dx, xhat = _reference(flat, gamma, beta, view, ct_flat)
    return y.reshape(x.shape), [dx.reshape(x.shape), (ct_flat * xhat).sum((0, 1)), ct_flat.sum((0, 1))]


def _assert_group_matches(x: np.ndarray, groups: int, tol: float) -> None:
    y, grads = _torch_group_case(x, groups)
    y_ref, grads_ref = _group_reference(x, groups)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=tol, err_msg="y")
    for label, got, want in zip(("dx", "dgamma", "dbeta"), grads, grads_ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * (np.abs(want).max() + 1), err_msg=label)


def _replace_guard(monkeypatch, key, **changes):
    """Replaces fields of one row of the fast paths' guard table for the test's duration (fast paths on)."""
    import dataclasses

    from normkit.core import fast

    monkeypatch.delenv("NORMKIT_DISABLE_FAST_PATHS", raising=False)
    monkeypatch.setitem(fast.GUARDS, key, dataclasses.replace(fast.GUARDS[key], **changes))


@torch_only
def test_guard_zero_mean_data_runs_the_kernel_once_without_a_shift(monkeypatch):
    from normkit.core.fast import torch_backend as tb

    kernel = _Counter(monkeypatch, tb, "_channels_last_kernel")
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 8)).astype("float32")
    _assert_group_matches(x, 4, 2e-5)
    assert kernel.calls == 1


@torch_only
def test_guard_shifts_data_with_a_large_mean_and_stays_exact(monkeypatch):
    from normkit.core.fast import torch_backend as tb

    kernel = _Counter(monkeypatch, tb, "_channels_last_kernel")
    x = np.random.default_rng(1).normal(1e4, 1.0, size=(4, 16, 16, 8)).astype("float32")
    _assert_group_matches(x, 4, 2e-5)
    assert kernel.calls == 1  # the sampled shift was good enough


@torch_only
def test_guard_reshifts_when_the_samples_mislead(monkeypatch):
    """Every sampled position holds an outlier: the sampled shift is far off, the kernel's c is large, and a
    second shift by the kernel's own mean gives the exact result."""
    from normkit.core.fast import torch_backend as tb

    kernel = _Counter(monkeypatch, tb, "_channels_last_kernel")
    x = np.random.default_rng(2).normal(1e3, 1.0, size=(2, 64, 64, 4)).astype("float32")
    step, _ = tb._sample_step(64 * 64, 2)  # the sampled positions (2 channels per group)
    flat = x.reshape(2, -1, 4)
    flat[:, ::step, :] += 400.0
    _assert_group_matches(x, 2, 2e-5)
    assert kernel.calls == 2


@torch_only
@pytest.mark.parametrize(
    ("loc", "scale", "shifts"),
    [(0.0, 1.0, False), (0.3, 1.0, False), (0.8, 1.0, True), (-1e4, 1.0, True), (1e20, 1e16, True)],
)
def test_sampled_pre_shift_decision(loc, scale, shifts):
    """The sampled decision against c = |mean| / std and the 0.5 threshold, from float64 sample statistics
    computed here; at 1e20 the sample's x^2 overflows float32 and must still ask for the shift."""
    import torch

    from normkit.core.fast import torch_backend as tb

    # [N, R, G, K] = 3 samples x 64 positions x 4 groups x 2 channels: 128 values per statistic.
    x = np.random.default_rng(7).normal(size=(3, 64, 4, 2))
    x = (loc + scale * (x - x.mean(axis=(1, 3), keepdims=True)) / x.std(axis=(1, 3), keepdims=True))
    sample = torch.tensor(x.astype("float32"))
    shift = tb._shift_from_sample(sample.reshape(3, 64, 8), 4)  # as group norm calls it: [N, R, C], 4 groups
    assert (shift is not None) == shifts
    if shifts:
        np.testing.assert_allclose(shift.double().numpy(), x.mean(axis=(1, 3)), rtol=1e-5, atol=0)


@torch_only
def test_guard_shifts_before_the_kernel_where_x_squared_overflows(monkeypatch):
    from normkit.core.fast import torch_backend as tb

    kernel = _Counter(monkeypatch, tb, "_channels_last_kernel")
    x = np.random.default_rng(8).normal(1e20, 1e16, size=(2, 16, 16, 8)).astype("float32")
    y, _ = _torch_group_case(x, 4)
    y_ref, _ = _group_reference(x, 4)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=PRECISE_TOL)
    assert kernel.calls == 1  # not a failed unshifted kernel run first


@torch_only
def test_guard_falls_back_to_two_pass_statistics(monkeypatch):
    from normkit.core.fast import torch_backend as tb

    _replace_guard(monkeypatch, ("torch", "group", "channels_last_cpu"), limit=-1.0)  # the guard never passes
    kernel = _Counter(monkeypatch, tb, "_channels_last_kernel")
    x = np.random.default_rng(3).normal(50.0, 2.0, size=(3, 8, 8, 6)).astype("float32")
    _assert_group_matches(x, 3, 2e-5)
    assert kernel.calls == 2


@torch_only
@pytest.mark.parametrize("family", ["layer", "batch"])
def test_guard_falls_back_for_layer_and_batch_norm(monkeypatch, family):
    _replace_guard(monkeypatch, ("torch", family, "cpu"), limit=-1.0)
    name = "layer_64k_features" if family == "layer" else "batch_dense_16k_rows"
    factory, fn, shape, view = CASES[name]
    layer, gamma, beta = _layer_with(factory, shape)
    x, ct = _rng_data(shape, 1e4)
    kwargs = {"training": True} if family == "batch" else {}
    y_ref, dx_ref, _ = _reference(x, gamma, beta, view, ct)
    dx, _, _ = autodiff(fn, [x, gamma, beta], ct)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x, **kwargs)), y_ref, rtol=0, atol=PRECISE_TOL)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=2e-3 * np.abs(dx_ref).max())


@torch_only
def test_channels_last_group_norm_gradcheck():
    """torch's own numerical gradient check of the analytic NHWC backward, in float64."""
    import torch

    from normkit.core.fast import torch_backend as tb

    with float64_enabled("float64"):
        x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
        w = torch.rand(6, dtype=torch.float64, requires_grad=True) + 0.5
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda *a: tb._GroupNormChannelsLast.apply(*a, 3, 1e-3), (x, w, b))
        assert torch.autograd.gradcheck(lambda a: tb._GroupNormChannelsLast.apply(a, None, None, 2, 1e-3), (x,))

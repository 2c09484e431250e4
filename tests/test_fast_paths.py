"""Fast paths (normkit.core.fast) against the portable keras.ops path and a float64 NumPy reference.

Forward and gradients (x, gamma, beta) on the backend under test, for each reduction shape the layers make,
including the numerics the spec pins down: a mean-1e4/std-1 input, float16 data with |x| up to 1000,
constant input (gives beta) and NaN confined to its group.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import keras
import numpy as np
import pytest
from keras import ops

import normkit
from normkit.core import fast

BACKEND = keras.backend.backend()


# ----------------------------------------------------------------------------------- float64 reference


def _ref_forward_backward(x, gamma, beta, ct, red_axes, param_axes, groups_axis=None, groups=None, eps=1e-3):
    """y and (dx, dgamma, dbeta) in float64 for the cotangent ct (the analytic VJP)."""
    x = x.astype(np.float64)
    ct = ct.astype(np.float64)
    shape = x.shape
    pshape = [1] * x.ndim
    for a in param_axes:
        pshape[a] = shape[a]
    g = gamma.astype(np.float64).reshape(pshape)
    b = beta.astype(np.float64).reshape(pshape)
    if groups_axis is not None:
        gshape = list(shape)
        gshape[groups_axis : groups_axis + 1] = [groups, shape[groups_axis] // groups]
        red = tuple(a if a < groups_axis else a + 1 for a in red_axes) + (groups_axis + 1,)
        xv, ctv = x.reshape(gshape), ct.reshape(gshape)
        g = g.reshape([*pshape[:groups_axis], groups, shape[groups_axis] // groups, *pshape[groups_axis + 1 :]])
        b = b.reshape(g.shape)
    else:
        red, xv, ctv = tuple(red_axes), x, ct
    mean = xv.mean(axis=red, keepdims=True)
    var = ((xv - mean) ** 2).mean(axis=red, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (xv - mean) * rstd
    y = xhat * g + b
    n = np.prod([xv.shape[a] for a in red])
    gg = ctv * g
    dx = rstd * (gg - gg.sum(axis=red, keepdims=True) / n - xhat * (gg * xhat).sum(axis=red, keepdims=True) / n)
    non_param = tuple(a for a in range(xv.ndim) if g.shape[a] == 1)
    dgamma = (ctv * xhat).sum(axis=non_param).reshape(gamma.shape)
    dbeta = ctv.sum(axis=non_param).reshape(beta.shape)
    return y.reshape(shape), (dx.reshape(shape), dgamma, dbeta), (mean, var)


# ------------------------------------------------------------------------------------ the cases


def _case_fns() -> dict[str, tuple]:
    """name -> (shape, channel axis, op(x, g, b), reference kwargs)."""
    return {
        "group_nhwc": ((3, 5, 4, 8), -1, lambda x, g, b: normkit.ops.group_norm(x, g, b, groups=4),
                       dict(red_axes=(1, 2), param_axes=(3,), groups_axis=3, groups=4)),
        "group_nchw": ((3, 8, 5, 4), 1, lambda x, g, b: normkit.ops.group_norm(x, g, b, groups=2, axis=1),
                       dict(red_axes=(2, 3), param_axes=(1,), groups_axis=1, groups=2)),
        "group_rank3_odd": ((2, 7, 6), -1, lambda x, g, b: normkit.ops.group_norm(x, g, b, groups=3),
                            dict(red_axes=(1,), param_axes=(2,), groups_axis=2, groups=3)),
        "group_rank2": ((5, 6), -1, lambda x, g, b: normkit.ops.group_norm(x, g, b, groups=2),
                        dict(red_axes=(), param_axes=(1,), groups_axis=1, groups=2)),
        "instance_nhwc": ((2, 5, 3, 6), -1, lambda x, g, b: normkit.ops.instance_norm(x, g, b),
                          dict(red_axes=(1, 2), param_axes=(3,), groups_axis=3, groups=6)),
        "instance_ncw": ((2, 6, 9), 1, lambda x, g, b: normkit.ops.instance_norm(x, g, b, axis=1),
                         dict(red_axes=(2,), param_axes=(1,), groups_axis=1, groups=6)),
        "layer_last": ((4, 3, 10), -1, lambda x, g, b: normkit.ops.layer_norm(x, g, b),
                       dict(red_axes=(2,), param_axes=(2,))),
        "layer_axis1": ((4, 5, 3), 1, lambda x, g, b: normkit.ops.layer_norm(x, g, b, axis=1),
                        dict(red_axes=(1,), param_axes=(1,))),
        "batch_last": ((6, 3, 2, 5), -1, lambda x, g, b: normkit.ops.batch_norm(x, None, None, g, b),
                       dict(red_axes=(0, 1, 2), param_axes=(3,))),
        "batch_first": ((6, 5, 3, 2), 1, lambda x, g, b: normkit.ops.batch_norm(x, None, None, g, b, axis=1),
                        dict(red_axes=(0, 2, 3), param_axes=(1,))),
        "batch_dense": ((16, 7), -1, lambda x, g, b: normkit.ops.batch_norm(x, None, None, g, b),
                        dict(red_axes=(0,), param_axes=(1,))),
    }  # fmt: skip


CASES = _case_fns()


def _set_fast(on: bool) -> None:
    if on:
        os.environ.pop("NORMKIT_DISABLE_FAST_PATHS", None)
    else:
        os.environ["NORMKIT_DISABLE_FAST_PATHS"] = "1"


@pytest.fixture(autouse=True)
def _restore_switch():
    old = os.environ.get("NORMKIT_DISABLE_FAST_PATHS")
    yield
    if old is None:
        os.environ.pop("NORMKIT_DISABLE_FAST_PATHS", None)
    else:
        os.environ["NORMKIT_DISABLE_FAST_PATHS"] = old


def _run(fn: Callable, x: np.ndarray, g: np.ndarray, b: np.ndarray, ct: np.ndarray, fast_on: bool):
    """(y, [dx, dgamma, dbeta]) as float64 NumPy, trained the way the backend trains."""
    _set_fast(fast_on)
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def loss(x, g, b):
            return jnp.sum(fn(x, g, b).astype(jnp.float32) * ct)

        y = jax.jit(fn)(jnp.asarray(x), g, b)
        grads = jax.jit(jax.grad(loss, (0, 1, 2)))(jnp.asarray(x), g, b)
    elif BACKEND == "torch":
        import torch

        xt = torch.tensor(x, requires_grad=True)
        gt, bt = torch.tensor(g, requires_grad=True), torch.tensor(b, requires_grad=True)
        y = fn(xt, gt, bt)
        (y.float() * torch.tensor(ct)).sum().backward()
        y, grads = y.detach(), (xt.grad, gt.grad, bt.grad)
    else:
        import tensorflow as tf

        gv, bv = tf.Variable(g), tf.Variable(b)

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x, gv, bv)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * ct)
            return y, tape.gradient(loss, [x, gv, bv])

        y, grads = step(tf.constant(x))
    to64 = lambda t: ops.convert_to_numpy(ops.cast(t, "float32")).astype(np.float64)  # noqa: E731
    return to64(y), [to64(t) for t in grads]


def _data(shape, channel_axis, dtype, loc, scale, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, scale, size=shape).astype(dtype)
    c = shape[channel_axis]
    g = rng.normal(1.0, 0.5, size=c).astype("float32")
    b = rng.normal(0.0, 0.5, size=c).astype("float32")
    ct = rng.normal(size=shape).astype("float32")
    return x, g, b, ct


def _check(name: str, dtype: str, loc: float, scale: float, y_tol: float, g_tol: float) -> None:
    shape, axis, fn, ref_kw = CASES[name]
    x, g, b, ct = _data(shape, axis, dtype, loc, scale)
    # The reference sees the values the op sees (x rounded to its dtype) and the cotangent.
    y_ref, grads_ref, _ = _ref_forward_backward(x.astype(np.float64), g, b, ct, **ref_kw)
    y_fast, grads_fast = _run(fn, x, g, b, ct, True)
    y_port, grads_port = _run(fn, x, g, b, ct, False)
    for label, y, grads in (("fast", y_fast, grads_fast), ("portable", y_port, grads_port)):
        np.testing.assert_allclose(y, y_ref, atol=y_tol, rtol=y_tol, err_msg=f"{label} y")
        for which, got, ref in zip(("dx", "dgamma", "dbeta"), grads, grads_ref, strict=True):
            bound = g_tol * (np.abs(ref).max() + 1.0)
            np.testing.assert_allclose(got, ref, atol=bound, rtol=g_tol, err_msg=f"{label} {which}")
    np.testing.assert_allclose(y_fast, y_port, atol=y_tol, rtol=y_tol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_matches_reference(name):
    _check(name, "float32", 3.0, 2.0, 2e-5, 2e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_mean_data_matches_reference(name):
    # Mean small against the spread: the CPU fast paths take their unshifted branches here (JAX's plain
    # one-pass sums, torch's kernels without a shift pass).
    _check(name, "float32", 0.0, 1.0, 2e-5, 2e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mean_1e4(name):
    # float32 holds 1e4 + N(0, 1) to ~5e-4; the statistics must not lose the variance on top of that.
    _check(name, "float32", 1e4, 1.0, 5e-3, 1e-2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float16_large_values(name):
    # |x| up to ~1000: squares overflow float16, statistics must be float32; y comes back in float16.
    _check(name, "float16", 0.0, 400.0, 2e-2, 2e-2)


@pytest.mark.parametrize("name", ["group_nhwc", "group_nchw", "instance_nhwc", "layer_last", "batch_last"])
def test_constant_input_gives_beta(name):
    shape, axis, fn, _ = CASES[name]
    x, g, b, ct = _data(shape, axis, "float32", 0.0, 1.0)
    x = np.full(shape, 7.25, "float32")
    y, grads = _run(fn, x, g, b, ct, True)
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    # Native kernels (torch) may round the mean of a constant by an ulp: (x - mean) * rsqrt(eps) is then ~1e-5.
    np.testing.assert_allclose(y, np.broadcast_to(b.reshape(bshape), shape), atol=1e-4)
    assert all(np.isfinite(t).all() for t in grads)


@pytest.mark.parametrize("name", ["group_nhwc", "group_nchw", "instance_nhwc", "layer_last"])
def test_nan_stays_in_its_group(name):
    shape, axis, fn, _ = CASES[name]
    x, g, b, _ = _data(shape, axis, "float32", 0.0, 1.0)
    x[0, ...] = x[0, ...]  # the first sample gets a NaN in its first element
    x.reshape(-1)[0] = np.nan
    _set_fast(True)
    y = ops.convert_to_numpy(fn(x, g, b))
    assert np.isnan(y.reshape(-1)[0])
    assert np.isfinite(y[1:]).all(), "NaN leaked into another sample"
    assert not np.isnan(y[0]).all() or name == "layer_last" and shape[1] == 1


def test_batch_norm_statistics_hook_matches_reference():
    shape = (6, 4, 3, 5)
    x, g, b, ct = _data(shape, -1, "float32", 1e4, 1.0)
    _set_fast(True)
    y, moments = normkit.ops.batch_norm_with_statistics(x, g, b)
    _, _, (mean, var) = _ref_forward_backward(x, g, b, ct, red_axes=(0, 1, 2), param_axes=(3,))
    np.testing.assert_allclose(ops.convert_to_numpy(moments.mean), mean.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(moments.variance), var.reshape(-1), rtol=2e-3)


def test_batch_norm_inference():
    shape = (6, 4, 5)
    x, g, b, _ = _data(shape, -1, "float32", 2.0, 3.0)
    mean = np.linspace(-1, 1, 5).astype("float32")
    var = np.linspace(0.5, 2, 5).astype("float32")
    _set_fast(True)
    y = ops.convert_to_numpy(normkit.ops.batch_norm(x, mean, var, g, b))
    ref = (x - mean) / np.sqrt(var + 1e-3) * g + b
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_layers_train_step_matches_portable():
    """A Group/Instance/Layer/Batch stack: one gradient step, fast vs portable, same loss and gradients."""
    x = np.random.default_rng(3).normal(5.0, 2.0, size=(4, 6, 6, 8)).astype("float32")
    results = []
    for on in (True, False):
        _set_fast(on)
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((6, 6, 8)),
                normkit.GroupNormalization(groups=4),
                normkit.InstanceNormalization(),
                normkit.LayerNormalization(axis=[1, 2, 3]),
                normkit.BatchNormalization(),
            ]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        loss = model.train_on_batch(x, np.zeros_like(x))
        results.append((loss, [ops.convert_to_numpy(w) for w in model.weights]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
    for a, c in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="dynamic batch under tf.function")
def test_dynamic_batch_under_tf_function():
    import tensorflow as tf

    _set_fast(True)
    layers = [normkit.GroupNormalization(groups=2), normkit.LayerNormalization(), normkit.BatchNormalization()]

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 4], tf.float32)])
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = x
            for layer in layers:
                y = layer(y, training=True) if isinstance(layer, normkit.BatchNormalization) else layer(y)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, x)

    for n in (3, 7):
        x = np.random.default_rng(n).normal(size=(n, 5, 4)).astype("float32")
        y, dx = step(tf.constant(x))
        assert y.shape == (n, 5, 4) and np.isfinite(dx.numpy()).all()


def test_fast_paths_are_registered():
    for family in fast.FAMILIES:
        assert fast.lookup(family) is not None, family


@pytest.mark.parametrize(
    "variant",
    [{"mask": np.ones((6, 4), "float32")}, {"centered": False}, {"cross_replica": lambda t: t}],
    ids=["mask", "uncentered", "cross_replica"],
)
@pytest.mark.parametrize("family", ["group", "layer", "batch"])
def test_fast_paths_decline_the_variants_they_do_not_implement(family, variant):
    """A variant argument no fast path implements is declined (NotImplemented), never silently dropped."""
    from normkit.core.normalize import batch_reduction, group_reduction, layer_reduction

    reduction = {
        "group": group_reduction(2, 1, 2),
        "layer": layer_reduction(2, (1,)),
        "batch": batch_reduction(2, (1,)),
    }[family]
    x = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(6, 4)).astype("float32"))
    fn = fast.lookup(family)
    assert fn(x, reduction, None, None, 1e-3) is not NotImplemented
    assert fn(x, reduction, None, None, 1e-3, **variant) is NotImplemented
    tensor_epsilon = keras.ops.convert_to_tensor(np.float32(1e-3))
    assert fn(x, reduction, None, None, tensor_epsilon) is NotImplemented

"""The core's variants (mask, centered=False, tensor epsilon, cross-replica sums) and numeric failures found by
use: compiled large offsets, 16-bit constant inputs, a bias without a scale, inputs in another float dtype,
masks that leave a statistic without data. Every expected value is float64 NumPy written here or in
`reference.py`."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import autodiff, backend_name, to_numpy

import normkit
from normkit.core.normalize import (
    batch_reduction,
    group_reduction,
    layer_reduction,
    normalize_with_batch_statistics,
)

# ------------------------------------------------------------------------------------------ references


def _standardized(x: np.ndarray, axes: tuple[int, ...], epsilon: float, weights: np.ndarray | None = None):
    """(xhat, count) in float64: weighted mean and biased variance over `axes`, xhat = 0 where count is 0."""
    w = np.ones_like(x) if weights is None else np.broadcast_to(weights, x.shape).astype(np.float64)
    count = w.sum(axis=axes, keepdims=True)
    safe = np.where(count > 0, count, 1.0)
    mean = (w * x).sum(axis=axes, keepdims=True) / safe
    variance = (w * (x - mean) ** 2).sum(axis=axes, keepdims=True) / safe
    xhat = np.where(count > 0, (x - mean) / np.sqrt(variance + epsilon), 0.0)
    return xhat, count


def _ghost_batch_norm(x: np.ndarray, virtual: int, gamma: np.ndarray, beta: np.ndarray, epsilon: float):
    """Ghost batches of tf.keras 2: x [B, C] viewed as [V, B/V, C], each column of the view its own batch."""
    view = x.reshape(virtual, -1, x.shape[-1])
    xhat, _ = _standardized(view, (0,), epsilon)
    return (xhat * gamma + beta).reshape(x.shape)


def _rms_norm(x, axes, gamma, beta, epsilon, weights=None):
    """y = x / sqrt(nu2 + epsilon) * gamma + beta, nu2 = weighted mean of x^2 over `axes` (0 where no data)."""
    w = np.ones_like(x) if weights is None else np.broadcast_to(weights, x.shape).astype(np.float64)
    count = w.sum(axis=axes, keepdims=True)
    nu2 = (w * x * x).sum(axis=axes, keepdims=True) / np.where(count > 0, count, 1.0)
    rstd = np.where(count > 0, 1.0 / np.sqrt(nu2 + epsilon), 0.0)
    return x * rstd * gamma + beta, rstd, count, w


def _rms_norm_grads(x, axes, gamma, epsilon, upstream, weights=None):
    """(dx, dgamma, depsilon) of sum(upstream * y) for `_rms_norm` (gamma over the last axis)."""
    _, rstd, count, w = _rms_norm(x, axes, gamma, 0.0, epsilon, weights)
    g = upstream * gamma
    inner = (g * x).sum(axis=axes, keepdims=True)  # sum_j g_j x_j per statistic
    dx = rstd * g - rstd**3 * w * x / np.where(count > 0, count, 1.0) * inner
    dgamma = (upstream * x * rstd).sum(axis=tuple(range(x.ndim - 1)))
    depsilon = float((-0.5 * rstd**3 * inner).sum())
    return dx, dgamma, depsilon


def _tensor(a: np.ndarray):
    return keras.ops.convert_to_tensor(a)


# ------------------------------------------------------------------------- compiled large offsets (jit)


def _compiled_training_call(layer, x: np.ndarray) -> np.ndarray:
    """layer.stateless_call(..., training=True) under the backend's compiler: jax.jit, tf.function with XLA;
    torch eagerly (no compiler reorders its arithmetic)."""
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]
    training = {"training": True} if isinstance(layer, normkit.BatchNormalization) else {}

    def step(t, n, xv):
        return layer.stateless_call(t, n, xv, **training)[0]

    if backend_name() == "jax":
        import jax

        return to_numpy(jax.jit(step)(trainable, non_trainable, x))
    if backend_name() == "tensorflow":
        import tensorflow as tf

        return to_numpy(tf.function(step, jit_compile=True)(trainable, non_trainable, tf.constant(x)))
    return to_numpy(step(trainable, non_trainable, _tensor(x)))


_OFFSET_CASES = [
    (
        "ghost",
        lambda: normkit.BatchNormalization(virtual_batch_size=3),
        lambda x, g, b: _ghost_batch_norm(x, 3, g, b, 1e-3),
    ),
    # r and d clipped to 1 and 0: the renorm path with plain batch normalization's output.
    (
        "renorm",
        lambda: normkit.BatchNormalization(renorm=True, renorm_clipping={"rmin": 1.0, "rmax": 1.0, "dmax": 0.0}),
        lambda x, g, b: ref.batch_norm(x, g, b, axis=-1),
    ),
    ("batch", lambda: normkit.BatchNormalization(), lambda x, g, b: ref.batch_norm(x, g, b, axis=-1)),
    ("layer", lambda: normkit.LayerNormalization(), lambda x, g, b: ref.layer_norm(x, g, b, axis=-1)),
    ("group", lambda: normkit.GroupNormalization(groups=4), lambda x, g, b: ref.group_norm(x, g, b, groups=4)),
    ("instance", lambda: normkit.InstanceNormalization(), lambda x, g, b: ref.instance_norm(x, g, b)),
]


@pytest.mark.parametrize(("name", "factory", "reference"), _OFFSET_CASES, ids=[c[0] for c in _OFFSET_CASES])
def test_compiled_training_keeps_a_large_common_offset(name, factory, reference):
    """1e4 + N(0, 1) data and a constant 4.93e4 under jax.jit / XLA: within 1e-4 of float64 (a computed
    shift, recomputed differently in two fusions, was 1e-2 off for ghost batches; 4.6e-2 for the constant)."""
    rng = np.random.default_rng(0)
    shape = (12, 32) if name in ("ghost", "renorm", "batch", "layer") else (12, 6, 8)
    layer = factory()
    layer.build(shape)
    gamma = rng.uniform(0.5, 1.5, size=layer.gamma.shape).astype("float32")
    beta = rng.normal(size=layer.beta.shape).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    x = (1e4 + rng.normal(size=shape)).astype("float32")
    y = _compiled_training_call(layer, x)
    np.testing.assert_allclose(y, reference(x.astype(np.float64), gamma, beta), rtol=0, atol=1e-4)
    constant = np.full(shape, 4.93e4, "float32")
    y_constant = _compiled_training_call(layer, constant)
    np.testing.assert_allclose(y_constant, np.broadcast_to(beta, shape), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------ 16-bit constant inputs give beta

_SIXTEEN_BIT_LAYERS = [
    ("batch", lambda **kw: normkit.BatchNormalization(**kw), {"training": True}),
    ("layer", lambda **kw: normkit.LayerNormalization(**kw), {}),
    ("group", lambda **kw: normkit.GroupNormalization(groups=2, **kw), {}),
    ("group_first", lambda **kw: normkit.GroupNormalization(groups=2, axis=1, **kw), {}),
    ("instance", lambda **kw: normkit.InstanceNormalization(**kw), {}),
]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("epsilon", [1e-3, 1e-7])
@pytest.mark.parametrize(("name", "factory", "kwargs"), _SIXTEEN_BIT_LAYERS, ids=[c[0] for c in _SIXTEEN_BIT_LAYERS])
def test_sixteen_bit_constant_input_gives_beta(name, factory, kwargs, epsilon, policy):
    """A constant -6e4 batch in 16 bits: xhat is exactly 0, so y = beta = 0 (torch's native kernels gave
    |y| = 0.06 at epsilon 1e-3 and 2.6 at 1e-7 from their float32 mean being an ulp off)."""
    layer = factory(center=False, epsilon=epsilon, dtype=policy)
    x = np.full((8, 4, 4), -6e4, "float32")
    y = to_numpy(layer(x, **kwargs)).astype(np.float64)
    assert np.abs(y).max() == 0.0, np.abs(y).max()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sixteen_bit_constant_input_to_ops_layer_norm(dtype):
    x = keras.ops.cast(np.full((4, 16), -6e4, "float32"), dtype)
    y = to_numpy(normkit.ops.layer_norm(x, epsilon=1e-7)).astype(np.float64)
    assert np.abs(y).max() == 0.0, np.abs(y).max()


# --------------------------------------------------------------------- a bias without a scale (backward)


def test_group_norm_channels_first_with_bias_and_no_scale_has_gradients():
    """groups=3, axis=1, center=True, scale=False: torch's backward raised 'tensor does not have a device'."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 6, 5, 4)).astype("float32")
    beta = rng.normal(size=(6,)).astype("float32")
    upstream = rng.normal(size=x.shape).astype("float32")

    def fn(xv, b):
        return normkit.ops.group_norm(xv, None, b, groups=3, axis=1)

    dx, dbeta = autodiff(fn, [x, beta], upstream)
    dx_ref, _, dbeta_ref = ref.group_norm_grad(x.astype(np.float64), None, upstream, groups=3, axis=1)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=0, atol=1e-4)


# --------------------------------------------------------------------- inputs in another float dtype

_CAST_LAYERS = [
    ("batch", lambda: normkit.BatchNormalization(), {"training": True}, lambda x, g, b: ref.batch_norm(x, g, b)),
    ("layer", lambda: normkit.LayerNormalization(), {}, lambda x, g, b: ref.layer_norm(x, g, b)),
    ("group", lambda: normkit.GroupNormalization(groups=2), {}, lambda x, g, b: ref.group_norm(x, g, b, groups=2)),
    ("instance", lambda: normkit.InstanceNormalization(), {}, lambda x, g, b: ref.instance_norm(x, g, b)),
]


@pytest.mark.parametrize(("name", "factory", "kwargs", "reference"), _CAST_LAYERS, ids=[c[0] for c in _CAST_LAYERS])
def test_call_casts_a_float16_input_to_the_compute_dtype(name, factory, kwargs, reference):
    """`stateless_call` (no autocast) with a float16 input under the float32 policy: float32 output and a gamma
    gradient at float32 accuracy (a float16 output made it 4e-4 off)."""
    rng = np.random.default_rng(5)
    x16 = rng.normal(size=(16, 8)).astype("float16")
    layer = factory()
    layer.build(x16.shape)
    beta = rng.normal(size=layer.beta.shape).astype("float32")
    non_trainable = [v.value for v in layer.non_trainable_variables]
    upstream = rng.normal(size=x16.shape).astype("float32")
    x = x16.astype(np.float64)

    def fn(g):
        return layer.stateless_call([g, _tensor(beta)], non_trainable, _tensor(x16), **kwargs)[0]

    gamma = np.ones(layer.gamma.shape, "float32")
    y = fn(_tensor(gamma))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(y), reference(x, gamma, beta), rtol=0, atol=2e-5)
    (dgamma,) = autodiff(fn, [gamma], upstream)
    dgamma_ref = (upstream * (reference(x, gamma, 0 * beta))).sum(axis=0)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=0, atol=2e-5 * np.abs(dgamma_ref).max())


# ------------------------------------------------------------------------- statistics without data


def test_fully_masked_batch_gives_beta_and_updates_nothing():
    """tf.keras 2 and Keras 3 give finite outputs here; normkit gives xhat = 0 (y = beta) and keeps the moving
    statistics (Keras 3 would move them toward 0)."""
    rng = np.random.default_rng(9)
    layer = normkit.BatchNormalization(momentum=0.5)
    x = rng.normal(3.0, 2.0, size=(6, 4)).astype("float32")
    layer.build(x.shape)
    beta = rng.normal(size=(4,)).astype("float32")
    layer.beta.assign(beta)
    y = to_numpy(layer(x, training=True, mask=np.zeros((6, 4), "float32")))
    np.testing.assert_array_equal(y, np.broadcast_to(beta, x.shape))
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(4))
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(4))


def test_one_fully_masked_feature_is_beta_and_keeps_its_moving_statistics():
    rng = np.random.default_rng(10)
    layer = normkit.BatchNormalization(momentum=0.5)
    x = rng.normal(3.0, 2.0, size=(6, 4)).astype("float32")
    layer.build(x.shape)
    beta = rng.normal(size=(4,)).astype("float32")
    layer.beta.assign(beta)
    mask = np.ones((6, 4), "float32")
    mask[:, 2] = 0.0
    mask[1, 0] = 0.0
    y = to_numpy(layer(x, training=True, mask=mask))
    xhat, _ = _standardized(x.astype(np.float64), (0,), 1e-3, mask)
    np.testing.assert_allclose(y, xhat + beta, rtol=0, atol=2e-5)
    assert y[:, 2].tolist() == [beta[2]] * 6
    mean = (mask * x).sum(0) / np.maximum(mask.sum(0), 1)
    moving_mean = to_numpy(layer.moving_mean)
    assert moving_mean[2] == 0.0 and np.isfinite(to_numpy(layer.moving_variance)).all()
    np.testing.assert_allclose(moving_mean[[0, 1, 3]], 0.5 * mean[[0, 1, 3]], rtol=1e-5)


@pytest.mark.parametrize(
    ("reduction", "shape", "axes_grouped"),
    [
        (group_reduction(3, 2, 2), (2, 5, 6), None),
        (group_reduction(3, 1, 3), (2, 6, 5), None),
        (layer_reduction(3, (1, 2)), (3, 4, 5), (1, 2)),
        (batch_reduction(3, (2,)), (3, 4, 5), (0, 1)),
    ],
    ids=["group_last", "group_first", "layer", "batch"],
)
def test_mask_in_every_reduction_matches_the_weighted_reference(reduction, shape, axes_grouped):
    """A mask with zeros (one statistic left without data) for every family, and its gradient."""
    rng = np.random.default_rng(11)
    x = rng.normal(1e3, 1.0, size=shape).astype("float32")
    mask = (rng.uniform(size=shape[:2] + (1,)) > 0.3).astype("float32")
    mask[0] = 0.0  # sample 0 without data: group/layer statistics over nothing
    params = tuple(shape[a] for a in reduction.param_axes)
    gamma = rng.uniform(0.5, 1.5, size=params).astype("float32")
    beta = rng.normal(size=params).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    param_view = [shape[a] if a in reduction.param_axes else 1 for a in range(3)]

    def expected(xv):
        view, w, axes = xv, np.broadcast_to(mask, shape), axes_grouped
        if reduction.group_axis is not None:
            g = reduction.group_axis
            grouped = list(shape)
            grouped[g : g + 1] = [reduction.groups, shape[g] // reduction.groups]
            view, w = xv.reshape(grouped), w.reshape(grouped)
            axes = tuple(a for a in range(1, 4) if a != g)
        xhat, _ = _standardized(view, axes, 1e-3, w)
        return xhat.reshape(shape) * gamma.reshape(param_view) + beta.reshape(param_view)

    def fn(xv):
        return normalize_with_batch_statistics(xv, reduction, _tensor(gamma), _tensor(beta), 1e-3, mask=_tensor(mask))

    x64 = x.astype(np.float64)
    np.testing.assert_allclose(to_numpy(fn(_tensor(x))), expected(x64), rtol=0, atol=5e-5)
    assert np.isfinite(to_numpy(fn(_tensor(x)))).all()
    (dx,) = autodiff(fn, [x], upstream)
    step = 1e-6
    probe = rng.normal(size=shape)
    numeric = ((expected(x64 + step * probe) - expected(x64 - step * probe)) * upstream).sum() / (2 * step)
    assert np.isfinite(dx).all()
    np.testing.assert_allclose((dx * probe).sum(), numeric, rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------- centered=False (RMS norm)


@pytest.mark.parametrize("masked", [False, True])
def test_uncentered_statistics_and_their_gradients(masked):
    """centered=False: y = x / sqrt(mean(x^2) + epsilon) * gamma + beta, with a tensor epsilon whose gradient
    flows (FilterResponseNormalization learns it)."""
    rng = np.random.default_rng(12)
    x = rng.normal(0.5, 2.0, size=(4, 3, 6)).astype("float32")
    weights = (rng.uniform(size=(4, 3, 1)) > 0.3).astype("float32") if masked else None
    if masked:
        weights[1] = 0.0
    gamma = rng.uniform(0.5, 1.5, size=(6,)).astype("float32")
    beta = rng.normal(size=(6,)).astype("float32")
    epsilon = np.asarray(0.05, "float32")
    upstream = rng.normal(size=x.shape).astype("float32")
    reduction = layer_reduction(3, (1, 2))
    gamma_full = np.broadcast_to(gamma, (3, 6)).copy()
    beta_full = np.broadcast_to(beta, (3, 6)).copy()

    def fn(xv, g, eps):
        mask = None if weights is None else _tensor(weights)
        return normalize_with_batch_statistics(xv, reduction, g, _tensor(beta_full), eps, mask=mask, centered=False)

    y = to_numpy(fn(_tensor(x), _tensor(gamma_full), _tensor(epsilon)))
    x64 = x.astype(np.float64)
    y_ref, *_ = _rms_norm(x64, (1, 2), gamma_full, beta_full, 0.05, weights)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=2e-5)
    dx, dgamma, depsilon = autodiff(fn, [x, gamma_full, epsilon], upstream)
    dx_ref, _, depsilon_ref = _rms_norm_grads(x64, (1, 2), gamma_full, 0.05, upstream, weights)
    dgamma_ref = (upstream * _rms_norm(x64, (1, 2), 1.0, 0.0, 0.05, weights)[0]).sum(axis=0)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(float(depsilon), depsilon_ref, rtol=1e-4)


def test_uncentered_statistics_are_returned_as_mean_zero_and_nu2():
    x = np.random.default_rng(13).normal(1.0, 1.0, size=(5, 4)).astype("float32")
    _, stats = normalize_with_batch_statistics(
        _tensor(x), batch_reduction(2, (1,)), None, None, 1e-3, centered=False, return_statistics=True
    )
    np.testing.assert_array_equal(to_numpy(stats.mean), np.zeros((1, 4)))
    np.testing.assert_allclose(to_numpy(stats.variance), (x.astype(np.float64) ** 2).mean(0, keepdims=True), rtol=1e-6)


# ------------------------------------------------------------------------------ cross-replica statistics


def _replicated(xs, masks, reduction, gamma, beta, centered=True):
    """Each replica's normalize_with_batch_statistics with a `cross_replica` hook that sums its tensors with
    what the other replicas sent in the same exchange. Run to a fixed point: every run uses the other
    replicas' messages of the previous run, so after (exchanges + 1) runs every message is the protocol's
    own function of all inputs (values and gradients)."""
    replicas = len(xs)
    sent_before: list[list] = [[] for _ in range(replicas)]
    for _ in range(3):  # two exchanges
        sent_now: list[list] = [[] for _ in range(replicas)]
        outputs = []
        for r in range(replicas):

            def hook(tensors, r=r, sent_now=sent_now, sent_before=sent_before):
                exchange = len(sent_now[r])
                sent_now[r].append(tensors)
                totals = list(tensors)
                for q in range(replicas):
                    if q != r and exchange < len(sent_before[q]):
                        totals = [t + o for t, o in zip(totals, sent_before[q][exchange], strict=True)]
                return tuple(totals)

            mask = None if masks[r] is None else _tensor(masks[r])
            outputs.append(
                normalize_with_batch_statistics(
                    xs[r], reduction, gamma, beta, 1e-3, mask=mask, centered=centered, cross_replica=hook
                )
            )
        sent_before = sent_now
    return outputs


@pytest.mark.parametrize("case", ["uneven", "empty_replica", "uncentered"])
def test_cross_replica_statistics_are_those_of_the_whole_batch(case):
    """Two or three replicas of a mean-1e4 batch with different row counts (and one without any unmasked row):
    outputs and the gradient w.r.t. every replica's x equal those of the concatenated batch (float64)."""
    rng = np.random.default_rng(14)
    sizes = (5, 7, 3) if case == "empty_replica" else (5, 7)
    xs = [(1e4 + rng.normal(size=(n, 4))).astype("float32") for n in sizes]
    masks = [None] * len(sizes)
    if case == "empty_replica":
        masks[2] = np.zeros((3, 1), "float32")
    gamma = rng.uniform(0.5, 1.5, size=(4,)).astype("float32")
    beta = rng.normal(size=(4,)).astype("float32")
    centered = case != "uncentered"
    upstream = rng.normal(size=(sum(sizes), 4)).astype("float32")
    reduction = batch_reduction(2, (1,))

    def fn(*parts):
        ys = _replicated(list(parts), masks, reduction, _tensor(gamma), _tensor(beta), centered)
        return keras.ops.concatenate(ys, axis=0)

    x = np.concatenate(xs).astype(np.float64)
    weights = np.concatenate([np.ones((n, 1)) if m is None else m for n, m in zip(sizes, masks, strict=True)])
    if centered:
        xhat, _ = _standardized(x, (0,), 1e-3, weights)
        expected = xhat * gamma + beta
    else:
        expected = _rms_norm(x, (0,), gamma, beta, 1e-3, weights)[0]
    y = to_numpy(fn(*[_tensor(p) for p in xs]))
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4 if centered else 2e-5)
    grads = autodiff(fn, xs, upstream)
    dx = np.concatenate(grads)
    if centered:
        count = weights.sum()
        mean = (weights * x).sum(0) / count
        rstd = 1.0 / np.sqrt((weights * (x - mean) ** 2).sum(0) / count + 1e-3)
        xhat = (x - mean) * rstd
        g = upstream * gamma
        # Every row's y depends on the mean and variance; only weighted rows move them.
        dx_ref = rstd * (g - weights * (g.sum(0) + xhat * (g * xhat).sum(0)) / count)
    else:
        dx_ref = _rms_norm_grads(x, (0,), gamma, 1e-3, upstream, weights)[0]
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=2e-3 * np.abs(dx_ref).max())


def test_cross_replica_hook_must_return_one_sum_per_tensor():
    x = _tensor(np.ones((3, 2), "float32"))
    with pytest.raises(ValueError, match="cross_replica"):
        normalize_with_batch_statistics(x, batch_reduction(2, (1,)), None, None, 1e-3, cross_replica=lambda t: t[:1])

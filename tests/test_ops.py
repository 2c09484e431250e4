"""normkit.ops (the functional API) vs the float64 reference: forward, gradients, compiled vs eager."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference as ref
from _helpers import apply, assert_close, autodiff, backend_name, compile_fn, random_normal, to_numpy

import normkit

GROUP_CASES = [
    # (shape, axis, groups)
    ((4, 6), -1, 3),  # rank 2
    ((4, 6), 1, 1),
    ((3, 5, 6), -1, 2),
    ((3, 6, 5), 1, 3),  # channels first
    ((3, 6, 5), -2, 2),  # a negative axis other than -1 (Addons reduced the wrong axes)
    ((2, 5, 7, 6), -1, 3),  # groups = C/2
    ((2, 6, 5, 7), 1, -1),  # groups = -1 (one per channel), channels first
    ((2, 5, 4, 3), -3, 5),  # groups = C on a negative non-last axis (an Addons bug)
    ((2, 3, 5, 9), 3, 1),  # groups = 1
    ((2, 4, 3, 5, 4), -1, 2),  # rank 5
    ((2, 4, 3, 5, 4), 1, 4),  # rank 5, channels first, groups = C
    ((1, 7, 3, 9), -1, 9),  # batch of one, odd sizes
]

LAYER_CASES = [
    ((4, 7), -1),
    ((3, 5, 6), [1, 2]),
    ((2, 3, 4, 5), [1, 2, 3]),
    ((2, 3, 4, 5), [1, 3]),
    ((2, 3, 4, 5), [-2, -1]),
    ((2, 3, 4, 5), [3, 1]),  # unsorted: gamma still has the ascending-axis shape (3, 5)
    ((2, 3, 4, 5), 1),
    ((2, 3, 2, 5, 3), (2, 4)),
]

BATCH_CASES = [
    ((8, 5), -1),
    ((4, 3, 5, 6), 1),
    ((4, 3, 5, 6), -1),
    ((4, 5, 6), [1, 2]),
    ((3, 2, 4, 3, 2), 4),
]


def _param_shape(shape, axes):
    axes = [axes] if isinstance(axes, int) else list(axes)
    return tuple(shape[a % len(shape)] for a in sorted(a % len(shape) for a in axes))


def _affine(rng, param_shape):
    gamma = rng.uniform(0.5, 1.5, size=param_shape).astype("float32")
    beta = rng.normal(size=param_shape).astype("float32")
    return gamma, beta


def t(a):
    return keras.ops.convert_to_tensor(a)


# --- the reference itself ------------------------------------------------------------------------------


def test_reference_gradients_match_finite_differences():
    """The reference's analytic gradients vs central differences in float64 (checks the reference itself)."""
    rng = np.random.default_rng(0)
    cases = [
        (lambda x, g, b: ref.group_norm(x, g, b, groups=2, axis=1, epsilon=1e-3),
         lambda x, g, up: ref.group_norm_grad(x, g, up, groups=2, axis=1, epsilon=1e-3), (2, 4, 3), (4,)),
        (lambda x, g, b: ref.layer_norm(x, g, b, axis=[1, 3], epsilon=1e-3),
         lambda x, g, up: ref.layer_norm_grad(x, g, up, axis=[1, 3], epsilon=1e-3), (2, 3, 2, 2), (3, 2)),
        (lambda x, g, b: ref.batch_norm(x, g, b, axis=-1, epsilon=1e-3),
         lambda x, g, up: ref.batch_norm_grad(x, g, up, axis=-1, epsilon=1e-3), (4, 3), (3,)),
    ]
    h = 1e-6
    for forward, backward, shape, pshape in cases:
        x = rng.normal(size=shape)
        gamma = rng.uniform(0.5, 1.5, size=pshape)
        beta = rng.normal(size=pshape)
        up = rng.normal(size=shape)
        dx, dgamma, dbeta = backward(x, gamma, up)
        for arr, analytic in ((x, dx), (gamma, dgamma), (beta, dbeta)):
            numeric = np.zeros_like(arr)
            for i in np.ndindex(arr.shape):
                saved = arr[i]
                arr[i] = saved + h
                plus = np.sum(forward(x, gamma, beta) * up)
                arr[i] = saved - h
                minus = np.sum(forward(x, gamma, beta) * up)
                arr[i] = saved
                numeric[i] = (plus - minus) / (2 * h)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)


def test_reference_normalizes():
    """Sanity of the reference on a hand-checkable case: two groups of two channels."""
    x = np.array([[1.0, 3.0, 10.0, 10.0]])
    y = ref.group_norm(x, groups=2, epsilon=1e-12)
    np.testing.assert_allclose(y[0, :2], [-1.0, 1.0])
    np.testing.assert_allclose(y[0, 2:], [0.0, 0.0])


# --- forward -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,axis,groups", GROUP_CASES)
def test_group_norm_matches_reference(shape, axis, groups):
    rng = np.random.default_rng(1)
    x = random_normal(rng, shape, loc=0.5, scale=2.0)
    gamma, beta = _affine(rng, (shape[axis],))
    y = apply(lambda *a: normkit.ops.group_norm(*a, groups=groups, axis=axis, epsilon=1e-3), x, gamma, beta)
    assert tuple(y.shape) == shape
    assert_close(y, ref.group_norm(x, gamma, beta, groups=groups, axis=axis, epsilon=1e-3))


@pytest.mark.parametrize("shape,axis,groups", GROUP_CASES[:4])
def test_group_norm_without_affine(shape, axis, groups):
    x = random_normal(np.random.default_rng(2), shape)
    y = apply(lambda a: normkit.ops.group_norm(a, groups=groups, axis=axis, epsilon=1e-5), x)
    assert_close(y, ref.group_norm(x, groups=groups, axis=axis, epsilon=1e-5))


def test_group_norm_accepts_numpy():
    x = random_normal(np.random.default_rng(3), (2, 4, 6))
    assert_close(normkit.ops.group_norm(x, groups=3), ref.group_norm(x, groups=3))


@pytest.mark.parametrize("shape,axis", [((2, 5, 6), -1), ((3, 4, 5, 2), 1), ((4, 3), -1), ((2, 3, 4, 2, 3), 4)])
def test_instance_norm_matches_reference(shape, axis):
    rng = np.random.default_rng(4)
    x = random_normal(rng, shape, scale=3.0)
    gamma, beta = _affine(rng, (shape[axis],))
    y = apply(lambda *a: normkit.ops.instance_norm(*a, axis=axis, epsilon=1e-3), x, gamma, beta)
    assert_close(y, ref.instance_norm(x, gamma, beta, axis=axis, epsilon=1e-3))


@pytest.mark.parametrize("shape,axis", LAYER_CASES)
def test_layer_norm_matches_reference(shape, axis):
    rng = np.random.default_rng(5)
    x = random_normal(rng, shape, loc=-1.0, scale=2.0)
    gamma, beta = _affine(rng, _param_shape(shape, axis))
    y = apply(lambda *a: normkit.ops.layer_norm(*a, axis=axis, epsilon=1e-3), x, gamma, beta)
    assert_close(y, ref.layer_norm(x, gamma, beta, axis=axis, epsilon=1e-3))
    y0 = apply(lambda a: normkit.ops.layer_norm(a, axis=axis, epsilon=1e-4), x)
    assert_close(y0, ref.layer_norm(x, axis=axis, epsilon=1e-4))


@pytest.mark.parametrize("shape,axis", BATCH_CASES)
def test_batch_norm_batch_statistics_matches_reference(shape, axis):
    rng = np.random.default_rng(6)
    x = random_normal(rng, shape, loc=2.0, scale=3.0)
    gamma, beta = _affine(rng, _param_shape(shape, axis))
    y = apply(lambda *a: normkit.ops.batch_norm(a[0], gamma=a[1], beta=a[2], axis=axis, epsilon=1e-3), x, gamma, beta)
    assert_close(y, ref.batch_norm(x, gamma, beta, axis=axis, epsilon=1e-3))

    def with_stats(*a):
        y2, stats = normkit.ops.batch_norm_with_statistics(*a, axis=axis, epsilon=1e-3)
        return keras.ops.concatenate([keras.ops.reshape(y2, (-1,)), keras.ops.reshape(stats.mean, (-1,)),
                                      keras.ops.reshape(stats.variance, (-1,))])

    got = apply(with_stats, x, gamma, beta)
    mean, var = ref.batch_statistics(x, axis=axis)
    expected = np.concatenate([ref.batch_norm(x, gamma, beta, axis=axis, epsilon=1e-3).ravel(), mean.ravel(),
                               var.ravel()])  # the variance is the biased one: divided by N
    assert_close(got, expected)


@pytest.mark.parametrize("shape,axis", BATCH_CASES)
def test_batch_norm_statistics_carry_no_gradient(shape, axis):
    """Gradients of y + (terms in the returned statistics) are y's alone on every backend: the fast paths'
    native kernels give none for the statistics, so none is given anywhere."""
    rng = np.random.default_rng(8)
    x = random_normal(rng, shape, loc=2.0, scale=3.0)
    gamma, beta = _affine(rng, _param_shape(shape, axis))
    ct = random_normal(rng, shape)

    def with_stats(*a):
        y, stats = normkit.ops.batch_norm_with_statistics(*a, axis=axis, epsilon=1e-3)
        return y + 3.0 * keras.ops.sum(stats.mean) + keras.ops.sum(stats.variance)

    def plain(*a):
        return normkit.ops.batch_norm(a[0], gamma=a[1], beta=a[2], axis=axis, epsilon=1e-3)

    inputs = [x, gamma, beta]
    for got, want in zip(autodiff(with_stats, inputs, ct), autodiff(plain, inputs, ct), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("shape,axis", BATCH_CASES)
def test_batch_norm_given_statistics_matches_reference(shape, axis):
    rng = np.random.default_rng(7)
    x = random_normal(rng, shape)
    pshape = _param_shape(shape, axis)
    gamma, beta = _affine(rng, pshape)
    mean = rng.normal(size=pshape).astype("float32")
    var = rng.uniform(0.2, 3.0, size=pshape).astype("float32")
    y = apply(lambda *a: normkit.ops.batch_norm(*a, axis=axis, epsilon=1e-3), x, mean, var, gamma, beta)
    assert_close(y, ref.batch_norm_given(x, mean, var, gamma, beta, axis=axis, epsilon=1e-3))


def test_epsilon_is_inside_the_square_root():
    # Variance 0.25 per group; a large epsilon makes the difference between sqrt(var + eps) and sqrt(var) + eps.
    x = np.array([[0.0, 1.0, 0.0, 1.0]], dtype="float32")
    y = to_numpy(normkit.ops.group_norm(t(x), groups=1, epsilon=0.75))
    np.testing.assert_allclose(y, [[-0.5, 0.5, -0.5, 0.5]], rtol=1e-6)


# --- gradients -----------------------------------------------------------------------------------------


def _check_grads(grads, expected):
    for got, want in zip(grads, expected, strict=True):
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("shape,axis,groups", [GROUP_CASES[i] for i in (0, 3, 4, 5, 7, 9)])
def test_group_norm_gradients(shape, axis, groups):
    rng = np.random.default_rng(8)
    x = random_normal(rng, shape, scale=2.0)
    gamma, beta = _affine(rng, (shape[axis],))
    up = random_normal(rng, shape)
    grads = autodiff(
        lambda a, g, b: normkit.ops.group_norm(a, g, b, groups=groups, axis=axis, epsilon=1e-3), [x, gamma, beta], up
    )
    _check_grads(grads, ref.group_norm_grad(x, gamma, up, groups=groups, axis=axis, epsilon=1e-3))


def test_instance_norm_gradients():
    rng = np.random.default_rng(9)
    shape = (2, 3, 5, 4)
    x = random_normal(rng, shape)
    gamma, beta = _affine(rng, (4,))
    up = random_normal(rng, shape)
    grads = autodiff(lambda a, g, b: normkit.ops.instance_norm(a, g, b, epsilon=1e-3), [x, gamma, beta], up)
    _check_grads(grads, ref.instance_norm_grad(x, gamma, up, epsilon=1e-3))


@pytest.mark.parametrize("shape,axis", [LAYER_CASES[i] for i in (0, 2, 3, 5)])
def test_layer_norm_gradients(shape, axis):
    rng = np.random.default_rng(10)
    x = random_normal(rng, shape)
    gamma, beta = _affine(rng, _param_shape(shape, axis))
    up = random_normal(rng, shape)
    grads = autodiff(lambda a, g, b: normkit.ops.layer_norm(a, g, b, axis=axis, epsilon=1e-3), [x, gamma, beta], up)
    _check_grads(grads, ref.layer_norm_grad(x, gamma, up, axis=axis, epsilon=1e-3))


@pytest.mark.parametrize("shape,axis", [BATCH_CASES[i] for i in (0, 1, 3)])
def test_batch_norm_gradients(shape, axis):
    rng = np.random.default_rng(11)
    x = random_normal(rng, shape)
    pshape = _param_shape(shape, axis)
    gamma, beta = _affine(rng, pshape)
    up = random_normal(rng, shape)
    grads = autodiff(lambda a, g, b: normkit.ops.batch_norm(a, gamma=g, beta=b, axis=axis), [x, gamma, beta], up)
    _check_grads(grads, ref.batch_norm_grad(x, gamma, up, axis=axis, epsilon=1e-3))

    mean = rng.normal(size=pshape).astype("float32")
    var = rng.uniform(0.2, 3.0, size=pshape).astype("float32")
    grads = autodiff(
        lambda a, g, b: normkit.ops.batch_norm(a, t(mean), t(var), g, b, axis=axis), [x, gamma, beta], up
    )
    _check_grads(grads, ref.batch_norm_given_grad(x, mean, var, gamma, up, axis=axis, epsilon=1e-3))


# --- compiled vs eager ---------------------------------------------------------------------------------

COMPILED_CASES = [
    ("group", (3, 6, 5, 4), lambda x, g, b: normkit.ops.group_norm(x, g, b, groups=2, axis=1), (6,)),
    ("group_last", (3, 5, 6), lambda x, g, b: normkit.ops.group_norm(x, g, b, groups=3), (6,)),
    ("instance", (3, 5, 4, 6), lambda x, g, b: normkit.ops.instance_norm(x, g, b, axis=-1), (6,)),
    ("layer", (3, 4, 5, 6), lambda x, g, b: normkit.ops.layer_norm(x, g, b, axis=[1, 3]), (4, 6)),
    ("batch", (6, 5, 4), lambda x, g, b: normkit.ops.batch_norm(x, gamma=g, beta=b, axis=-1), (4,)),
]


@pytest.mark.parametrize("name,shape,fn,pshape", COMPILED_CASES, ids=[c[0] for c in COMPILED_CASES])
def test_compiled_matches_eager(name, shape, fn, pshape):
    compiled = compile_fn(fn)
    rng = np.random.default_rng(12)
    x = random_normal(rng, shape)
    gamma, beta = _affine(rng, pshape)
    eager = to_numpy(fn(t(x), t(gamma), t(beta)))
    graph = to_numpy(compiled(t(x), t(gamma), t(beta)))
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-5)
    ref_fn = {
        "group": lambda: ref.group_norm(x, gamma, beta, groups=2, axis=1),
        "group_last": lambda: ref.group_norm(x, gamma, beta, groups=3),
        "instance": lambda: ref.instance_norm(x, gamma, beta),
        "layer": lambda: ref.layer_norm(x, gamma, beta, axis=[1, 3]),
        "batch": lambda: ref.batch_norm(x, gamma, beta),
    }[name]
    assert_close(graph, ref_fn())
    assert_close(eager, ref_fn())


@pytest.mark.skipif(backend_name() != "tensorflow", reason="dynamic (None) batch size in a graph: TensorFlow only")
def test_group_norm_in_graph_with_unknown_batch_size():
    rng = np.random.default_rng(13)
    gamma, beta = _affine(rng, (6,))

    def fn(x):
        return normkit.ops.group_norm(x, t(gamma), t(beta), groups=3, axis=1)

    compiled = compile_fn(fn, input_signature=[(None, 6, 5)])
    for batch in (1, 4):
        x = random_normal(rng, (batch, 6, 5))
        assert_close(compiled(t(x)), ref.group_norm(x, gamma, beta, groups=3, axis=1))

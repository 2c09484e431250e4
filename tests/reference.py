"""An independent float64 NumPy reference for normkit's normalizations, written from docs/behaviour.md's formulas.

    y = gamma * (x - mean) / sqrt(var + epsilon) + beta     (biased variance, epsilon inside the sqrt)

Only NumPy is used, never normkit. Each normalization is described as a list of "statistics sets": index
expressions that select the elements sharing one mean and variance. The forward pass and the analytic
gradients are then the same few lines for every layer:

    xhat = (x - mean_S) / sigma_S,  sigma_S = sqrt(var_S + eps)
    dL/dxhat = g * gamma
    dL/dx    = (dxhat - mean_S(dxhat) - xhat * mean_S(dxhat * xhat)) / sigma_S
    dL/dgamma = sum over the non-parameter axes of g * xhat,  dL/dbeta = sum of g

(the dL/dx line is the derivative of the standardization through both mean and variance; with *given*
statistics mean and variance are constants and dL/dx = g * gamma / sigma.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _axes(axis: int | Sequence[int], rank: int) -> tuple[int, ...]:
    raw = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    return tuple(sorted(int(a) % rank for a in raw))


def _param_view(p: np.ndarray | None, x_shape: tuple[int, ...], param_axes: tuple[int, ...]) -> np.ndarray:
    """gamma/beta (shaped like the param dims, ascending axis order) broadcast against x."""
    shape = [x_shape[a] if a in param_axes else 1 for a in range(len(x_shape))]
    if p is None:
        return np.ones(shape)
    return np.asarray(p, dtype=np.float64).reshape(shape)


# --- which elements share statistics ------------------------------------------------------------------


def _group_sets(shape: tuple[int, ...], axis: int, groups: int):
    """Index expressions, one per (sample, group): contiguous channel blocks on `axis`, every other
    non-batch axis whole."""
    rank = len(shape)
    axis = axis % rank
    channels = shape[axis]
    if groups == -1:
        groups = channels
    size = channels // groups
    for n in range(shape[0]):
        for g in range(groups):
            index = [slice(None)] * rank
            index[0] = slice(n, n + 1)
            index[axis] = slice(g * size, (g + 1) * size)
            yield tuple(index)


def _axis_sets(shape: tuple[int, ...], reduced: tuple[int, ...]):
    """Index expressions, one per combination of indices on the axes *not* reduced."""
    rank = len(shape)
    kept = [a for a in range(rank) if a not in reduced]
    for idx in np.ndindex(*[shape[a] for a in kept]):
        index: list = [slice(None)] * rank
        for a, i in zip(kept, idx, strict=True):
            index[a] = slice(i, i + 1)
        yield tuple(index)


# --- the one algorithm --------------------------------------------------------------------------------


def _standardize(x: np.ndarray, sets, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """xhat and sigma (broadcast to x's shape), each set of elements by its own two-pass float64 statistics."""
    xhat = np.empty_like(x)
    sigma = np.empty_like(x)
    for s in sets:
        block = x[s]
        mean = block.mean()
        var = ((block - mean) ** 2).mean()
        sd = np.sqrt(var + epsilon)
        xhat[s] = (block - mean) / sd
        sigma[s] = sd
    return xhat, sigma


def _standardize_backward(dxhat: np.ndarray, xhat: np.ndarray, sigma: np.ndarray, sets) -> np.ndarray:
    dx = np.empty_like(dxhat)
    for s in sets:
        d, h = dxhat[s], xhat[s]
        dx[s] = (d - d.mean() - h * (d * h).mean()) / sigma[s]
    return dx


def _forward(x, sets_fn, param_axes, gamma, beta, epsilon):
    x = np.asarray(x, dtype=np.float64)
    xhat, _ = _standardize(x, sets_fn(x.shape), epsilon)
    y = xhat * _param_view(gamma, x.shape, param_axes)
    if beta is not None:
        y = y + _param_view(beta, x.shape, param_axes)
    return y


def _backward(x, sets_fn, param_axes, gamma, epsilon, upstream):
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(upstream, dtype=np.float64)
    xhat, sigma = _standardize(x, list(sets_fn(x.shape)), epsilon)
    dxhat = g * _param_view(gamma, x.shape, param_axes)
    dx = _standardize_backward(dxhat, xhat, sigma, list(sets_fn(x.shape)))
    other = tuple(a for a in range(x.ndim) if a not in param_axes)
    dgamma = (g * xhat).sum(axis=other)
    dbeta = g.sum(axis=other)
    return dx, dgamma, dbeta


# --- public reference functions ------------------------------------------------------------------------


def _group_spec(shape_rank: int, axis: int, groups: int):
    axis = axis % shape_rank
    return (lambda shape: _group_sets(shape, axis, groups)), (axis,)


def group_norm(x, gamma=None, beta=None, *, groups: int, axis: int = -1, epsilon: float = 1e-3) -> np.ndarray:
    sets_fn, param_axes = _group_spec(np.ndim(x), axis, groups)
    return _forward(x, sets_fn, param_axes, gamma, beta, epsilon)


def group_norm_grad(x, gamma, upstream, *, groups: int, axis: int = -1, epsilon: float = 1e-3):
    """(dL/dx, dL/dgamma, dL/dbeta) for L = sum(upstream * group_norm(x, gamma, beta))."""
    sets_fn, param_axes = _group_spec(np.ndim(x), axis, groups)
    return _backward(x, sets_fn, param_axes, gamma, epsilon, upstream)


def instance_norm(x, gamma=None, beta=None, *, axis: int = -1, epsilon: float = 1e-3) -> np.ndarray:
    return group_norm(x, gamma, beta, groups=-1, axis=axis, epsilon=epsilon)


def instance_norm_grad(x, gamma, upstream, *, axis: int = -1, epsilon: float = 1e-3):
    return group_norm_grad(x, gamma, upstream, groups=-1, axis=axis, epsilon=epsilon)


def _layer_spec(rank: int, axis):
    axes = _axes(axis, rank)
    return (lambda shape: _axis_sets(shape, axes)), axes


def layer_norm(x, gamma=None, beta=None, *, axis=-1, epsilon: float = 1e-3) -> np.ndarray:
    """Per sample over the `axis` dims; gamma/beta have those dims' shape, in ascending axis order."""
    sets_fn, param_axes = _layer_spec(np.ndim(x), axis)
    return _forward(x, sets_fn, param_axes, gamma, beta, epsilon)


def layer_norm_grad(x, gamma, upstream, *, axis=-1, epsilon: float = 1e-3):
    sets_fn, param_axes = _layer_spec(np.ndim(x), axis)
    return _backward(x, sets_fn, param_axes, gamma, epsilon, upstream)


def _batch_spec(rank: int, axis):
    param_axes = _axes(axis, rank)
    reduced = tuple(a for a in range(rank) if a not in param_axes)
    return (lambda shape: _axis_sets(shape, reduced)), param_axes


def batch_norm(x, gamma=None, beta=None, *, axis=-1, epsilon: float = 1e-3) -> np.ndarray:
    """With this batch's statistics: over every axis but `axis` (batch included)."""
    sets_fn, param_axes = _batch_spec(np.ndim(x), axis)
    return _forward(x, sets_fn, param_axes, gamma, beta, epsilon)


def batch_norm_grad(x, gamma, upstream, *, axis=-1, epsilon: float = 1e-3):
    sets_fn, param_axes = _batch_spec(np.ndim(x), axis)
    return _backward(x, sets_fn, param_axes, gamma, epsilon, upstream)


def batch_statistics(x, *, axis=-1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance over every axis but `axis`, shaped like the `axis` dims."""
    x = np.asarray(x, dtype=np.float64)
    param_axes = _axes(axis, x.ndim)
    reduced = tuple(a for a in range(x.ndim) if a not in param_axes)
    mean = x.mean(axis=reduced, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=reduced)
    shape = tuple(x.shape[a] for a in param_axes)
    return mean.reshape(shape), var.reshape(shape)


def batch_norm_given(x, mean, variance, gamma=None, beta=None, *, axis=-1, epsilon: float = 1e-3) -> np.ndarray:
    """With given statistics (shaped like the `axis` dims)."""
    x = np.asarray(x, dtype=np.float64)
    param_axes = _axes(axis, x.ndim)
    m = _param_view(mean, x.shape, param_axes)
    var = _param_view(variance, x.shape, param_axes)
    y = (x - m) / np.sqrt(var + epsilon) * _param_view(gamma, x.shape, param_axes)
    if beta is not None:
        y = y + _param_view(beta, x.shape, param_axes)
    return y


def batch_norm_given_grad(x, mean, variance, gamma, upstream, *, axis=-1, epsilon: float = 1e-3):
    """(dL/dx, dL/dgamma, dL/dbeta) with the statistics held constant."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(upstream, dtype=np.float64)
    param_axes = _axes(axis, x.ndim)
    sigma = np.sqrt(_param_view(variance, x.shape, param_axes) + epsilon)
    xhat = (x - _param_view(mean, x.shape, param_axes)) / sigma
    other = tuple(a for a in range(x.ndim) if a not in param_axes)
    dx = g * _param_view(gamma, x.shape, param_axes) / sigma
    return dx, (g * xhat).sum(axis=other), g.sum(axis=other)


# --- weighted (masked) and uncentered statistics: RMS norm, filter response norm, masks ---------------------
#
# With weights w (a mask: 1 keeps a position in the statistics, 0 leaves it out), per statistics set S:
#     W = sum_S w,  m = sum_S w x / W,  v = sum_S w (x - m)^2 / W,  xhat = (x - m) / sqrt(v + eps)
# and without centering (RMS, FRN) m = 0 and v = nu2 = sum_S w x^2 / W. Every position of S, masked or not,
# is normalized with these statistics; a set with W = 0 has xhat = 0 (the output is beta). Gradients:
#     dL/dxhat_j = d_j = g_j * gamma_j,  s = 1 / sqrt(v + eps)
#     dL/dx_i = s * (d_i - [centered] w_i / W * sum_S d - w_i * xhat_i / W * sum_S d * xhat)
#     dL/deps = -1/2 * sum_S d * xhat * s^2


def _weighted_standardize(x, weights, sets, epsilon, centered):
    """xhat, s = 1/sqrt(v + eps) and W (each broadcast to x's shape) for every set, in float64."""
    xhat, s_all, count = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    for s in sets:
        block, w = x[s], weights[s]
        total = w.sum()
        count[s] = total
        if total == 0:
            continue  # xhat stays 0
        mean = (w * block).sum() / total if centered else 0.0
        var = (w * (block - mean) ** 2).sum() / total
        inv = 1.0 / np.sqrt(var + epsilon)
        xhat[s] = (block - mean) * inv
        s_all[s] = inv
    return xhat, s_all, count


def weighted_normalize(x, gamma, beta, *, sets_fn, param_shape_fn, epsilon, weights=None, centered=True):
    """y = gamma * xhat + beta with the weighted statistics above; gamma/beta are given already broadcastable
    against x through `param_shape_fn(x.shape)` (a reshape target)."""
    x = np.asarray(x, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), x.shape)
    xhat, _, _ = _weighted_standardize(x, w, list(sets_fn(x.shape)), epsilon, centered)
    shape = param_shape_fn(x.shape)
    y = xhat * (1.0 if gamma is None else np.asarray(gamma, np.float64).reshape(shape))
    return y if beta is None else y + np.asarray(beta, np.float64).reshape(shape)


def weighted_normalize_grad(x, gamma, upstream, *, sets_fn, param_shape_fn, epsilon, weights=None, centered=True):
    """(dL/dx, dL/dgamma, dL/dbeta, dL/depsilon) for L = sum(upstream * weighted_normalize(...)); dgamma and
    dbeta are summed to `param_shape_fn(x.shape)` with size-1 axes squeezed away where gamma has fewer axes."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(upstream, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), x.shape)
    sets = list(sets_fn(x.shape))
    xhat, inv, count = _weighted_standardize(x, w, sets, epsilon, centered)
    shape = param_shape_fn(x.shape)
    d = g * (1.0 if gamma is None else np.asarray(gamma, np.float64).reshape(shape))
    dx = np.zeros_like(x)
    depsilon = 0.0
    for s in sets:
        total = count[s].flat[0]
        if total == 0:
            continue
        ds, hs, ws, si = d[s], xhat[s], w[s], inv[s]
        dx[s] = si * (ds - (ws / total * ds.sum() if centered else 0.0) - ws * hs / total * (ds * hs).sum())
        depsilon += -0.5 * (ds * hs * si**2).sum()
    reduce_axes = tuple(a for a in range(x.ndim) if shape[a] == 1)  # the axes gamma does not span
    dgamma = (g * xhat).sum(axis=reduce_axes, keepdims=True).reshape(shape)
    dbeta = g.sum(axis=reduce_axes, keepdims=True).reshape(shape)
    return dx, dgamma, dbeta, depsilon


def _axes_param_shape(axes):
    return lambda shape: [shape[a] if a in axes else 1 for a in range(len(shape))]


def rms_norm(x, gamma=None, beta=None, *, axis=-1, epsilon=1e-6, weights=None):
    """x / sqrt(mean(x^2 over axis) + eps) * gamma + beta; gamma/beta shaped like the `axis` dims."""
    axes = _axes(axis, np.ndim(x))
    return weighted_normalize(x, gamma, beta, sets_fn=lambda shape: _axis_sets(shape, axes),
                              param_shape_fn=_axes_param_shape(axes), epsilon=epsilon, weights=weights,
                              centered=False)


def rms_norm_grad(x, gamma, upstream, *, axis=-1, epsilon=1e-6, weights=None):
    """(dL/dx, dL/dgamma, dL/dbeta) with dgamma/dbeta shaped like the `axis` dims."""
    axes = _axes(axis, np.ndim(x))
    dx, dgamma, dbeta, _ = weighted_normalize_grad(
        x, gamma, upstream, sets_fn=lambda shape: _axis_sets(shape, axes), param_shape_fn=_axes_param_shape(axes),
        epsilon=epsilon, weights=weights, centered=False)
    pshape = tuple(np.shape(x)[a] for a in axes)
    return dx, dgamma.reshape(pshape), dbeta.reshape(pshape)


def filter_response_norm(x, gamma=None, beta=None, *, epsilon=1e-6, weights=None):
    """FRN of an NHWC x: per (sample, channel) over H and W, gamma/beta of shape (1, 1, 1, C); `epsilon` is
    the total one (|epsilon| + |learned epsilon|)."""
    return weighted_normalize(x, gamma, beta, sets_fn=lambda shape: _axis_sets(shape, (1, 2)),
                              param_shape_fn=lambda shape: [1, 1, 1, shape[3]], epsilon=epsilon, weights=weights,
                              centered=False)


def filter_response_norm_grad(x, gamma, upstream, *, epsilon=1e-6, weights=None):
    """(dL/dx, dL/dgamma, dL/dbeta, dL/depsilon), gamma's gradients of shape (1, 1, 1, C)."""
    return weighted_normalize_grad(x, gamma, upstream, sets_fn=lambda shape: _axis_sets(shape, (1, 2)),
                                   param_shape_fn=lambda shape: [1, 1, 1, shape[3]], epsilon=epsilon,
                                   weights=weights, centered=False)


def masked_group_norm(x, gamma=None, beta=None, *, groups, axis=-1, epsilon=1e-3, weights=None):
    """Group normalization with weighted statistics (gamma/beta of shape (channels,))."""
    rank = np.ndim(x)
    return weighted_normalize(x, gamma, beta, sets_fn=lambda shape: _group_sets(shape, axis, groups),
                              param_shape_fn=_axes_param_shape((axis % rank,)), epsilon=epsilon, weights=weights)


def masked_group_norm_grad(x, gamma, upstream, *, groups, axis=-1, epsilon=1e-3, weights=None):
    rank = np.ndim(x)
    dx, dgamma, dbeta, _ = weighted_normalize_grad(
        x, gamma, upstream, sets_fn=lambda shape: _group_sets(shape, axis, groups),
        param_shape_fn=_axes_param_shape((axis % rank,)), epsilon=epsilon, weights=weights)
    return dx, dgamma.reshape(-1), dbeta.reshape(-1)


def masked_layer_norm(x, gamma=None, beta=None, *, axis=-1, epsilon=1e-3, weights=None):
    """Layer normalization with weighted statistics (gamma/beta shaped like the `axis` dims)."""
    axes = _axes(axis, np.ndim(x))
    return weighted_normalize(x, gamma, beta, sets_fn=lambda shape: _axis_sets(shape, axes),
                              param_shape_fn=_axes_param_shape(axes), epsilon=epsilon, weights=weights)


def masked_layer_norm_grad(x, gamma, upstream, *, axis=-1, epsilon=1e-3, weights=None):
    axes = _axes(axis, np.ndim(x))
    dx, dgamma, dbeta, _ = weighted_normalize_grad(
        x, gamma, upstream, sets_fn=lambda shape: _axis_sets(shape, axes), param_shape_fn=_axes_param_shape(axes),
        epsilon=epsilon, weights=weights)
    pshape = tuple(np.shape(x)[a] for a in axes)
    return dx, dgamma.reshape(pshape), dbeta.reshape(pshape)


def tlu(x, tau, alpha=None):
    """max(x, tau) or max(x, alpha * x + tau); tau/alpha of one sample's shape."""
    x = np.asarray(x, dtype=np.float64)
    threshold = np.asarray(tau, np.float64) + (0.0 if alpha is None else np.asarray(alpha, np.float64) * x)
    return np.maximum(x, threshold)


def tlu_grad(x, tau, upstream, alpha=None):
    """(dL/dx, dL/dtau, dL/dalpha or None); at a tie x takes the gradient (TensorFlow's maximum)."""
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(upstream, dtype=np.float64)
    a = 0.0 if alpha is None else np.asarray(alpha, np.float64)
    threshold = np.asarray(tau, np.float64) + a * x
    takes_x = x >= threshold
    dx = np.where(takes_x, g, g * a)
    dtau = np.where(takes_x, 0.0, g).sum(axis=0)
    dalpha = None if alpha is None else np.where(takes_x, 0.0, g * x).sum(axis=0)
    return dx, dtau, dalpha

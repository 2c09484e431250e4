"""An independent float64 NumPy reference of tf.keras 2 batch normalization (docs/behaviour.md,
"BatchNormalization").

Written from the specification, not from normkit's code: training and inference outputs, the analytic
gradients of `sum(dy * y)` with respect to x, gamma and beta, and the moving-statistic updates, for plain
batch normalization, the Bessel-corrected (fused-kernel) moving variance, batch renormalization (with
clipping), ghost batches, `adjustment` and masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def canonical_axes(axis: int | list[int] | tuple[int, ...], rank: int) -> tuple[int, ...]:
    axes = [axis] if isinstance(axis, int) else list(axis)
    return tuple(sorted(a % rank for a in axes))


def fused_layout(rank: int, axes: tuple[int, ...]) -> bool:
    """Where tf.keras 2 ran its fused kernel (given the other conditions): NCHW/NHWC, NCDHW/NDHWC."""
    return len(axes) == 1 and ((rank == 4 and axes[0] in (1, 3)) or (rank == 5 and axes[0] in (1, 4)))


@dataclass
class Step:
    y: np.ndarray
    dx: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray


@dataclass
class ReferenceBatchNorm:
    """State and arithmetic of one BatchNormalization layer, in float64.

    `state` maps weight names (gamma, beta, moving_mean, moving_variance and, with renorm, moving_stddev,
    renorm_mean, renorm_stddev) to arrays of the feature dims' shape.
    """

    rank: int
    axes: tuple[int, ...]
    state: dict[str, np.ndarray]
    momentum: float = 0.99
    epsilon: float = 1e-3
    renorm: bool = False
    renorm_clipping: dict[str, float] | None = None
    renorm_momentum: float = 0.99
    virtual_batch_size: int | None = None
    bessel: bool = False
    center: bool = True
    scale: bool = True
    calls: list[Any] = field(default_factory=list)

    # --------------------------------------------------------------------------------------------- shapes
    def _bshape(self, x_shape: tuple[int, ...]) -> list[int]:
        return [x_shape[a] if a in self.axes else 1 for a in range(self.rank)]

    def _param(self, name: str, x_shape: tuple[int, ...], default: float) -> np.ndarray:
        if name not in self.state:
            return np.full(self._bshape(x_shape), default)
        return self.state[name].reshape(self._bshape(x_shape))

    # ------------------------------------------------------------------------------------------ inference
    def infer(self, x: np.ndarray, dy: np.ndarray | None = None) -> Step:
        x = np.asarray(x, np.float64)
        shape = x.shape
        gamma = self._param("gamma", shape, 1.0)
        beta = self._param("beta", shape, 0.0)
        mean = self.state["moving_mean"].reshape(self._bshape(shape))
        var = self.state["moving_variance"].reshape(self._bshape(shape))
        inv = 1.0 / np.sqrt(var + self.epsilon)
        xhat = (x - mean) * inv
        y = gamma * xhat + beta
        dy = np.zeros_like(x) if dy is None else np.asarray(dy, np.float64)
        other = tuple(a for a in range(self.rank) if a not in self.axes)
        dgamma = np.sum(dy * xhat, axis=other).reshape(self.state["moving_mean"].shape)
        dbeta = np.sum(dy, axis=other).reshape(self.state["moving_mean"].shape)
        return Step(y, dy * gamma * inv, dgamma, dbeta)

    # ------------------------------------------------------------------------------------------- training
    def train(
        self,
        x: np.ndarray,
        dy: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        adjustment: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Step:
        x = np.asarray(x, np.float64)
        shape = x.shape
        dy = np.zeros_like(x) if dy is None else np.asarray(dy, np.float64)
        if mask is None:
            m = np.ones(shape)
        else:
            m = np.asarray(mask, np.float64)
            if m.ndim == self.rank - 1:
                m = m[..., None]
            m = np.broadcast_to(m, shape)
        bshape = self._bshape(shape)
        gamma = self._param("gamma", shape, 1.0)
        beta = self._param("beta", shape, 0.0)
        reduce = tuple(a for a in range(self.rank) if a not in self.axes)
        V = self.virtual_batch_size
        if V is not None:
            # [B, ...] -> [V, B/V, ...]: ghost batch j = samples j, j + n, j + 2n, ... (n = B/V).
            assert shape[0] % V == 0
            view = (V, shape[0] // V, *shape[1:])
            xv, mv, dyv = x.reshape(view), m.reshape(view), dy.reshape(view)
            group_axes = (0, *(a + 1 for a in reduce if a != 0))
            pshape = [1, *bshape]
        else:
            xv, mv, dyv = x, m, dy
            group_axes = reduce
            pshape = bshape
        gamma_v, beta_v = gamma.reshape(pshape), beta.reshape(pshape)

        with np.errstate(invalid="ignore", divide="ignore"):
            count = mv.sum(axis=group_axes, keepdims=True)
            mean = (mv * xv).sum(axis=group_axes, keepdims=True) / count
            var = (mv * (xv - mean) ** 2).sum(axis=group_axes, keepdims=True) / count
        if V is not None:
            batch_mean, batch_var = mean.mean(axis=1), var.mean(axis=1)
            batch_count = count.sum(axis=1)
        else:
            batch_mean, batch_var, batch_count = mean, var, count
        pshape_flat = self.state["moving_mean"].shape
        batch_mean = batch_mean.reshape(pshape_flat)
        batch_var = batch_var.reshape(pshape_flat)
        batch_count = batch_count.reshape(pshape_flat)

        r = np.ones(pshape_flat)
        d = np.zeros(pshape_flat)
        if self.renorm:
            s_batch = np.sqrt(batch_var + self.epsilon)
            s = np.maximum(self.state["renorm_stddev"], np.sqrt(self.epsilon))
            r = s_batch / s
            d = (batch_mean - self.state["renorm_mean"]) / s
            clip = self.renorm_clipping or {}
            if "rmin" in clip:
                r = np.maximum(r, clip["rmin"])
            if "rmax" in clip:
                r = np.minimum(r, clip["rmax"])
            if "dmax" in clip:
                d = np.clip(d, -clip["dmax"], clip["dmax"])
        r_v, d_v = r.reshape(pshape), d.reshape(pshape)
        a_s, a_b = (1.0, 0.0) if adjustment is None else (np.asarray(adjustment[0], np.float64),
                                                          np.asarray(adjustment[1], np.float64))

        s_group = np.sqrt(var + self.epsilon)
        xhat = (xv - mean) / s_group
        inner = a_s * (r_v * xhat + d_v) + a_b
        y = gamma_v * inner + beta_v
        # Gradients of sum(dy * y); r, d and the adjustment carry none. Every output depends on the group's
        # mean and variance, which depend on the unmasked inputs only (weights m).
        param_sum_axes = tuple(a for a in range(y.ndim) if pshape[a] == 1)
        dgamma = np.sum(dyv * inner, axis=param_sum_axes).reshape(pshape_flat)
        dbeta = np.sum(dyv, axis=param_sum_axes).reshape(pshape_flat)
        ghat = dyv * gamma_v * a_s * r_v * np.ones_like(xv)
        sum_g = ghat.sum(axis=group_axes, keepdims=True)
        sum_gx = (ghat * xhat).sum(axis=group_axes, keepdims=True)
        dx = (ghat - mv * sum_g / count - mv * xhat * sum_gx / count) / s_group

        self._update(shape[0], batch_mean, batch_var, batch_count, masked=mask is not None)
        return Step(y.reshape(shape), dx.reshape(shape), dgamma, dbeta)

    def _update(self, batch: int, mean: np.ndarray, var: np.ndarray, count: np.ndarray, masked: bool) -> None:
        if batch == 0:
            return
        keep = count > 0 if masked else np.ones(mean.shape, bool)

        def move(name: str, value: np.ndarray, momentum: float) -> None:
            old = self.state[name]
            self.state[name] = np.where(keep, old - (old - value) * (1.0 - momentum), old)

        if self.renorm:
            s_batch = np.sqrt(var + self.epsilon)
            move("renorm_mean", mean, self.renorm_momentum)
            move("renorm_stddev", s_batch, self.renorm_momentum)
            move("moving_mean", mean, self.momentum)
            move("moving_stddev", s_batch, self.momentum)
            derived = np.maximum(self.state["moving_stddev"] ** 2 - self.epsilon, 0.0)
            self.state["moving_variance"] = np.where(keep, derived, self.state["moving_variance"])
            return
        if self.bessel:
            var = var * count / np.maximum(count - 1.0, 1.0)
        move("moving_mean", mean, self.momentum)
        move("moving_variance", var, self.momentum)

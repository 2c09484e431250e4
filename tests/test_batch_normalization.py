"""normkit.BatchNormalization against the float64 NumPy reference (tests/reference_batchnorm.py).

Each case runs several training steps then inference on the current backend, comparing the outputs, the
gradients of sum(dy * y) with respect to x, gamma and beta (backend-native autodiff: jax.grad over
`stateless_call`, tf.GradientTape, torch.autograd) and every weight after each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import pytest
from _helpers import float64_enabled
from reference_batchnorm import ReferenceBatchNorm, canonical_axes

import normkit

BACKEND = keras.backend.backend()
_JAX_STEPS: dict[Any, Any] = {}


# ------------------------------------------------------------------------------------------------- harness


def to_numpy(t: Any) -> np.ndarray:
    if BACKEND == "torch" and hasattr(t, "detach"):
        t = t.detach()
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(t, "float32") if _is16(t) else t), np.float64)


def _is16(t: Any) -> bool:
    return keras.backend.standardize_dtype(t.dtype) in ("float16", "bfloat16")


def run_step(layer: Any, x: np.ndarray, dy: np.ndarray, *, training: bool, mask: np.ndarray | None = None):
    """One call of `layer` (built on x's shape) and the gradients of sum(dy * y), as float64 NumPy.

    Returns (y, dx, grads) with grads mapping "gamma"/"beta" to arrays. The layer's variables end up updated
    exactly as a plain call would leave them (the JAX path writes back the stateless call's new state).
    """
    if not layer.built:
        layer.build(x.shape)
    dy32 = np.asarray(dy, np.float32)
    affine = {name: getattr(layer, name) for name in ("gamma", "beta") if getattr(layer, name) is not None}
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        tvars, ntvars = list(layer.trainable_variables), list(layer.non_trainable_variables)
        # Jitted (as model.fit runs it), once per layer and mode: eager JAX compiles every op separately.
        key = (id(layer), training, mask is None, layer.trainable)
        if key not in _JAX_STEPS:

            def loss(tv, ntv, xx, dyy, mm):
                y, new = layer.stateless_call(tv, ntv, xx, training=training, mask=mm)
                return jnp.sum(y.astype(jnp.float32) * dyy), (y, new)

            _JAX_STEPS.clear()
            _JAX_STEPS[key] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        (_, (y, new)), (gt, gn, gx) = _JAX_STEPS[key](
            [v.value for v in tvars],
            [v.value for v in ntvars],
            jnp.asarray(x),
            jnp.asarray(dy32),
            None if mask is None else jnp.asarray(mask),
        )
        for variable, value in zip(ntvars, new, strict=True):
            variable.assign(value)
        by_id = {id(v): g for v, g in zip(tvars + ntvars, list(gt) + list(gn), strict=True)}
        grads = {name: to_numpy(by_id[id(var)]) for name, var in affine.items()}
        return to_numpy(y), to_numpy(gx), grads
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        values = {name: var.value for name, var in affine.items()}
        with tf.GradientTape() as tape:
            tape.watch(xt)
            for value in values.values():
                tape.watch(value)
            y = layer(xt, training=training, mask=None if mask is None else tf.constant(mask))
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy32)
        gx, *gp = tape.gradient(loss, [xt, *values.values()])
        return to_numpy(y), to_numpy(gx), {name: to_numpy(g) for name, g in zip(values, gp, strict=True)}
    import torch

    xt = torch.tensor(x, requires_grad=True)
    params = {name: var.value for name, var in affine.items()}
    saved = {name: p.requires_grad for name, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    try:
        y = layer(xt, training=training, mask=None if mask is None else torch.tensor(mask))
        loss = (y.float() * torch.tensor(dy32)).sum()
        gx, *gp = torch.autograd.grad(loss, [xt, *params.values()])
    finally:
        for name, p in params.items():
            p.requires_grad_(saved[name])
    return to_numpy(y), to_numpy(gx), {name: to_numpy(g) for name, g in zip(params, gp, strict=True)}


def weights_of(layer: Any) -> dict[str, np.ndarray]:
    return {w.path.split("/")[-1]: to_numpy(w) for w in layer.weights}


def reference_for(layer: Any, shape: tuple[int, ...], bessel: bool) -> ReferenceBatchNorm:
    """A reference starting from the layer's initial weights, with the layer's arguments."""
    return ReferenceBatchNorm(
        rank=len(shape),
        axes=canonical_axes(layer.axis, len(shape)),
        state=weights_of(layer),
        momentum=layer.momentum,
        epsilon=layer.epsilon,
        renorm=layer.renorm,
        renorm_clipping=layer.renorm_clipping,
        renorm_momentum=layer.renorm_momentum,
        virtual_batch_size=layer.virtual_batch_size,
        bessel=bessel,
    )


@dataclass(frozen=True)
class Tol:
    y: float = 1e-4
    dx: float = 1e-4
    dparam: float = 5e-4
    moving: float = 2e-5


TOL32 = Tol()
TOL16 = Tol(y=2e-2, dx=3e-2, dparam=3e-2, moving=5e-5)
TOLB16 = Tol(y=6e-2, dx=8e-2, dparam=8e-2, moving=5e-5)


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: float, what: str) -> None:
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, equal_nan=True, err_msg=what)


def assert_weights(layer: Any, ref: ReferenceBatchNorm, tol: float, when: str) -> None:
    got = weights_of(layer)
    assert set(got) == set(ref.state), (sorted(got), sorted(ref.state))
    for name, value in got.items():
        assert_close(value, ref.state[name], tol, f"{name} {when}")


def make_input(rng: np.random.Generator, shape: tuple[int, ...], axes: tuple[int, ...], dtype: str) -> np.ndarray:
    """Per-feature offsets and scales, so that the batch statistics differ from the initial moving ones."""
    bshape = [shape[a] if a in axes else 1 for a in range(len(shape))]
    loc = rng.uniform(-2.0, 3.0, size=bshape)
    scale = rng.uniform(0.5, 2.5, size=bshape)
    x = rng.normal(size=shape) * scale + loc
    if dtype == "bfloat16":
        import ml_dtypes

        # Values bfloat16 holds exactly, fed as float32: the layer's cast to bfloat16 is then exact.
        return x.astype(ml_dtypes.bfloat16).astype(np.float32)
    return x.astype(dtype)


@dataclass
class Case:
    shape: tuple[int, ...]
    kwargs: dict[str, Any]
    bessel: bool
    input_dtype: str = "float32"
    tol: Tol = TOL32
    mask: str | None = None  # None, "seq" (rank - 1) or "full" (input rank)
    adjustment: bool = False
    inference_batch: int = 5
    extra: dict[str, Any] = field(default_factory=dict)


RENORM_CLIP = {"rmin": 0.8, "rmax": 1.25, "dmax": 0.3}

CASES: dict[str, Case] = {
    # Plain batch normalization: which layouts get tf.keras 2's Bessel-corrected moving variance.
    "rank2": Case((8, 3), {}, bessel=False),
    "rank3": Case((4, 3, 2), {}, bessel=False),
    "rank4_axis3": Case((4, 2, 3, 3), {"axis": 3}, bessel=True),
    "rank4_axis-1": Case((4, 2, 3, 3), {"axis": -1}, bessel=True),
    "rank4_axis1": Case((4, 3, 2, 2), {"axis": 1}, bessel=True),
    "rank4_axis-3_list": Case((4, 3, 2, 2), {"axis": [-3]}, bessel=True),
    "rank4_axis2": Case((4, 2, 3, 2), {"axis": 2}, bessel=False),
    "rank4_fused_true": Case((4, 2, 2, 3), {"axis": 3, "fused": True}, bessel=True),
    "rank4_fused_false": Case((4, 2, 2, 3), {"fused": False}, bessel=False),
    "rank5_axis4": Case((3, 2, 2, 2, 3), {"axis": 4}, bessel=True),
    "rank5_axis1": Case((3, 3, 2, 2, 2), {"axis": 1}, bessel=True),
    "rank5_axis2": Case((3, 2, 3, 2, 2), {"axis": 2}, bessel=False),
    "rank4_synchronized": Case((4, 2, 2, 3), {"synchronized": True}, bessel=False),
    "no_center_no_scale": Case((4, 2, 2, 3), {"center": False, "scale": False}, bessel=True),
    "batch_of_one_rank4": Case((1, 1, 1, 3), {"momentum": 0.5}, bessel=True, inference_batch=2),
    # Multi-axis.
    "multi_axis_rank4": Case((4, 3, 2, 3), {"axis": [1, 3]}, bessel=False),
    "multi_axis_rank3_negative": Case((4, 3, 2), {"axis": (-1, 1)}, bessel=False),
    # Batch renormalization.
    "renorm": Case((8, 3), {"renorm": True, "renorm_momentum": 0.6}, bessel=False),
    "renorm_clipped_rank4": Case(
        (4, 2, 2, 3), {"renorm": True, "renorm_clipping": RENORM_CLIP, "renorm_momentum": 0.5}, bessel=False
    ),
    "renorm_rmax_only": Case((6, 4), {"renorm": True, "renorm_clipping": {"rmax": 1.1}}, bessel=False),
    "renorm_dmax_only_epsilon": Case(
        (6, 4), {"renorm": True, "renorm_clipping": {"dmax": 0.1}, "epsilon": 0.5}, bessel=False
    ),
    # Ghost batches.
    "ghost_rank2": Case((8, 3), {"virtual_batch_size": 2}, bessel=False),
    "ghost_rank4": Case((6, 2, 2, 3), {"virtual_batch_size": 3}, bessel=False),
    "ghost_rank4_channels_first": Case((4, 3, 2, 2), {"virtual_batch_size": 2, "axis": 1}, bessel=False),
    "ghost_renorm_clipped": Case(
        (8, 3), {"virtual_batch_size": 4, "renorm": True, "renorm_clipping": RENORM_CLIP}, bessel=False
    ),
    "ghost_multi_axis": Case((4, 3, 2), {"virtual_batch_size": 2, "axis": [1, 2]}, bessel=False),
    # adjustment.
    "adjustment_rank4": Case((4, 2, 2, 3), {}, bessel=False, adjustment=True),
    "adjustment_renorm": Case(
        (6, 3), {"renorm": True, "renorm_clipping": {"rmax": 1.2}}, bessel=False, adjustment=True
    ),
    # Masks.
    "mask_sequence": Case((4, 5, 3), {}, bessel=False, mask="seq"),
    "mask_rank4_bessel": Case((4, 2, 3, 3), {}, bessel=True, mask="seq"),
    "mask_full_rank": Case((4, 5, 3), {}, bessel=False, mask="full"),
    "mask_renorm": Case((4, 5, 3), {"renorm": True, "renorm_clipping": RENORM_CLIP}, bessel=False, mask="seq"),
    "mask_ghost": Case((4, 5, 3), {"virtual_batch_size": 2}, bessel=False, mask="seq"),
    # Mixed precision: float32 weights and statistics, 16-bit outputs. tf.keras 2's fused kernel took float16
    # and bfloat16 compute dtypes, so the fused layouts keep the Bessel correction.
    "mixed_float16_rank4": Case(
        (4, 2, 2, 3), {"dtype": "mixed_float16"}, bessel=True, input_dtype="float16", tol=TOL16
    ),
    "mixed_float16_rank2": Case((8, 3), {"dtype": "mixed_float16"}, bessel=False, input_dtype="float16", tol=TOL16),
    "mixed_float16_renorm": Case(
        (8, 3), {"dtype": "mixed_float16", "renorm": True, "renorm_clipping": RENORM_CLIP},
        bessel=False, input_dtype="float16", tol=TOL16,
    ),
    "mixed_float16_ghost": Case(
        (8, 3), {"dtype": "mixed_float16", "virtual_batch_size": 4}, bessel=False, input_dtype="float16", tol=TOL16
    ),
    "mixed_bfloat16_rank4_axis1": Case(
        (4, 3, 2, 2), {"dtype": "mixed_bfloat16", "axis": 1}, bessel=True, input_dtype="bfloat16", tol=TOLB16
    ),
    "mixed_bfloat16_rank3": Case(
        (4, 3, 2), {"dtype": "mixed_bfloat16"}, bessel=False, input_dtype="bfloat16", tol=TOLB16
    ),
    # float64: tf.keras 2's fused kernel did not take it.
    "float64_rank4": Case((4, 2, 2, 3), {"dtype": "float64"}, bessel=False, input_dtype="float64"),
}


def make_mask(rng: np.random.Generator, case: Case) -> np.ndarray | None:
    if case.mask is None:
        return None
    shape = case.shape[:-1] if case.mask == "seq" else case.shape
    mask = rng.uniform(size=shape) < 0.6
    mask[:, 0] = True  # every sample (so every ghost batch and every feature) keeps some unmasked positions
    return mask


def adjustment_values(shape: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    channels = int(shape[-1])
    return (
        np.linspace(0.8, 1.2, channels).astype("float32"),
        np.linspace(-0.2, 0.3, channels).astype("float32"),
    )


def check_case(case: Case, steps: int = 3) -> None:
    # JAX keeps float64 only in x64 mode: switch it on for this case rather than skip it.
    with float64_enabled(case.input_dtype):
        _check_case(case, steps)


def _check_case(case: Case, steps: int) -> None:
    seen_shapes: list[tuple[Any, ...]] = []

    def adjustment(shape):
        seen_shapes.append(tuple(int(s) for s in shape))
        return adjustment_values(shape)

    kwargs = {
        "momentum": 0.7,
        "gamma_initializer": keras.initializers.RandomUniform(0.5, 1.5, seed=1),
        "beta_initializer": keras.initializers.RandomNormal(seed=2),
        "moving_mean_initializer": keras.initializers.Constant(0.25),
        "moving_variance_initializer": keras.initializers.Constant(1.5),
        **case.kwargs,
    }
    if case.adjustment:
        kwargs["adjustment"] = adjustment
    layer = normkit.BatchNormalization(**kwargs)
    layer.build(case.shape)
    ref = reference_for(layer, case.shape, case.bessel)
    if layer.renorm:
        init = weights_of(layer)
        np.testing.assert_allclose(init["moving_stddev"], np.sqrt(1.5), rtol=1e-6)
        np.testing.assert_allclose(init["renorm_stddev"], np.sqrt(1.5), rtol=1e-6)
        np.testing.assert_allclose(init["renorm_mean"], 0.25, rtol=1e-6)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        if getattr(layer, name) is not None:
            assert keras.backend.standardize_dtype(getattr(layer, name).dtype) == (
                "float64" if case.input_dtype == "float64" else "float32"
            )

    rng = np.random.default_rng(sum(map(ord, str(case.shape) + str(sorted(case.kwargs)))))
    axes = canonical_axes(layer.axis, len(case.shape))
    tol = case.tol
    for step in range(steps):
        x = make_input(rng, case.shape, axes, case.input_dtype)
        dy = rng.normal(size=case.shape)
        mask = make_mask(rng, case)
        y, dx, grads = run_step(layer, x, dy, training=True, mask=mask)
        adj = adjustment_values(case.shape) if case.adjustment else None
        expected = ref.train(x, dy, mask=mask, adjustment=adj)
        when = f"after training step {step}"
        assert_close(y, expected.y, tol.y, f"y {when}")
        assert_close(dx, expected.dx, tol.dx, f"dx {when}")
        if layer.scale:
            assert_close(grads["gamma"], expected.dgamma, tol.dparam, f"dgamma {when}")
        if layer.center:
            assert_close(grads["beta"], expected.dbeta, tol.dparam, f"dbeta {when}")
        assert_weights(layer, ref, tol.moving, when)
    if case.adjustment:
        assert seen_shapes and all(s == case.shape for s in seen_shapes)
        seen_shapes.clear()

    # Inference, at a batch size the training never used (and one V does not divide).
    shape = (case.inference_batch, *case.shape[1:])
    x = make_input(rng, shape, axes, case.input_dtype)
    dy = rng.normal(size=shape)
    y, dx, grads = run_step(layer, x, dy, training=False)
    expected = ref.infer(x, dy)
    assert_close(y, expected.y, tol.y, "y in inference")
    assert_close(dx, expected.dx, tol.dx, "dx in inference")
    if layer.scale:
        assert_close(grads["gamma"], expected.dgamma, tol.dparam, "dgamma in inference")
    assert_weights(layer, ref, tol.moving, "after inference")
    assert not seen_shapes, "adjustment must not be called in inference"


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name: str) -> None:
    check_case(CASES[name])


def test_bessel_and_biased_updates_differ() -> None:
    """The rank-4 case really tells the two rules apart: a biased update would fail the Bessel case."""
    x = make_input(np.random.default_rng(0), (2, 2, 1, 3), (3,), "float32")
    moving = {}
    for fused in (None, False):
        layer = normkit.BatchNormalization(momentum=0.0, fused=fused)
        layer(x, training=True)
        moving[fused] = to_numpy(layer.moving_variance)
    biased = x.astype(np.float64).var(axis=(0, 1, 2))
    np.testing.assert_allclose(moving[False], biased, rtol=1e-5)
    np.testing.assert_allclose(moving[None], biased * 4 / 3, rtol=1e-5)


# --------------------------------------------------------------------------------------- trainable=False


@pytest.mark.parametrize("how", ["kwarg", "attribute"])
def test_trainable_false_runs_inference_and_updates_nothing(how: str) -> None:
    shape = (6, 2, 2, 3)
    kwargs = {"momentum": 0.7, "renorm": True, "gamma_initializer": keras.initializers.RandomUniform(0.5, 1.5, seed=1)}
    layer = normkit.BatchNormalization(trainable=(how != "kwarg"), **kwargs)
    layer.build(shape)
    rng = np.random.default_rng(5)
    ref = reference_for(layer, shape, bessel=False)
    if how == "attribute":
        x, dy = make_input(rng, shape, (3,), "float32"), rng.normal(size=shape)
        run_step(layer, x, dy, training=True)
        ref.train(x, dy)
        layer.trainable = False
    assert_weights(layer, ref, TOL32.moving, "before the frozen calls")
    frozen = weights_of(layer)
    for _ in range(2):
        x, dy = make_input(rng, shape, (3,), "float32"), rng.normal(size=shape)
        y, dx, grads = run_step(layer, x, dy, training=True)
        expected = ref.infer(x, dy)
        assert_close(y, expected.y, TOL32.y, "y of a frozen layer called with training=True")
        assert_close(dx, expected.dx, TOL32.dx, "dx of a frozen layer")
        assert_close(grads["gamma"], expected.dgamma, TOL32.dparam, "dgamma of a frozen layer")
        for name, value in weights_of(layer).items():
            np.testing.assert_array_equal(value, frozen[name], err_msg=f"{name} after a frozen call")
    assert not layer.trainable_weights
    # Unfreezing brings training mode back.
    layer.trainable = True
    x, dy = make_input(rng, shape, (3,), "float32"), rng.normal(size=shape)
    y, _, _ = run_step(layer, x, dy, training=True)
    expected = ref.train(x, dy)
    assert_close(y, expected.y, TOL32.y, "y after unfreezing")
    assert_weights(layer, ref, TOL32.moving, "after unfreezing")


def test_training_none_and_false_are_inference() -> None:
    layer = normkit.BatchNormalization(momentum=0.5, moving_mean_initializer=keras.initializers.Constant(1.0))
    x = np.random.default_rng(1).normal(size=(4, 3)).astype("float32")
    for training in (None, False):
        y = to_numpy(layer(x, training=training))
        np.testing.assert_allclose(y, (x - 1.0) / np.sqrt(1.0 + 1e-3), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), 1.0)


# -------------------------------------------------------------------------------------------- empty batch


@pytest.mark.parametrize(
    "kwargs", [{}, {"renorm": True}, {"virtual_batch_size": 2}, {"axis": 3}], ids=["plain", "renorm", "ghost", "rank4"]
)
def test_empty_batch_updates_nothing(kwargs: dict[str, Any]) -> None:
    shape = (0, 2, 2, 3) if kwargs.get("axis") == 3 else (0, 3)
    layer = normkit.BatchNormalization(momentum=0.5, **kwargs)
    layer.build((4, *shape[1:]))
    before = weights_of(layer)
    y = layer(np.zeros(shape, "float32"), training=True)
    assert tuple(y.shape) == shape
    after = weights_of(layer)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="a dynamic batch dimension exists in TensorFlow graphs")
def test_empty_batch_with_dynamic_batch_dimension_tensorflow() -> None:
    import tensorflow as tf

    for kwargs in ({}, {"virtual_batch_size": 2, "renorm": True}):
        layer = normkit.BatchNormalization(momentum=0.5, **kwargs)
        layer.build((None, 3))
        fn = tf.function(lambda t, layer=layer: layer(t, training=True), input_signature=[tf.TensorSpec([None, 3])])
        before = weights_of(layer)
        fn(tf.zeros([0, 3]))
        for name, value in weights_of(layer).items():
            np.testing.assert_array_equal(value, before[name], err_msg=name)
        x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
        fn(tf.constant(x))
        ref = reference_for(layer, (4, 3), bessel=False)
        ref.state = before
        ref.train(x)
        assert_weights(layer, ref, TOL32.moving, "after a dynamic-batch call")


def test_fully_masked_feature_is_not_updated() -> None:
    x = np.random.default_rng(2).normal(size=(4, 5, 3)).astype("float32")
    mask = np.ones(x.shape, bool)
    mask[..., 1] = False
    layer = normkit.BatchNormalization(momentum=0.5)
    layer(x, training=True, mask=mask)
    moving = to_numpy(layer.moving_mean)
    assert moving[1] == 0.0 and np.isfinite(moving).all() and moving[0] != 0.0
    assert np.isfinite(to_numpy(layer.moving_variance)).all()


def test_mask_changes_statistics() -> None:
    """Masked positions (huge values here) are left out of the statistics; their outputs are computed."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 3)).astype("float32")
    x[:, 2:] = 1e4
    mask = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], bool)
    layer = normkit.BatchNormalization(momentum=0.0)
    y = to_numpy(layer(x, training=True, mask=mask))
    np.testing.assert_allclose(to_numpy(layer.moving_mean), x[:, :2].reshape(-1, 3).mean(0), rtol=1e-5)
    assert np.isfinite(y).all() and np.abs(y[:, 2:]).min() > 100


# ------------------------------------------------------------------------------------------ compiled fit


@pytest.mark.parametrize(
    "shape,kwargs,bessel",
    [
        ((8, 2, 2, 3), {}, True),
        ((8, 3), {"virtual_batch_size": 4, "renorm": True, "renorm_clipping": RENORM_CLIP}, False),
    ],
    ids=["rank4_bessel", "ghost_renorm"],
)
def test_model_fit_updates_moving_statistics(shape: tuple[int, ...], kwargs: dict[str, Any], bessel: bool) -> None:
    """One compiled training step of `model.fit` (SGD with lr=0) moves the statistics as the reference does."""
    layer = normkit.BatchNormalization(momentum=0.7, **kwargs)
    model = keras.Sequential(
        [keras.Input(shape[1:]), layer, keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    ref = reference_for(layer, shape, bessel)
    rng = np.random.default_rng(4)
    x = make_input(rng, shape, canonical_axes(layer.axis, len(shape)), "float32")
    model.fit(x, rng.normal(size=(shape[0], 1)), batch_size=shape[0], epochs=1, shuffle=False, verbose=0)
    ref.train(x)
    assert_weights(layer, ref, 1e-5, "after one model.fit step")
    # predict is inference with the moving statistics: any batch size, V ignored.
    x = make_input(rng, (3, *shape[1:]), canonical_axes(layer.axis, len(shape)), "float32")
    bn_out = keras.Model(model.inputs, layer.output).predict(x, verbose=0)
    assert_close(np.asarray(bn_out, np.float64), ref.infer(x).y, 1e-4, "predict")


def test_keras_mask_propagates_from_masking_layer() -> None:
    """A Keras sequence mask (from `Masking`) reaches `call` and leaves padded steps out of the statistics."""
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 1.5, size=(3, 5, 2)).astype("float32")
    x[0, 3:] = 0.0
    x[2, 1:] = 0.0
    layer = normkit.BatchNormalization(momentum=0.5)
    model = keras.Sequential([keras.Input((5, 2)), keras.layers.Masking(0.0), layer])
    ref = reference_for(layer, x.shape, bessel=False)
    model(x, training=True)
    ref.train(x, mask=np.any(x != 0.0, axis=-1))
    assert_weights(layer, ref, TOL32.moving, "after a masked call")


def test_ghost_batches_are_strided() -> None:
    """With B=6, V=3 (n=2): ghost batch 0 = samples 0, 2, 4 and ghost batch 1 = samples 1, 3, 5."""
    x = make_input(np.random.default_rng(8), (6, 2), (1,), "float32")
    y = to_numpy(normkit.BatchNormalization(virtual_batch_size=3)(x, training=True))
    for j in (0, 1):
        group = x[j::2].astype(np.float64)
        expected = (group - group.mean(0)) / np.sqrt(group.var(0) + 1e-3)
        np.testing.assert_allclose(y[j::2], expected, rtol=1e-4, atol=1e-4)


def test_large_offset_in_ghost_batch_training() -> None:
    """Ghost batches (the `_train_general` path, shared with renorm and adjustment) normalize mean-1e4 / std-1
    float32 data as precisely as the plain path.

    A bare (x - mean) with a float32 mean near 1e4 is 0.5-1 ulp (5e-4 to 1e-3) off, which is that many
    standard deviations (1.4e-3 here before the fix); normalizing x - shift keeps the error near 1e-7.
    """
    x = (1e4 + np.random.default_rng(10).normal(size=(8, 5, 3))).astype("float32")
    y = to_numpy(normkit.BatchNormalization(virtual_batch_size=4)(x, training=True))
    v = x.astype(np.float64).reshape(4, 2, 5, 3)  # ghost batch j = samples j, j + 2, ...
    mean, var = v.mean(axis=(0, 2), keepdims=True), v.var(axis=(0, 2), keepdims=True)
    expected = ((v - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)


def test_reference_gradients_match_finite_differences() -> None:
    """The NumPy reference's analytic gradients (renorm, ghost batches, mask, adjustment) are right."""
    rng = np.random.default_rng(9)
    shape = (4, 3, 2)
    x, dy = rng.normal(size=shape), rng.normal(size=shape)
    mask = rng.uniform(size=shape[:-1]) < 0.7
    mask[:, 0] = True
    adj = (np.array([0.9, 1.1]), np.array([0.1, -0.2]))
    state = {
        "gamma": np.array([1.3, 0.7]),
        "beta": np.array([0.2, -0.1]),
        "moving_mean": np.zeros(2),
        "moving_variance": np.ones(2),
        "moving_stddev": np.ones(2),
        "renorm_mean": np.array([0.1, -0.3]),
        "renorm_stddev": np.array([0.8, 1.2]),
    }

    def make() -> ReferenceBatchNorm:
        return ReferenceBatchNorm(
            rank=3, axes=(2,), state={k: v.copy() for k, v in state.items()}, renorm=True, virtual_batch_size=2
        )

    step = make().train(x, dy, mask=mask, adjustment=adj)

    def loss(xx=x, gamma=state["gamma"], beta=state["beta"]) -> float:
        ref = make()
        ref.state["gamma"], ref.state["beta"] = gamma, beta
        return float(np.sum(dy * ref.train(xx, None, mask=mask, adjustment=adj).y))

    h = 1e-6
    for index in [(0, 0, 0), (1, 2, 1), (3, 1, 0), (2, 0, 1)]:
        e = np.zeros(shape)
        e[index] = h
        numeric = (loss(xx=x + e) - loss(xx=x - e)) / (2 * h)
        # Perturbing an unmasked x also moves r and d, which carry no gradient by definition: with renorm, the
        # x-gradient is checked at masked positions (outside the statistics); the plain case below checks all.
        if not mask[index[:2]]:
            np.testing.assert_allclose(step.dx[index], numeric, rtol=1e-5, atol=1e-6)
    for name, grad in (("gamma", step.dgamma), ("beta", step.dbeta)):
        for c in range(2):
            e = np.zeros(2)
            e[c] = h
            plus = loss(**{name: state[name] + e})
            minus = loss(**{name: state[name] - e})
            np.testing.assert_allclose(grad[c], (plus - minus) / (2 * h), rtol=1e-5, atol=1e-6)
    # Without renorm nothing is held constant: the x-gradient must match everywhere.
    def make_plain() -> ReferenceBatchNorm:
        plain_state = {k: state[k].copy() for k in ("gamma", "beta", "moving_mean", "moving_variance")}
        return ReferenceBatchNorm(rank=3, axes=(2,), state=plain_state, virtual_batch_size=2)

    dx = make_plain().train(x, dy, mask=mask, adjustment=adj).dx

    def plain_loss(xx: np.ndarray) -> float:
        return float(np.sum(dy * make_plain().train(xx, None, mask=mask, adjustment=adj).y))

    for index in np.ndindex(shape):
        e = np.zeros(shape)
        e[index] = h
        numeric = (plain_loss(x + e) - plain_loss(x - e)) / (2 * h)
        np.testing.assert_allclose(dx[index], numeric, rtol=1e-5, atol=1e-6, err_msg=str(index))

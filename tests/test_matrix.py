"""A generated matrix: every layer in every configuration family, forward and every gradient, against float64.

The factors (values in FACTORS below):

- layer: GroupNormalization (groups=3 of 6 channels), InstanceNormalization, LayerNormalization on one axis and on
  two, BatchNormalization plain, with ghost batches (virtual_batch_size=3) and with clipped renorm;
- affine: center and scale both on, one of them, neither;
- channel: the normalized (channel) axis first (axis=1), in the middle (rank >= 4) or last (axis=-1);
- rank 2 to 5; dtype policy float32 / mixed_float16 / mixed_bfloat16; input dtype float32 / float16 / bfloat16
  (a 16-bit input under the float32 policy included: the layer must compute in its compute dtype);
- data: N(3, 2^2), N(1e4, 1) (float32 only: a large offset must cost no digits) or a constant -6e4 (the output
  must be beta: var = 0, and rsqrt(epsilon) multiplies any error in the mean);
- training True / False; fast paths on / off (NORMKIT_DISABLE_FAST_PATHS, read at call time);
- mode: eager, or compiled (jax.jit; tf.function, with and without XLA; torch.compile in three extra rows only,
  each compile takes seconds);
- call: `layer(x)` (Keras' __call__: autocast, input checks; on JAX inside a StatelessScope so that jax.grad
  sees the variables) or `layer.stateless_call(...)` (Layer.call directly, no autocast).

The full product is ~100k rows. The design (`_covering.covering_design`, deterministic) starts from two slices,
USUAL (layer x affine x channel at the configuration most users run) and LARGE_OFFSET (every layer at every rank
under every compiled mode at 1e4), then adds rows until every pair of factor values that a valid row can hold
appears at least once, and every combination of (layer, data, mode) and of (layer, data, policy).

Each row builds the layer on a small input (batch 6, 6 channels), sets random gamma / beta (and moving
statistics near the data's mean and variance), and compares against the independent float64 references
(tests/reference.py, tests/reference_batchnorm.py), computed from the input as the layer sees it (rounded to
the input dtype, then to the compute dtype):

- the output's dtype (the policy's compute dtype) and values;
- dL/dx, dL/dgamma, dL/dbeta of L = sum(dy * y) by the backend's autodiff (jax.grad, tf.GradientTape, torch
  autograd), dy ~ N(0, 1);
- for BatchNormalization every moving statistic after the call (updated in training, untouched otherwise).

Tolerances (relative, and absolute scaled by the largest reference value): 1e-4 for float32 compute, also at the
1e4 offset (a shifted float32 computation is within 1e-6 there; the spec asks 1e-3) except renorm there
(1e-3: see `tolerances`); 1e-2 for float16 and 2e-2 for bfloat16 compute (dx also by the input dtype: its
gradient is rounded to it). The reference's own gradients are checked by central differences
(`test_reference_gradients_by_finite_differences`), the design's coverage by `test_design_covers_every_pair`.

Size and time, measured with `time KERAS_BACKEND=<b> .venv/bin/python -m pytest tests/test_matrix.py -q` on the
2 shared CPU cores (wall time inflated by a load of ~18; CPU time user + sys is what an idle machine would take):
jax 156 rows (135 jit, 21 eager; eager JAX compiles each op: ~1.7 s CPU a row, jit ~0.3 s), 77 s CPU;
tensorflow 185 rows, 41 s CPU; torch 132 rows (3 torch.compile: ~12 s, 5 s, 2 s), 22 s CPU.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any

import keras
import ml_dtypes
import numpy as np
import pytest
import reference
from _covering import covering_design, uncovered
from reference_batchnorm import ReferenceBatchNorm, canonical_axes, fused_layout

import normkit

BACKEND = keras.backend.backend()

BATCH = 6
CHANNELS = 6
GROUPS = 3
VIRTUAL_BATCH = 3
SPATIAL = (4, 3, 2)
MOMENTUM = 0.7
RENORM_CLIPPING = {"rmin": 0.6, "rmax": 1.6, "dmax": 0.8}
CONSTANT = -6e4

COMPILED = {"jax": ["jit"], "tensorflow": ["function", "xla"], "torch": []}[BACKEND]

FACTORS: dict[str, list[Any]] = {
    "layer": ["group", "instance", "layer", "layer_multi", "batch", "batch_ghost", "batch_renorm"],
    "affine": ["center_scale", "center", "scale", "plain"],
    "channel": ["first", "middle", "last"],
    "rank": [2, 3, 4, 5],
    "policy": ["float32", "mixed_float16", "mixed_bfloat16"],
    "input": ["float32", "float16", "bfloat16"],
    "data": ["offset3", "offset1e4", "constant"],
    "training": [True, False],
    "fast": [True, False],
    "mode": [*COMPILED, "eager"],  # compiled first: where rows tie the greedy design takes the first value
    "call": ["layer", "stateless"],
}


def allowed(row: dict[str, Any]) -> bool:
    """Which (partial) rows are valid: constraints between factors, each checked once both are set."""
    rank = row.get("rank")
    if rank is not None and rank < 4 and row.get("channel") == "middle":
        return False
    if rank == 2 and row.get("layer") == "layer_multi":
        return False
    if row.get("data") == "offset1e4" and (row.get("policy", "float32") != "float32"
                                          or row.get("input", "float32") != "float32"):
        return False
    return True


# Which kernel runs depends on the layer, its affine terms and its layout together, and on the backend, dtype and
# fast-path setting: the full product of the first three, at the configuration most users run (float32, fast
# paths on, the backend's usual mode, `layer(x)`, rank 4 so that all three channel positions exist), comes first.
USUAL_MODE = {"jax": "jit", "tensorflow": "eager", "torch": "eager"}[BACKEND]
USUAL = [
    {"layer": layer, "affine": affine, "channel": channel, "rank": 4, "policy": "float32", "input": "float32",
     "data": "offset3", "training": True, "fast": True, "mode": USUAL_MODE, "call": "layer"}
    for layer in FACTORS["layer"] for affine in FACTORS["affine"] for channel in FACTORS["channel"]
]
# A compiler rewrites arithmetic (XLA turns `sum / count` into a multiply by a reciprocal inside some fusions),
# and whether that costs the shifted statistics their exactness depends on the fusion, so on the shape: every
# layer at every rank under every compiled mode, at the large offset (channel position and fast paths varied).
LARGE_OFFSET = [
    {"layer": layer, "affine": "center_scale", "channel": channel, "rank": rank, "policy": "float32",
     "input": "float32", "data": "offset1e4", "training": True, "fast": (i + rank) % 2 == 0, "mode": mode,
     "call": "stateless" if mode == "jit" else "layer"}
    for i, layer in enumerate(FACTORS["layer"])
    for rank in FACTORS["rank"]
    for mode in COMPILED
    for channel in [["first", "last", "middle"][(i + rank) % (3 if rank >= 4 else 2)]]
    if allowed({"layer": layer, "rank": rank})
]
# Then every pair of factor values, and every combination of (layer, data, mode): whether the statistics keep
# their digits depends on the layer, the data's offset and the compiler together.
TRIPLES = [("layer", "data", "mode"), ("layer", "data", "policy")]

ROWS = covering_design(FACTORS, allowed, TRIPLES, initial=USUAL + LARGE_OFFSET)

# torch.compile costs seconds a row: three hand-picked rows, each compiled path in a different configuration.
if BACKEND == "torch":
    _base = dict(rank=4, input="float32", data="offset3", fast=True, mode="compile")
    ROWS = ROWS + [
        {**_base, "layer": "group", "affine": "center", "channel": "first", "policy": "float32",
         "training": True, "call": "layer"},
        {**_base, "layer": "batch_renorm", "affine": "center_scale", "channel": "last", "policy": "mixed_float16",
         "input": "float16", "training": True, "call": "stateless"},
        {**_base, "layer": "layer_multi", "affine": "scale", "channel": "middle", "policy": "mixed_bfloat16",
         "training": False, "fast": False, "call": "stateless", "data": "constant"},
    ]


def row_id(row: dict[str, Any]) -> str:
    return "-".join([
        row["layer"], row["affine"], row["channel"], f"r{row['rank']}", row["policy"], f"in_{row['input']}",
        row["data"], "train" if row["training"] else "infer", "fast" if row["fast"] else "portable", row["mode"],
        row["call"],
    ])


# ----------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    """What one row builds: the layer's arguments, the input shape, and the reference to compare with."""

    kind: str  # group / instance / layer / batch
    kwargs: dict[str, Any]
    shape: tuple[int, ...]
    axes: tuple[int, ...]  # canonical normalized (parameter) axes


def channel_axis(position: str, rank: int) -> int:
    """The axis as the user spells it: 1, a positive middle axis, or -1."""
    return {"first": 1, "middle": rank // 2, "last": -1}[position]


def configure(row: dict[str, Any]) -> Config:
    rank = row["rank"]
    axis = channel_axis(row["channel"], rank)
    canonical = axis % rank
    spatial = iter(SPATIAL)
    shape = tuple(BATCH if a == 0 else CHANNELS if a == canonical else next(spatial) for a in range(rank))
    kwargs: dict[str, Any] = {
        "center": row["affine"] in ("center_scale", "center"),
        "scale": row["affine"] in ("center_scale", "scale"),
        "dtype": row["policy"],
    }
    layer = row["layer"]
    if layer == "group":
        return Config("group", {**kwargs, "groups": GROUPS, "axis": axis}, shape, (canonical,))
    if layer == "instance":
        return Config("instance", {**kwargs, "axis": axis}, shape, (canonical,))
    if layer == "layer":
        return Config("layer", {**kwargs, "axis": axis}, shape, (canonical,))
    if layer == "layer_multi":
        # The channel axis and its neighbour towards the middle, spelled as the user would.
        pair = {"first": [1, 2], "middle": [canonical, canonical + 1], "last": [-2, -1]}[row["channel"]]
        return Config("layer", {**kwargs, "axis": pair}, shape, canonical_axes(pair, rank))
    kwargs = {**kwargs, "axis": axis, "momentum": MOMENTUM}
    if layer == "batch_ghost":
        kwargs["virtual_batch_size"] = VIRTUAL_BATCH
    if layer == "batch_renorm":
        kwargs.update(renorm=True, renorm_clipping=RENORM_CLIPPING, renorm_momentum=0.6)
    return Config("batch", kwargs, shape, (canonical,))


def make_layer(config: Config) -> keras.layers.Layer:
    cls = {
        "group": normkit.GroupNormalization,
        "instance": normkit.InstanceNormalization,
        "layer": normkit.LayerNormalization,
        "batch": normkit.BatchNormalization,
    }[config.kind]
    return cls(**config.kwargs)


def compute_dtype(policy: str) -> str:
    return {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}[policy]


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to `dtype` and held as float64 (bfloat16 through ml_dtypes)."""
    numpy_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    return np.asarray(x).astype(numpy_dtype).astype(np.float64)


def data_for(row: dict[str, Any], shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """(input values exactly representable in the row's input dtype, their nominal mean, their nominal std)."""
    if row["data"] == "constant":
        x, loc, spread = np.full(shape, CONSTANT), CONSTANT, 0.0
    else:
        loc, spread = (3.0, 2.0) if row["data"] == "offset3" else (1e4, 1.0)
        x = rng.normal(loc, spread, size=shape)
    return round_to(x, row["input"]), loc, spread


def set_weights(layer: keras.layers.Layer, rng: np.random.Generator, loc: float, spread: float) -> None:
    """Random gamma / beta; moving statistics near the data's (so inference outputs stay O(1))."""
    values: dict[str, np.ndarray] = {}
    for v in layer.weights:
        shape = tuple(v.shape)
        if v.name == "gamma":
            values[v.name] = rng.uniform(0.5, 1.5, size=shape)
        elif v.name == "beta":
            values[v.name] = rng.normal(size=shape)
        elif v.name == "moving_mean":
            values[v.name] = loc + rng.normal(size=shape) * max(spread, 1.0) * 0.5
        elif v.name == "moving_variance":
            values[v.name] = max(spread, 1.0) ** 2 * rng.uniform(0.5, 2.0, size=shape)
    for v in layer.weights:
        if v.name == "moving_stddev":
            values[v.name] = np.sqrt(values["moving_variance"])
        elif v.name == "renorm_mean":
            values[v.name] = values["moving_mean"] + rng.normal(size=tuple(v.shape)) * 0.3
        elif v.name == "renorm_stddev":
            values[v.name] = np.sqrt(values["moving_variance"]) * rng.uniform(0.8, 1.25, size=tuple(v.shape))
    for v in layer.weights:
        v.assign(values[v.name].astype("float32"))


def weights_of(layer: keras.layers.Layer) -> dict[str, np.ndarray]:
    return {v.name: to_float64(v.value) for v in layer.weights}


# ------------------------------------------------------------------------------------------------ reference


@dataclass
class Expected:
    y: np.ndarray
    dx: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray
    state: dict[str, np.ndarray]  # BatchNormalization's weights after the call; {} for the others


def expected_for(config: Config, layer: keras.layers.Layer, x: np.ndarray, dy: np.ndarray, training: bool,
                 initial: dict[str, np.ndarray]) -> Expected:
    gamma, beta = initial.get("gamma"), initial.get("beta")
    epsilon = layer.epsilon
    axis = config.kwargs["axis"]
    if config.kind == "group":
        y = reference.group_norm(x, gamma, beta, groups=GROUPS, axis=axis, epsilon=epsilon)
        grads = reference.group_norm_grad(x, gamma, dy, groups=GROUPS, axis=axis, epsilon=epsilon)
    elif config.kind == "instance":
        y = reference.instance_norm(x, gamma, beta, axis=axis, epsilon=epsilon)
        grads = reference.instance_norm_grad(x, gamma, dy, axis=axis, epsilon=epsilon)
    elif config.kind == "layer":
        y = reference.layer_norm(x, gamma, beta, axis=axis, epsilon=epsilon)
        grads = reference.layer_norm_grad(x, gamma, dy, axis=axis, epsilon=epsilon)
    else:
        ref = ReferenceBatchNorm(
            rank=x.ndim,
            axes=config.axes,
            state={name: value.copy() for name, value in initial.items()},
            momentum=MOMENTUM,
            epsilon=epsilon,
            renorm=layer.renorm,
            renorm_clipping=layer.renorm_clipping,
            renorm_momentum=layer.renorm_momentum,
            virtual_batch_size=layer.virtual_batch_size,
            # tf.keras 2's fused kernel (Bessel-corrected moving variance) ran on NCHW/NHWC, NCDHW/NDHWC layouts
            # without renorm or ghost batches.
            bessel=fused_layout(x.ndim, config.axes) and not layer.renorm and layer.virtual_batch_size is None,
        )
        step = ref.train(x, dy) if training else ref.infer(x, dy)
        return Expected(step.y, step.dx, step.dgamma, step.dbeta, ref.state)
    return Expected(y, *grads, {})


# ------------------------------------------------------------------------------------------- backend runs


def to_float64(t: Any) -> np.ndarray:
    if BACKEND == "torch" and hasattr(t, "detach"):
        t = t.detach()
    if keras.backend.standardize_dtype(t.dtype) in ("float16", "bfloat16"):
        t = keras.ops.cast(t, "float32")
    return np.asarray(keras.ops.convert_to_numpy(t), np.float64)


@dataclass
class Result:
    y: Any  # the backend tensor (its dtype is checked)
    dx: Any
    grads: dict[str, Any]  # "gamma" / "beta" -> gradient
    state: dict[str, Any]  # non-trainable weight name -> value after the call


def call_kwargs(layer: keras.layers.Layer, row: dict[str, Any]) -> dict[str, Any]:
    """`training` where the layer's `call` takes it: `__call__` drops it otherwise, `stateless_call` does not."""
    return {"training": row["training"]} if "training" in inspect.signature(layer.call).parameters else {}


def run_row(layer: keras.layers.Layer, x: np.ndarray, dy: np.ndarray, row: dict[str, Any]) -> Result:
    runner = {"jax": _run_jax, "tensorflow": _run_tensorflow, "torch": _run_torch}[BACKEND]
    return runner(layer, x.astype(np.float32), dy.astype(np.float32), row)


def _run_jax(layer, x, dy, row) -> Result:
    import jax
    import jax.numpy as jnp

    trainable, non_trainable = list(layer.trainable_variables), list(layer.non_trainable_variables)
    kwargs, stateless = call_kwargs(layer, row), row["call"] == "stateless"

    def loss(tv, xx, ntv):
        if stateless:
            y, new = layer.stateless_call(tv, ntv, xx, **kwargs)
        else:
            mapping = list(zip(trainable, tv, strict=True)) + list(zip(non_trainable, ntv, strict=True))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                y = layer(xx, **kwargs)
            new = [scope.get_current_value(v) for v in non_trainable]
        return jnp.sum(y.astype(jnp.float32) * dy), (y, new)

    step = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    if row["mode"] == "jit":
        step = jax.jit(step)
    xx = jnp.asarray(x).astype(row["input"])
    (_, (y, new)), (gtv, gx) = step([v.value for v in trainable], xx, [v.value for v in non_trainable])
    return Result(y, gx, {v.name: g for v, g in zip(trainable, gtv, strict=True)},
                  {v.name: value for v, value in zip(non_trainable, new, strict=True)})


def _run_tensorflow(layer, x, dy, row) -> Result:
    import tensorflow as tf

    trainable, non_trainable = list(layer.trainable_variables), list(layer.non_trainable_variables)
    kwargs, stateless = call_kwargs(layer, row), row["call"] == "stateless"

    def step(xx, dyy):
        with tf.GradientTape() as tape:
            tape.watch(xx)
            if stateless:
                tv = [tf.identity(v.value) for v in trainable]
                ntv = [tf.identity(v.value) for v in non_trainable]
                for t in tv:
                    tape.watch(t)
                y, new = layer.stateless_call(tv, ntv, xx, **kwargs)
                targets = tv
            else:
                y = layer(xx, **kwargs)
                new = []
                targets = trainable
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * dyy)
        gx, *gtv = tape.gradient(loss, [xx, *targets])
        return y, gx, gtv, new

    if row["mode"] != "eager":
        step = tf.function(step, jit_compile=row["mode"] == "xla")
    y, gx, gtv, new = step(tf.cast(tf.constant(x), row["input"]), tf.constant(dy))
    if not stateless:
        new = [v.value for v in non_trainable]
    return Result(y, gx, {v.name: g for v, g in zip(trainable, gtv, strict=True)},
                  {v.name: value for v, value in zip(non_trainable, new, strict=True)})


def _run_torch(layer, x, dy, row) -> Result:
    import torch

    trainable, non_trainable = list(layer.trainable_variables), list(layer.non_trainable_variables)
    kwargs, stateless = call_kwargs(layer, row), row["call"] == "stateless"
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[row["input"]]
    xx = torch.tensor(x).to(dtype).requires_grad_(True)

    def forward(xx, tv):
        if stateless:
            return layer.stateless_call(tv, [v.value.detach().clone() for v in non_trainable], xx, **kwargs)
        return layer(xx, **kwargs), []

    if stateless:
        tv = [v.value.detach().clone().requires_grad_(True) for v in trainable]
    else:
        tv = [v.value for v in trainable]
    if row["mode"] == "compile":
        torch._dynamo.reset()  # the compiled graph must be traced under this row's settings
        forward = torch.compile(forward, dynamic=False)
    y, new = forward(xx, tv)
    loss = (y.float() * torch.tensor(dy)).sum()
    gx, *gtv = torch.autograd.grad(loss, [xx, *tv])
    if not stateless:
        new = [v.value for v in non_trainable]
    return Result(y, gx, {v.name: g for v, g in zip(trainable, gtv, strict=True)},
                  {v.name: value for v, value in zip(non_trainable, new, strict=True)})


# ------------------------------------------------------------------------------------------------ tolerance

TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 2e-2}


def tolerances(row: dict[str, Any]) -> dict[str, float]:
    compute = compute_dtype(row["policy"])
    base = TOLERANCE[compute]
    if row["layer"] == "batch_renorm" and row["data"] == "offset1e4":
        # d = (batch mean - renorm mean) / renorm stddev: a float32 batch mean near 1e4 is a multiple of
        # 2^-10 ~ 1e-3, so every float32 implementation's d (and y, dgamma) is that far off float64's.
        base = 1e-3
    # dx comes back in the input's dtype: rounded to it at the end.
    return {"y": base, "dx": max(base, TOLERANCE[row["input"]]), "dgamma": base, "dbeta": base,
            "state": 1e-5 if compute == "float32" else 1e-4}


def mismatch(got: np.ndarray, want: np.ndarray, tol: float) -> str | None:
    """None when got == want within rtol = tol and atol = tol * max(1, max |want|); else a one-line summary."""
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    if got.shape != want.shape:
        return f"shape {got.shape} != {want.shape}"
    bad = ~(np.abs(got - want) <= tol * scale + tol * np.abs(want))
    if not bad.any():
        return None
    diff = np.abs(got - want)
    diff = np.where(np.isnan(diff), np.inf, diff)
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    return (f"max |diff| {float(np.max(diff)):.3g} (scale {scale:.3g}, tol {tol:g}) at {tuple(map(int, worst))}: "
            f"got {float(got[worst]):.7g}, want {float(want[worst]):.7g}; {int(bad.sum())}/{bad.size} off")


@contextlib.contextmanager
def fast_paths(enabled: bool, monkeypatch: pytest.MonkeyPatch):
    if enabled:
        monkeypatch.delenv("NORMKIT_DISABLE_FAST_PATHS", raising=False)
    else:
        monkeypatch.setenv("NORMKIT_DISABLE_FAST_PATHS", "1")
    yield


# ------------------------------------------------------------------------------------------------- the test


@pytest.mark.parametrize("row", ROWS, ids=[row_id(r) for r in ROWS])
def test_row(row: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    config = configure(row)
    rng = np.random.default_rng(ROWS.index(row))
    layer = make_layer(config)
    layer.build(config.shape)
    x, loc, spread = data_for(row, config.shape, rng)
    set_weights(layer, rng, loc, spread)
    dy = rng.normal(size=config.shape)
    initial = weights_of(layer)
    compute = compute_dtype(row["policy"])
    # The layer sees the input cast to its compute dtype: the reference starts from the same values.
    x_seen = round_to(x, compute)
    expected = expected_for(config, layer, x_seen, round_to(dy, "float32"), row["training"], initial)

    with fast_paths(row["fast"], monkeypatch):
        result = run_row(layer, x, dy, row)

    tol = tolerances(row)
    problems = []
    if keras.backend.standardize_dtype(result.y.dtype) != compute:
        problems.append(f"y dtype {keras.backend.standardize_dtype(result.y.dtype)}, want {compute}")
    if keras.backend.standardize_dtype(result.dx.dtype) != row["input"]:
        problems.append(f"dx dtype {keras.backend.standardize_dtype(result.dx.dtype)}, want {row['input']}")
    checks = [("y", result.y, expected.y), ("dx", result.dx, expected.dx)]
    want_params = {"gamma": expected.dgamma, "beta": expected.dbeta}
    assert set(result.grads) == {n for n in ("gamma", "beta") if getattr(layer, n) is not None}
    for name, grad in result.grads.items():
        checks.append((f"d{name}", grad, np.reshape(want_params[name], tuple(grad.shape))))
    for what, got, want in checks:
        problem = mismatch(to_float64(got), want, tol[what])
        if problem:
            problems.append(f"{what}: {problem}")
    if config.kind == "batch":
        after = result.state
        for name, want in expected.state.items():
            if name in ("gamma", "beta"):
                continue
            problem = mismatch(to_float64(after[name]), want, tol["state"])
            if problem:
                problems.append(f"{name} after the call: {problem}")
    assert not problems, f"{row_id(row)} ({config.kwargs}, shape {config.shape}):\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------------- checks of the checks


def test_design_covers_every_pair() -> None:
    """Every pair of factor values, and every combination of each triple in TRIPLES, that some valid row holds
    is in the design; every row is valid and distinct."""
    design = ROWS if BACKEND != "torch" else ROWS[:-3]
    assert all(allowed(row) for row in design)
    assert uncovered(design, FACTORS, allowed, TRIPLES) == []
    assert len({row_id(r) for r in ROWS}) == len(ROWS)


def test_pairwise_on_a_small_design() -> None:
    """The generator on factors small enough to check by hand: 3 x 3 x 2 x 2 needs at least 9 rows for its pairs,
    and 3 x 3 x 2 = 18 with the triple (a, b, c), less the 3 combinations the constraint forbids."""
    factors = {"a": [0, 1, 2], "b": ["x", "y", "z"], "c": [True, False], "d": [True, False]}
    forbid = lambda r: not (r.get("a") == 2 and r.get("c") is False)  # noqa: E731
    rows = covering_design(factors, forbid)
    assert uncovered(rows, factors, forbid) == []
    assert all(forbid(r) for r in rows)
    assert 9 <= len(rows) <= 12
    assert rows == covering_design(factors, forbid)  # deterministic
    with_triple = covering_design(factors, forbid, [("c", "a", "b")])
    assert uncovered(with_triple, factors, forbid, [("a", "b", "c")]) == []
    assert 15 <= len(with_triple) <= 18
    # The checker itself: a design missing one row misses something.
    assert uncovered(rows[1:], factors, forbid) != []


def _finite_difference(fn, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.empty_like(x)
    for index in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        grad[index] = (fn(plus) - fn(minus)) / (2 * h)
    return grad


# r and d carry no gradient (tf.keras 2's stop_gradient): clipping both to one value makes them constants, so
# that central differences of the forward pass are the analytic gradient.
FROZEN_RENORM = {"rmin": 1.2, "rmax": 1.2, "dmax": 0.0}


@pytest.mark.parametrize("kind", ["group", "instance", "layer_multi", "batch_train", "batch_ghost_renorm"])
def test_reference_gradients_by_finite_differences(kind: str) -> None:
    """The float64 reference's analytic gradients (the matrix's yardstick) equal central differences of its own
    forward pass: an error in the reference cannot make a wrong layer pass."""
    rng = np.random.default_rng(7)
    shape = (6, 3, 4) if kind != "layer_multi" else (2, 3, 4)
    x = rng.normal(3.0, 2.0, size=shape)
    dy = rng.normal(size=shape)
    channels = shape[1] if kind in ("group", "instance") else shape[-1]
    gamma, beta = rng.uniform(0.5, 1.5, size=channels), rng.normal(size=channels)
    if kind.startswith("batch"):
        ghost = kind == "batch_ghost_renorm"
        state = {"gamma": gamma, "beta": beta, "moving_mean": np.full(channels, 2.5),
                 "moving_variance": np.full(channels, 3.0)}
        if ghost:
            state.update(moving_stddev=np.sqrt(state["moving_variance"]), renorm_mean=np.full(channels, 3.2),
                         renorm_stddev=np.full(channels, 1.7))

        def ref_with(g: np.ndarray) -> ReferenceBatchNorm:
            return ReferenceBatchNorm(rank=3, axes=(2,), state={**state, "gamma": g}, momentum=MOMENTUM,
                                      renorm=ghost, renorm_clipping=FROZEN_RENORM if ghost else None,
                                      virtual_batch_size=3 if ghost else None)

        analytic = ref_with(gamma).train(x, dy)
        dx, dgamma = analytic.dx, analytic.dgamma
        loss_x = lambda xx: float(np.sum(dy * ref_with(gamma).train(xx).y))  # noqa: E731
        loss_g = lambda g: float(np.sum(dy * ref_with(g).train(x).y))  # noqa: E731
    else:
        if kind == "group":
            forward = lambda xx, g: reference.group_norm(xx, g, beta, groups=3, axis=1)  # noqa: E731
            dx, dgamma, _ = reference.group_norm_grad(x, gamma, dy, groups=3, axis=1)
        elif kind == "instance":
            forward = lambda xx, g: reference.instance_norm(xx, g, beta, axis=1)  # noqa: E731
            dx, dgamma, _ = reference.instance_norm_grad(x, gamma, dy, axis=1)
        else:
            gamma = rng.uniform(0.5, 1.5, size=shape[1:])
            beta = rng.normal(size=shape[1:])
            forward = lambda xx, g: reference.layer_norm(xx, g, beta, axis=[1, 2])  # noqa: E731
            dx, dgamma, _ = reference.layer_norm_grad(x, gamma, dy, axis=[1, 2])
        loss_x = lambda xx: float(np.sum(dy * forward(xx, gamma)))  # noqa: E731
        loss_g = lambda g: float(np.sum(dy * forward(x, g)))  # noqa: E731
    np.testing.assert_allclose(dx, _finite_difference(loss_x, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dgamma, _finite_difference(loss_g, gamma), rtol=1e-5, atol=1e-6)


def test_constant_input_reference_is_beta() -> None:
    """The data factor's constant rows are meaningful: the reference of a constant input is exactly beta."""
    x = np.full((6, 4, 6), CONSTANT)
    beta = np.linspace(-1, 1, 6)
    y = reference.group_norm(x, np.full(6, 1.3), beta, groups=3)
    np.testing.assert_array_equal(y, np.broadcast_to(beta, x.shape))


"""One backend's measurements (run in a subprocess: the Keras backend is fixed per process).

Usage: KERAS_BACKEND=jax python -m normkit.bench.worker --cases smoke|full --reps N --device cpu|gpu --out F.json
Every variant of a case is timed in the form users train with (jax.jit of value_and_grad over the layer's
stateless_call, a tf.function with a GradientTape, the torch backend's eager autograd step); repetitions of
the variants are interleaved, each a short batch of back-to-back calls, and the median per call is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import normkit  # noqa: E402
from normkit.bench.cases import Case, best_native, full_cases, smoke_cases  # noqa: E402

BACKEND = keras.backend.backend()


@contextlib.contextmanager
def _portable() -> Iterator[None]:
    old = os.environ.get("NORMKIT_DISABLE_FAST_PATHS")
    os.environ["NORMKIT_DISABLE_FAST_PATHS"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["NORMKIT_DISABLE_FAST_PATHS"]
        else:
            os.environ["NORMKIT_DISABLE_FAST_PATHS"] = old


def make_layers(case: Case) -> dict[str, keras.layers.Layer]:
    kw = {"dtype": case.policy}
    if case.layer == "GroupNormalization":
        ours = normkit.GroupNormalization(case.groups, **kw)
        builtin = keras.layers.GroupNormalization(case.groups, **kw)
    elif case.layer == "InstanceNormalization":
        ours, builtin = normkit.InstanceNormalization(**kw), keras.layers.GroupNormalization(-1, **kw)
    elif case.layer == "LayerNormalization":
        ours, builtin = normkit.LayerNormalization(**kw), keras.layers.LayerNormalization(**kw)
    else:
        ours, builtin = normkit.BatchNormalization(**kw), keras.layers.BatchNormalization(**kw)
    portable = type(ours).from_config(ours.get_config())
    # identity: a layer that does nothing, timed like the others: the harness's own floor (the loss, its
    # gradient, and in torch's eager mode the fixed cost of a Keras layer call, which bare native calls skip).
    return {"normkit": ours, "portable": portable, "keras": builtin, "identity": keras.layers.Identity()}


def _input_dtype(case: Case) -> str:
    return "bfloat16" if "bfloat16" in case.policy else "float32"


# ---------------------------------------------------------------------------------------------- jax


def _jax_variants(case: Case, x_np: np.ndarray, ct_np: np.ndarray, device: str) -> dict[str, tuple[Any, Any]]:
    import jax
    import jax.numpy as jnp

    dev = jax.devices("gpu")[0] if device == "gpu" else jax.devices("cpu")[0]
    x = jax.device_put(jnp.asarray(x_np).astype(_input_dtype(case)), dev)
    ct = jax.device_put(jnp.asarray(ct_np), dev)
    out: dict[str, tuple[Any, Any]] = {}
    for name, layer in make_layers(case).items():
        layer.build(x.shape)
        tv = [v.value for v in layer.trainable_variables]
        ntv = [v.value for v in layer.non_trainable_variables]
        # stateless_call hands `training` to call() as it is (Identity takes none).
        training = {"training": True} if case.layer == "BatchNormalization" and name != "identity" else {}

        def fwd(tv: Any, ntv: Any, x: Any, layer: Any = layer, training: Any = training) -> Any:
            return layer.stateless_call(tv, ntv, x, **training)

        def loss(tv: Any, ntv: Any, x: Any, layer: Any = layer, training: Any = training) -> Any:
            y, new_ntv = layer.stateless_call(tv, ntv, x, **training)
            return jnp.sum(y.astype(jnp.float32) * ct), new_ntv

        f = jax.jit(fwd)
        fb = jax.jit(jax.value_and_grad(loss, (0, 2), has_aux=True))
        ctx = _portable() if name == "portable" else contextlib.nullcontext()
        with ctx:  # the fast-path switch is read while tracing
            jax.block_until_ready(f(tv, ntv, x))
            jax.block_until_ready(fb(tv, ntv, x))
        out[name] = (
            lambda f=f, tv=tv, ntv=ntv: jax.block_until_ready(f(tv, ntv, x)),
            lambda fb=fb, tv=tv, ntv=ntv: jax.block_until_ready(fb(tv, ntv, x)),
        )
        if name != "identity":
            out[name + ":saved"] = _jax_saved_bytes(
                lambda tv, x, layer=layer, ntv=ntv, training=training: layer.stateless_call(tv, ntv, x, **training)[0],
                tv,
                x,
                name == "portable",
            )

    # Native: jax.nn.standardize (mean and E[x^2] - E[x]^2) on the grouped view, plus the affine.
    shape = x.shape
    channels = shape[-1]
    gamma = jnp.ones((channels,), jnp.float32)
    beta = jnp.zeros((channels,), jnp.float32)

    def native(gamma: Any, beta: Any, x: Any) -> Any:
        xs = x.astype(jnp.float32)
        if case.layer in ("GroupNormalization", "InstanceNormalization"):
            groups = channels if case.layer == "InstanceNormalization" else case.groups
            xg = xs.reshape(shape[0], -1, groups, channels // groups)
            y = jax.nn.standardize(xg, axis=(1, 3), epsilon=1e-3).reshape(shape)
        elif case.layer == "LayerNormalization":
            y = jax.nn.standardize(xs, axis=-1, epsilon=1e-3)
        else:
            y = jax.nn.standardize(xs, axis=tuple(range(len(shape) - 1)), epsilon=1e-3)
        return (y * gamma + beta).astype(x.dtype)

    nf = jax.jit(native)
    nfb = jax.jit(jax.value_and_grad(lambda g, b, x: jnp.sum(native(g, b, x).astype(jnp.float32) * ct), (0, 2)))
    jax.block_until_ready(nf(gamma, beta, x))
    jax.block_until_ready(nfb(gamma, beta, x))
    out["native"] = (
        lambda: jax.block_until_ready(nf(gamma, beta, x)),
        lambda: jax.block_until_ready(nfb(gamma, beta, x)),
    )
    copy = jax.jit(lambda x: x * 2)
    jax.block_until_ready(copy(x))
    out["copy"] = (lambda: jax.block_until_ready(copy(x)), None)
    return out


def _jax_saved_bytes(f: Callable[..., Any], tv: Any, x: Any, portable: bool) -> int:
    """Bytes of the residuals jax.vjp keeps for the backward pass (every leaf of the vjp function)."""
    import jax

    ctx = _portable() if portable else contextlib.nullcontext()
    with ctx:
        _, vjp_fn = jax.vjp(f, tv, x)
    seen: set[int] = set()
    total = 0
    for leaf in jax.tree_util.tree_leaves(vjp_fn):
        if hasattr(leaf, "nbytes") and id(leaf) not in seen:
            seen.add(id(leaf))
            total += int(leaf.nbytes)
    return total


# -------------------------------------------------------------------------------------------- torch


def _torch_variants(case: Case, x_np: np.ndarray, ct_np: np.ndarray, device: str) -> dict[str, tuple[Any, Any]]:
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    dtype = torch.bfloat16 if _input_dtype(case) == "bfloat16" else torch.float32
    x = torch.tensor(x_np, device=dev).to(dtype)
    ct = torch.tensor(ct_np, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    training = {"training": True} if case.layer == "BatchNormalization" else {}
    out: dict[str, tuple[Any, Any]] = {}

    def fwd_bwd(call: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor]) -> None:
        xg = x.detach().requires_grad_(True)
        for p in params:
            p.grad = None
        y = call(xg)
        y.backward(ct.to(y.dtype))
        sync()

    def forward(call: Callable[[torch.Tensor], torch.Tensor]) -> None:
        with torch.no_grad():
            call(x)
        sync()

    for name, layer in make_layers(case).items():
        layer.build(tuple(x.shape))
        params = [v.value for v in layer.trainable_variables]

        def call(t: torch.Tensor, layer: Any = layer, name: str = name) -> torch.Tensor:
            ctx = _portable() if name == "portable" else contextlib.nullcontext()
            with ctx:  # eager: the switch is read on every call
                return layer(t, **training)

        out[name] = (lambda call=call: forward(call), lambda call=call, params=params: fwd_bwd(call, params))
        if name != "identity":
            out[name + ":saved"] = _torch_saved_bytes(call, x)

    channels = x.shape[-1]
    gamma = torch.ones(channels, device=dev, requires_grad=True)
    beta = torch.zeros(channels, device=dev, requires_grad=True)
    natives: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if case.layer in ("GroupNormalization", "InstanceNormalization"):
        groups = channels if case.layer == "InstanceNormalization" else case.groups

        def nchw(t: torch.Tensor) -> torch.Tensor:
            n = t.shape[0]
            y = F.group_norm(t.float().reshape(n, -1, channels).transpose(1, 2).contiguous(), groups, gamma, beta, 1e-3)
            return y.transpose(1, 2).reshape(t.shape).to(t.dtype)

        def channels_last(t: torch.Tensor) -> torch.Tensor:
            n = t.shape[0]
            v = t.float().reshape(n, -1, 1, channels).permute(0, 3, 1, 2)
            return F.group_norm(v, groups, gamma, beta, 1e-3).permute(0, 2, 3, 1).reshape(t.shape).to(t.dtype)

        natives = {"native:nchw": nchw, "native:channels_last": channels_last}
    elif case.layer == "LayerNormalization":
        natives = {"native": lambda t: F.layer_norm(t.float(), (channels,), gamma, beta, 1e-3).to(t.dtype)}
    else:
        # With running statistics, as torch.nn.BatchNorm2d trains: the kernel updates them in place, the work
        # a training BatchNormalization layer must do too.
        running_mean = torch.zeros(channels, device=dev)
        running_var = torch.ones(channels, device=dev)
        natives = {
            "native": lambda t: (
                F.batch_norm(
                    t.float().reshape(-1, channels), running_mean, running_var, gamma, beta, True, 0.01, 1e-3
                )
                .reshape(t.shape)
                .to(t.dtype)
            )
        }
    for name, fn in natives.items():
        out[name] = (lambda fn=fn: forward(fn), lambda fn=fn: fwd_bwd(fn, [gamma, beta]))
    out["copy"] = (lambda: (x.clone(), sync()), None)
    return out


def _torch_saved_bytes(call: Callable[[Any], Any], x: Any) -> int:
    """Bytes autograd saves for backward (saved_tensors_hooks; tensors sharing storage counted once)."""
    import torch

    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    xg = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call(xg)
    return sum(storages.values())


# ----------------------------------------------------------------------------------------------- tf


def _tf_variants(case: Case, x_np: np.ndarray, ct_np: np.ndarray, device: str) -> dict[str, tuple[Any, Any]]:
    import tensorflow as tf

    with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
        x = tf.cast(tf.constant(x_np), _input_dtype(case))
        ct = tf.constant(ct_np)
    training = {"training": True} if case.layer == "BatchNormalization" else {}
    out: dict[str, tuple[Any, Any]] = {}
    for name, layer in make_layers(case).items():
        layer.build(tuple(x.shape))

        @tf.function
        def fwd(x: Any, layer: Any = layer) -> Any:
            return layer(x, **training)

        @tf.function
        def fb(x: Any, layer: Any = layer) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.cast(layer(x, **training), tf.float32) * ct)
            return loss, tape.gradient(loss, [x, *layer.trainable_variables])

        ctx = _portable() if name == "portable" else contextlib.nullcontext()
        with ctx:  # read while tracing
            fwd(x)
            fb(x)
        out[name] = (lambda fwd=fwd: _tf_sync(fwd(x)), lambda fb=fb: _tf_sync(fb(x)))

    channels = int(x.shape[-1])
    gamma = tf.Variable(tf.ones([channels]))
    beta = tf.Variable(tf.zeros([channels]))
    moving_mean = tf.Variable(tf.zeros([channels]))
    moving_var = tf.Variable(tf.ones([channels]))

    def native(t: Any) -> Any:
        ts = tf.cast(t, tf.float32)
        if case.layer == "BatchNormalization":
            # The moving averages updated by the kernel and assigned, as tf.keras 2's fused layer trained.
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                tf.reshape(ts, [-1, 1, 1, channels]), gamma, beta, mean=moving_mean, variance=moving_var,
                epsilon=1e-3, is_training=True, exponential_avg_factor=0.01,
            )  # fmt: skip
            moving_mean.assign(mean)
            moving_var.assign(var)
            return tf.cast(tf.reshape(y, tf.shape(t)), t.dtype)
        if case.layer == "LayerNormalization":
            mean, var = tf.nn.moments(ts, axes=[-1], keepdims=True)
            return tf.cast(tf.nn.batch_normalization(ts, mean, var, beta, gamma, 1e-3), t.dtype)
        groups = channels if case.layer == "InstanceNormalization" else case.groups
        xg = tf.reshape(ts, [t.shape[0], -1, groups, channels // groups])
        mean, var = tf.nn.moments(xg, axes=[1, 3], keepdims=True)
        y = tf.reshape((xg - mean) * tf.math.rsqrt(var + 1e-3), tf.shape(t)) * gamma + beta
        return tf.cast(y, t.dtype)

    nf = tf.function(native)

    @tf.function
    def nfb(x: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(native(x), tf.float32) * ct)
        return loss, tape.gradient(loss, [x, gamma, beta])

    copy = tf.function(lambda t: t * 2)
    nf(x), nfb(x), copy(x)
    out["native"] = (lambda: _tf_sync(nf(x)), lambda: _tf_sync(nfb(x)))
    out["copy"] = (lambda: _tf_sync(copy(x)), None)
    return out


def _tf_sync(result: Any) -> None:
    import tensorflow as tf

    for t in tf.nest.flatten(result):
        t.numpy() if t.shape.rank == 0 else None
    tf.nest.map_structure(lambda t: t._numpy() if hasattr(t, "_numpy") else None, result)


# --------------------------------------------------------------------------------------------- main


# Each repetition times a batch of back-to-back calls of one variant (about _BATCH_SECONDS, at most _MAX_CALLS)
# and keeps the mean per call: a single sub-millisecond call is at the mercy of one page fault or preemption.
_BATCH_SECONDS = 0.02
_MAX_CALLS = 20


def measure(case: Case, reps: int, device: str) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=case.shape).astype(np.float32)
    ct = rng.normal(size=case.shape).astype(np.float32)
    make = {"jax": _jax_variants, "torch": _torch_variants, "tensorflow": _tf_variants}[BACKEND]
    variants = make(case, x, ct, device)
    saved = {k.split(":")[0]: v for k, v in variants.items() if k.endswith(":saved")}
    timed = {k: v for k, v in variants.items() if not k.endswith(":saved")}
    times: dict[str, dict[str, list[float]]] = {k: {"fwd": [], "fwdbwd": []} for k in timed}
    calls: dict[tuple[str, str], int] = {}
    for name, (fwd, fb) in timed.items():  # warm up every variant; size its batch of calls
        for mode, fn in (("fwd", fwd), ("fwdbwd", fb)):
            if fn is not None:
                fn()
                start = time.perf_counter()
                fn()
                calls[name, mode] = max(1, min(_MAX_CALLS, int(_BATCH_SECONDS / (time.perf_counter() - start))))
    for _ in range(reps):  # interleaved repetitions
        for name, (fwd, fb) in timed.items():
            for mode, fn in (("fwd", fwd), ("fwdbwd", fb)):
                if fn is None:
                    continue
                n = calls[name, mode]
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                times[name][mode].append((time.perf_counter() - start) / n)
    medians = {k: {m: (statistics.median(v) * 1e3 if v else None) for m, v in d.items()} for k, d in times.items()}
    best, best_name = best_native(medians)
    itemsize = 2 if _input_dtype(case) == "bfloat16" else 4
    return {
        "backend": BACKEND,
        "device": device,
        "case": case.name,
        "label": case.label,
        "input_bytes": int(np.prod(case.shape)) * itemsize,
        "ms": medians,
        "native_best": best,
        "native_best_name": best_name,
        "saved_bytes": saved,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="full")
    parser.add_argument("--only", default="")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if BACKEND == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    cases = smoke_cases() if args.cases == "smoke" else full_cases()
    if args.only:
        cases = [c for c in cases if c.name in args.only.split(",")]
    if args.cases != "smoke" and cases:
        # A throwaway pass over the first case: a fresh process's first large buffers are page-faulted in
        # (the first case's copy floor measured 9 ms instead of 2.7 ms on JAX).
        measure(cases[0], 1, args.device)
        keras.backend.clear_session()
    rows = []
    for case in cases:
        rows.append(measure(case, args.reps, args.device))
        print(json.dumps({"done": case.name, "backend": BACKEND, "ms": rows[-1]["ms"]["normkit"]}), flush=True)
        keras.backend.clear_session()
    with open(args.out, "w") as f:
        json.dump(rows, f)


if __name__ == "__main__":
    main()

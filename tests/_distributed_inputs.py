"""Inputs and float64 NumPy references shared by the distributed workers (subprocesses) and their tests.

NumPy only: the tests import this without starting any engine, the workers build their per-replica tensors
from it. The references never call normkit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

GRAD_SHAPE = (3,)
UNEVEN_COUNTS = {2: (3, 5), 4: (3, 5, 0, 4)}
CHANNELS = 3
SHIFT = 1.0e4
DEVICES_JAX = 4  # host devices of the JAX worker (XLA_FLAGS=--xla_force_host_platform_device_count)
TESTS_DIR = Path(__file__).resolve().parent


def grad_inputs(replica: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, w) of one replica for the sum-and-gradient check."""
    rng = np.random.default_rng(100 + replica)
    return (
        rng.normal(size=GRAD_SHAPE).astype("float32"),
        rng.normal(size=(2, 2)).astype("float32"),
        rng.uniform(0.5, 2.0, size=GRAD_SHAPE).astype("float32"),
    )


def expected_sum_and_gradient(replicas: int) -> dict[str, np.ndarray]:
    """With ya = sum_r a_r, yb = sum_r b_r and the global loss sum_r [sum(w_r * ya^2) + sum(yb)]:
    every replica gets ya, yb, d/da_r = 2 ya sum_r w_r and d/db_r = replicas (the all-reduce's gradient is
    the all-reduce of the gradients; a local-only backward would give 2 ya w_r and 1)."""
    inputs = [tuple(t.astype(np.float64) for t in grad_inputs(r)) for r in range(replicas)]
    sum_a = sum(a for a, _, _ in inputs)
    sum_b = sum(b for _, b, _ in inputs)
    sum_w = sum(w for _, _, w in inputs)
    return {
        "sum_a": np.stack([sum_a] * replicas),
        "sum_b": np.stack([sum_b] * replicas),
        "grad_a": np.stack([2.0 * sum_a * sum_w] * replicas),
        "grad_b": np.full((replicas, 2, 2), float(replicas)),
    }


def uneven_rows(replica: int, count: int) -> np.ndarray:
    """`count` rows at mean 1e4 (a float32 mean alone is an ulp, 1e-3, off there)."""
    rng = np.random.default_rng(200 + replica)
    return (SHIFT + rng.normal(0.0, 1.0, size=(count, CHANNELS)) + np.arange(CHANNELS)).astype("float32")


def expected_uneven_moments(replicas: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance of all replicas' rows together (float64)."""
    rows = np.concatenate(
        [uneven_rows(r, c).astype(np.float64) for r, c in enumerate(UNEVEN_COUNTS[replicas])], axis=0
    )
    return rows.mean(axis=0), rows.var(axis=0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_worker(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180.0) -> None:
    """Runs tests/<script> with this Python; its output is shown when it fails."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    completed = subprocess.run(
        [sys.executable, str(TESTS_DIR / script), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise AssertionError(
            f"{script} {' '.join(args)} exited with {completed.returncode}\n"
            f"stdout:\n{completed.stdout[-4000:]}\nstderr:\n{completed.stderr[-8000:]}"
        )


# --- jax.grad of each layer inside jax.shard_map --------------------------------------------------------

LAYER_SHAPE = (8, 5, 4)  # global batch 8 (2 rows per device on 4), 5 positions, 4 channels
GN_GROUPS = 2


def jax_layer_case(name: str, devices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, gamma, beta, upstream) for one layer: x global, gamma/beta per channel, upstream like x."""
    rng = np.random.default_rng({"batch": 1, "group": 2, "instance": 3, "layer": 4}[name])
    x = rng.normal(0.5, 2.0, size=LAYER_SHAPE).astype("float32")
    gamma = rng.uniform(0.5, 1.5, size=LAYER_SHAPE[-1:]).astype("float32")
    beta = rng.normal(size=LAYER_SHAPE[-1:]).astype("float32")
    upstream = rng.normal(size=LAYER_SHAPE).astype("float32")
    return x, gamma, beta, upstream


def expected_layer_grads(name: str, devices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dgamma, dbeta) of L = sum over shards of sum(upstream * layer(x_shard)), the layer in training.

    Group, instance and layer normalization are per sample, so sharding the batch changes nothing; batch
    normalization inside shard_map without synchronization uses each shard's own statistics.
    """
    import reference

    x, gamma, _, upstream = jax_layer_case(name, devices)
    if name == "group":
        return reference.group_norm_grad(x, gamma, upstream, groups=GN_GROUPS, axis=-1)
    if name == "instance":
        return reference.instance_norm_grad(x, gamma, upstream, axis=-1)
    if name == "layer":
        return reference.layer_norm_grad(x, gamma, upstream, axis=-1)
    parts = [
        reference.batch_norm_grad(xs, gamma, us, axis=-1)
        for xs, us in zip(np.split(x, devices), np.split(upstream, devices), strict=True)
    ]
    return (
        np.concatenate([p[0] for p in parts]),
        np.sum([p[1] for p in parts], axis=0),
        np.sum([p[2] for p in parts], axis=0),
    )

"""JAX: the named-axis replica sum (normkit.distributed.jax), keras.distribution.DataParallel, and jax.grad of
every layer inside jax.shard_map, on 4 host devices.

Every case runs in one subprocess (tests/_distributed_jax_worker.py) with
XLA_FLAGS=--xla_force_host_platform_device_count=4, which must be set before JAX starts; the checks here
compare its results with float64 NumPy. Runs when KERAS_BACKEND=jax.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import reference
from _distributed_inputs import (
    DEVICES_JAX,
    expected_layer_grads,
    expected_sum_and_gradient,
    expected_uneven_moments,
    run_worker,
)

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX collectives: runs with the JAX backend")

LAYERS = ("batch", "group", "instance", "layer", "group_without_beta")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    path = tmp_path_factory.mktemp("jax_distributed") / "results.npz"
    flags = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES_JAX}").strip()
    run_worker("_distributed_jax_worker.py", str(path), env={"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"})
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_psum_over_a_shard_map_axis_and_its_gradient(results: dict[str, np.ndarray]) -> None:
    expected = expected_sum_and_gradient(DEVICES_JAX)
    np.testing.assert_allclose(results["shard_map_sum"], expected["sum_a"], rtol=1e-5, atol=1e-6)
    # d/da_r of the global loss sum_r sum(w_r * (sum_r' a_r')^2): the gradients of every shard summed.
    np.testing.assert_allclose(results["shard_map_grad"], expected["grad_a"], rtol=1e-5, atol=1e-6)


def test_psum_over_a_pmap_axis_and_its_gradient(results: dict[str, np.ndarray]) -> None:
    expected = expected_sum_and_gradient(DEVICES_JAX)
    np.testing.assert_allclose(results["pmap_sum"], expected["sum_a"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results["pmap_grad"], expected["grad_a"], rtol=1e-5, atol=1e-6)


def test_uneven_and_empty_shards_give_the_global_moments(results: dict[str, np.ndarray]) -> None:
    # Masked rows: 3, 5, 0 and 4 valid samples on the four devices, at mean 1e4; counts are summed, so the
    # empty shard weighs nothing (an average of per-device means would be wrong here).
    mean, variance = expected_uneven_moments(DEVICES_JAX)
    for r in range(DEVICES_JAX):
        np.testing.assert_allclose(results["uneven_mean"][r], mean, rtol=0, atol=2e-3)
        np.testing.assert_allclose(results["uneven_variance"][r], variance, rtol=1e-5, atol=1e-6)


def test_axis_name_outside_a_mapped_function_is_a_named_error(results: dict[str, np.ndarray]) -> None:
    message = str(results["unbound_error"])
    assert "axis_name" in message and "'batch'" in message and "shard_map" in message, message


def test_nothing_to_synchronize_gives_none(results: dict[str, np.ndarray]) -> None:
    assert bool(results["unsynchronized_is_none"])  # synchronized=False: never a collective
    assert bool(results["no_axis_is_none"])  # no axis_name: keras.distribution / jit handles the batch
    assert results["size_one_axis_is_none"].tolist() == [1.0]  # an axis of size 1


def test_data_parallel_gives_global_batch_statistics_without_synchronization(
    results: dict[str, np.ndarray],
) -> None:
    """Under keras.distribution.DataParallel + jit, XLA reduces the sharded batch axis over every device: an
    unsynchronized normkit BatchNormalization already normalizes with the global batch's statistics."""
    r = results
    assert int(r["shards"]) == DEVICES_JAX  # the input really was split over the devices
    x, gamma, beta = r["x"], r["gamma"], r["beta"]
    global_y = reference.batch_norm(x, gamma, beta, axis=-1)
    mean, variance = reference.batch_statistics(x, axis=-1)
    for mode in ("single", "parallel"):
        np.testing.assert_allclose(r[f"{mode}_y"], global_y, rtol=1e-5, atol=2e-5, err_msg=mode)
        np.testing.assert_allclose(r[f"{mode}_moving_mean"], 0.5 * mean, rtol=1e-5, atol=1e-6, err_msg=mode)
        np.testing.assert_allclose(r[f"{mode}_moving_variance"], 0.5 + 0.5 * variance, rtol=1e-5, err_msg=mode)
    # Per-device statistics would be far from these (each quarter of the batch has its own offset).
    local_y = np.concatenate([reference.batch_norm(part, gamma, beta) for part in np.split(x, DEVICES_JAX)])
    assert np.max(np.abs(local_y - global_y)) > 0.5
    # One optimizer step of model.fit: every weight (gamma, beta, moving statistics, the dense head) agrees.
    np.testing.assert_allclose(r["parallel_weights"], r["single_weights"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["fast", "portable"])
@pytest.mark.parametrize("layer", LAYERS)
def test_grad_inside_shard_map_with_check_vma(results: dict[str, np.ndarray], layer: str, mode: str) -> None:
    """jax.grad through a layer inside jax.shard_map (check_vma=True, JAX's default), gamma and beta
    replicated (in_specs P()): their gradients are the sums over shards; x's is per shard."""
    key = f"{layer}_{mode}"
    error = str(results[f"{key}_error"])
    assert not error, f"jax.grad inside shard_map failed for {layer} normalization ({mode} path): {error}"
    expected = expected_layer_grads(layer.split("_")[0], DEVICES_JAX)
    parts = ("dx", "dgamma", "dbeta") if layer != "group_without_beta" else ("dx", "dgamma")
    for part, want in zip(parts, expected, strict=False):
        np.testing.assert_allclose(results[f"{key}_{part}"], want, rtol=1e-4, atol=1e-4, err_msg=f"{key} {part}")
    assert f"{key}_dbeta" in results or layer == "group_without_beta"

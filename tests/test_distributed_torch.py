"""PyTorch's replica sum (normkit.distributed.torch) over 2 and 4 processes joined by gloo on 127.0.0.1.

One subprocess (tests/_distributed_torch_worker.py) starts both worlds' processes, one world after the other;
the checks here compare every process's results with float64 NumPy. Runs when KERAS_BACKEND=torch.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _distributed_inputs import expected_sum_and_gradient, expected_uneven_moments, free_port, run_worker

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.distributed: runs with the torch backend"
)


WORLDS = (2, 4)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict]]:
    directory = tmp_path_factory.mktemp("torch_distributed")
    run_worker("_distributed_torch_worker.py", str(directory), *(f"{size}:{free_port()}" for size in WORLDS))
    results = {}
    for size in WORLDS:
        results[size] = []
        for rank in range(size):
            with np.load(directory / f"world{size}_rank{rank}.npz") as data:
                results[size].append({k: data[k] for k in data.files})
    return results


@pytest.fixture(params=WORLDS, ids=[f"{size}-processes" for size in WORLDS])
def world(request: pytest.FixtureRequest, worlds: dict[int, list[dict]]) -> tuple[int, list[dict]]:
    return request.param, worlds[request.param]


def test_replica_sum_only_with_an_initialized_group(world: tuple[int, list[dict]]) -> None:
    size, ranks = world
    for r in ranks:
        assert bool(r["before_init_is_none"])  # no process group yet: local statistics
        assert r["layer_choice"].tolist() == [True, False]  # synchronized=True / False


def test_all_reduce_sum_and_its_autograd_backward(world: tuple[int, list[dict]]) -> None:
    size, ranks = world
    expected = expected_sum_and_gradient(size)
    for rank, r in enumerate(ranks):
        for name in ("sum_a", "sum_b", "grad_a", "grad_b"):
            np.testing.assert_allclose(r[name], expected[name][rank], rtol=1e-5, atol=1e-6, err_msg=f"{rank} {name}")


def test_mixed_dtypes_are_summed_each_in_its_own_dtype(world: tuple[int, list[dict]]) -> None:
    size, ranks = world
    for r in ranks:
        assert r["int_count"].dtype == np.int64
        assert r["int_count"].tolist() == [size * (size + 1) // 2]
        np.testing.assert_allclose(r["float_total"], [0.5 * size * (size - 1) / 2], rtol=1e-6)


def test_uneven_and_empty_processes_give_the_global_moments(world: tuple[int, list[dict]]) -> None:
    size, ranks = world
    mean, variance = expected_uneven_moments(size)
    for r in ranks:
        np.testing.assert_allclose(r["uneven_mean"], mean, rtol=0, atol=2e-3)
        np.testing.assert_allclose(r["uneven_variance"], variance, rtol=1e-5, atol=1e-6)

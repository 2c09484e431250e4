"""TensorFlow's replica sum (normkit.distributed.tensorflow) on 4 logical CPU devices with MirroredStrategy.

One subprocess (tests/_distributed_tf_worker.py: logical devices must be set before TensorFlow starts) runs
every case; the checks here compare its results with float64 NumPy. Runs when KERAS_BACKEND=tensorflow.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _distributed_inputs import expected_sum_and_gradient, expected_uneven_moments, run_worker

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute: runs with the TensorFlow backend"
)

REPLICAS = 4


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    path = tmp_path_factory.mktemp("tf_distributed") / "results.npz"
    run_worker("_distributed_tf_worker.py", str(path))
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_replica_sum_only_inside_a_replica_context_with_several_replicas(results: dict[str, np.ndarray]) -> None:
    assert bool(results["default_context_is_none"])  # no strategy: local statistics
    assert bool(results["cross_replica_context_is_none"])  # strategy.scope() outside strategy.run
    assert results["four_replicas_found"].tolist() == [True] * REPLICAS
    assert results["one_replica_found"].tolist() == [False]  # a single replica: nothing to synchronize


def test_cross_replica_for_follows_the_layers_synchronized_flag(results: dict[str, np.ndarray]) -> None:
    # Inside strategy.run: an adapter for synchronized=True, None for synchronized=False, on every replica.
    assert results["layer_choice"].tolist() == [[True, False]] * REPLICAS


def test_keras_distributed_step_runs_the_layer_in_a_replica_context(results: dict[str, np.ndarray]) -> None:
    # model.predict(batch_size=8) on 4 replicas: each replica holds 2 rows, the adapter sums them to 8.
    assert results["keras_predict_global_batch"].tolist() == [8.0] * 8
    assert results["keras_predict_local"].tolist() == [8.0] * 8  # outside the strategy: the 8 rows of one call


def test_all_reduce_sum_and_its_gradient(results: dict[str, np.ndarray]) -> None:
    expected = expected_sum_and_gradient(REPLICAS)
    for name in ("sum_a", "sum_b", "grad_a", "grad_b"):
        np.testing.assert_allclose(results[name], expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("replicas", [2, 4])
def test_uneven_and_empty_replicas_give_the_global_moments(results: dict[str, np.ndarray], replicas: int) -> None:
    # Counts 3 + 5 on two replicas; 3, 5, 0, 4 on four (one replica holds no sample), data at mean 1e4.
    mean, variance = expected_uneven_moments(replicas)
    for r in range(replicas):
        np.testing.assert_allclose(results[f"uneven{replicas}_mean"][r].reshape(-1), mean, rtol=0, atol=2e-3)
        np.testing.assert_allclose(results[f"uneven{replicas}_variance"][r].reshape(-1), variance, rtol=1e-5, atol=1e-6)

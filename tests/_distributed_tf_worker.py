"""Run as a subprocess by tests/test_distributed_tensorflow.py: TensorFlow with 4 logical CPU devices.

The logical devices must be configured before TensorFlow initializes its runtime, so this cannot run inside
the pytest process. Every result is written to the .npz file named on the command line; the test compares
them with a float64 NumPy reference (nothing is checked here).
"""

from __future__ import annotations

import functools
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPLICAS = 4
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

import keras  # noqa: E402

import normkit  # noqa: E402
from normkit.distributed import cross_replica_for  # noqa: E402
from normkit.distributed import tensorflow as tf_engine  # noqa: E402
from normkit.ops import SufficientStatistics, moments_from_sufficient_statistics, sufficient_statistics  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _distributed_inputs import SHIFT, UNEVEN_COUNTS, grad_inputs, uneven_rows  # noqa: E402


@functools.cache
def strategy_of(replicas: int) -> tf.distribute.Strategy:
    """MirroredStrategy over the first `replicas` logical CPUs, one per size for the whole process.

    The 4-replica strategy keeps MirroredStrategy's default all-reduce (collective ops); the others reduce to
    one device. One process's collective runtime keys groups and instances by strategy-local counters, so a
    second collective strategy (of any size) would collide with the first one's keys.
    """
    devices = [f"/cpu:{i}" for i in range(replicas)]
    if replicas == REPLICAS:
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def per_replica(strategy: tf.distribute.Strategy, make) -> object:
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(make(context.replica_id_in_sync_group))
    )


def local(strategy: tf.distribute.Strategy, value: object) -> np.ndarray:
    return np.stack([np.asarray(v) for v in strategy.experimental_local_results(value)])


def contexts(out: dict[str, np.ndarray]) -> None:
    """Where the adapter synchronizes: only inside strategy.run with more than one replica."""
    out["default_context_is_none"] = np.asarray(tf_engine.replica_sum() is None)
    four = strategy_of(REPLICAS)
    with four.scope():
        out["cross_replica_context_is_none"] = np.asarray(tf_engine.replica_sum() is None)

    def found(_: tf.Tensor) -> tf.Tensor:
        return tf.constant(tf_engine.replica_sum() is not None)

    out["four_replicas_found"] = local(four, four.run(tf.function(found), args=(tf.constant(0.0),)))
    one = strategy_of(1)
    out["one_replica_found"] = local(one, one.run(tf.function(found), args=(tf.constant(0.0),)))

    layer_sync = normkit.BatchNormalization(synchronized=True)
    layer_local = normkit.BatchNormalization(synchronized=False)

    def chosen(_: tf.Tensor) -> tf.Tensor:
        return tf.constant([cross_replica_for(layer_sync) is not None, cross_replica_for(layer_local) is not None])

    out["layer_choice"] = local(four, four.run(tf.function(chosen), args=(tf.constant(0.0),)))


def sum_and_gradient(out: dict[str, np.ndarray]) -> None:
    """y = all-reduce(a, b); loss_r = sum(w_r * ya^2) + sum(yb); the tape's gradients on each replica."""
    strategy = strategy_of(REPLICAS)
    a = per_replica(strategy, lambda r: grad_inputs(r)[0])
    b = per_replica(strategy, lambda r: grad_inputs(r)[1])
    w = per_replica(strategy, lambda r: grad_inputs(r)[2])

    def step(a: tf.Tensor, b: tf.Tensor, w: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            ya, yb = tf_engine.replica_sum()((a, b))
            loss = tf.reduce_sum(w * ya * ya) + tf.reduce_sum(yb)
        ga, gb = tape.gradient(loss, [a, b])
        return ya, yb, ga, gb

    results = strategy.run(tf.function(step), args=(a, b, w))
    for name, value in zip(("sum_a", "sum_b", "grad_a", "grad_b"), results, strict=True):
        out[name] = local(strategy, value)


def uneven(out: dict[str, np.ndarray], replicas: int) -> None:
    """Per-replica sufficient statistics (counts 3 + 5, and 3, 5, 0, 4) combined into global moments."""
    strategy = strategy_of(replicas)
    counts = UNEVEN_COUNTS[replicas]
    x = per_replica(strategy, lambda r: uneven_rows(r, counts[r]))

    def step(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        stats = sufficient_statistics(x, [0], shift=tf.constant(SHIFT, tf.float32))
        count, total, squares = tf_engine.replica_sum()((stats.count, stats.shifted_sum, stats.shifted_sum_of_squares))
        moments = moments_from_sufficient_statistics(SufficientStatistics(count, total, squares, stats.shift))
        return moments.mean, moments.variance

    mean, variance = strategy.run(tf.function(step), args=(x,))
    out[f"uneven{replicas}_mean"] = local(strategy, mean)
    out[f"uneven{replicas}_variance"] = local(strategy, variance)


class GlobalBatchSize(keras.layers.Layer):
    """Outputs, for every row, the number of rows of the global batch: its replica's count summed by the
    adapter that `cross_replica_for` picks inside Keras' own distributed step."""

    synchronized = True

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        count = tf.cast(tf.shape(inputs)[0:1], tf.float32)
        replica_sum = cross_replica_for(self)
        if replica_sum is not None:
            (count,) = replica_sum((count,))
        return tf.zeros_like(inputs[:, :1]) + count


def keras_step(out: dict[str, np.ndarray]) -> None:
    """model.predict under MirroredStrategy: Keras runs the layer in a replica context on 2 rows per replica."""
    strategy = strategy_of(REPLICAS)
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), GlobalBatchSize()])
    x = np.zeros((8, 3), "float32")
    out["keras_predict_global_batch"] = np.asarray(model.predict(x, batch_size=8, verbose=0)).reshape(-1)
    out["keras_predict_local"] = np.asarray(model(x)).reshape(-1)  # no replica context: the call's own rows


def main(path: str) -> None:
    out: dict[str, np.ndarray] = {}
    contexts(out)
    keras_step(out)
    sum_and_gradient(out)
    uneven(out, 2)
    uneven(out, 4)
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])

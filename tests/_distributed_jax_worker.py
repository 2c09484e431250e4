"""Run as a subprocess by tests/test_distributed_jax.py: JAX with 4 host devices.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts (the test sets it), so this
cannot run in the pytest process. `python _distributed_jax_worker.py PATH` runs every part (one JAX start-up)
and writes the results to the .npz file PATH; the test compares them with float64 NumPy (nothing is checked
here).

Parts: "adapter" (psum under shard_map and pmap, gradients, uneven counts through masks, the unbound-axis
error), "data_parallel" (normkit BatchNormalization under keras.distribution.DataParallel), "check_vma"
(jax.grad of every layer inside jax.shard_map with check_vma=True; an exception is recorded, not raised).
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import normkit  # noqa: E402
from normkit.distributed import cross_replica_for  # noqa: E402
from normkit.ops import SufficientStatistics, moments_from_sufficient_statistics, sufficient_statistics  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _distributed_inputs import (  # noqa: E402
    CHANNELS,
    DEVICES_JAX,
    GN_GROUPS,
    SHIFT,
    UNEVEN_COUNTS,
    grad_inputs,
    jax_layer_case,
    uneven_rows,
)

DEVICES = DEVICES_JAX
MESH = Mesh(np.array(jax.devices()[:DEVICES]), ("batch",))
SYNC = {"synchronized": True, "axis_name": "batch"}


def shard_map(fn, in_specs, out_specs, check_vma: bool = True):
    """jax.shard_map where it exists (JAX >= 0.6), else the experimental one."""
    if hasattr(jax, "shard_map"):
        return jax.jit(jax.shard_map(fn, mesh=MESH, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma))
    from jax.experimental.shard_map import shard_map as legacy

    return jax.jit(legacy(fn, mesh=MESH, in_specs=in_specs, out_specs=out_specs, check_rep=check_vma))


def adapter(out: dict[str, np.ndarray]) -> None:
    a = np.stack([grad_inputs(r)[0] for r in range(DEVICES)])  # one row per device
    w = np.stack([grad_inputs(r)[2] for r in range(DEVICES)])

    # shard_map (check_vma=True): the global loss is the psum of the per-shard losses.
    def shard_loss(a_shard, w_shard):
        (total,) = cross_replica_for(SYNC)((a_shard[0],))
        return jax.lax.psum(jnp.sum(w_shard[0] * total * total), "batch")

    def shard_sum(a_shard):
        (total,) = cross_replica_for(SYNC)((a_shard[0],))
        return total[None]

    out["shard_map_sum"] = np.asarray(shard_map(shard_sum, P("batch"), P("batch"))(a))
    loss = shard_map(shard_loss, (P("batch"), P("batch")), P())
    out["shard_map_grad"] = np.asarray(jax.grad(loss)(a, w))

    # pmap: each device differentiates its own loss; psum's transpose sums the gradients over the axis.
    def device_loss(a_row, w_row):
        (total,) = cross_replica_for(SYNC)((a_row,))
        return jnp.sum(w_row * total * total)

    out["pmap_sum"] = np.asarray(jax.pmap(lambda r: cross_replica_for(SYNC)((r,))[0], axis_name="batch")(a))
    out["pmap_grad"] = np.asarray(jax.pmap(jax.grad(device_loss), axis_name="batch")(a, w))

    # Uneven batches as shard_map sees them: equal shards, padded, with a mask (counts 3, 5, 0, 4).
    counts = UNEVEN_COUNTS[DEVICES]
    rows = max(counts)
    x = np.full((DEVICES * rows, CHANNELS), 7.0, "float32")  # padding far from the data's mean
    mask = np.zeros((DEVICES * rows, 1), "float32")
    for r, c in enumerate(counts):
        x[r * rows : r * rows + c] = uneven_rows(r, c)
        mask[r * rows : r * rows + c] = 1.0

    def uneven(x_shard, mask_shard):
        stats = sufficient_statistics(x_shard, [0], shift=jnp.float32(SHIFT), mask=mask_shard)
        summed = cross_replica_for(SYNC)((stats.count, stats.shifted_sum, stats.shifted_sum_of_squares))
        moments = moments_from_sufficient_statistics(SufficientStatistics(*summed, stats.shift))
        return moments.mean, moments.variance

    mean, variance = shard_map(uneven, (P("batch"), P("batch")), (P("batch"), P("batch")))(x, mask)
    out["uneven_mean"] = np.asarray(mean)  # one row per device
    out["uneven_variance"] = np.asarray(variance)

    # Outside any mapped axis the named axis is an error naming it; without synchronization nothing is asked.
    try:
        cross_replica_for(SYNC)
        out["unbound_error"] = np.asarray("")
    except ValueError as error:
        out["unbound_error"] = np.asarray(str(error))
    out["unsynchronized_is_none"] = np.asarray(cross_replica_for({"synchronized": False, "axis_name": "batch"}) is None)
    out["no_axis_is_none"] = np.asarray(cross_replica_for({"synchronized": True}) is None)
    size_one = Mesh(np.array(jax.devices()[:1]), ("batch",))
    found = jax.jit(
        jax.shard_map(
            lambda t: t * (cross_replica_for(SYNC) is None), mesh=size_one, in_specs=P("batch"), out_specs=P("batch")
        )
    )(jnp.ones(1))
    out["size_one_axis_is_none"] = np.asarray(found)


def data_parallel(out: dict[str, np.ndarray]) -> None:
    """A Dense -> normkit.BatchNormalization -> Dense model trained one step on the global batch: first on one
    device, then under keras.distribution.DataParallel over 4 devices (synchronized=False in both)."""
    rng = np.random.default_rng(7)
    batch = 16
    # Each device's quarter of the batch has its own offset, so per-device statistics differ from global ones.
    x = (rng.normal(size=(batch, 4)) + np.repeat(np.arange(DEVICES), batch // DEVICES)[:, None] * 3.0).astype("float32")
    y = rng.normal(size=(batch, 1)).astype("float32")
    out["x"], out["y"] = x, y

    def build() -> keras.Model:
        # Seeded initializers, not keras.utils.set_random_seed (which imports TensorFlow when installed).
        model = keras.Sequential(
            [
                keras.Input((4,)),
                normkit.BatchNormalization(momentum=0.5, synchronized=False, name="bn"),
                keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=3), name="head"),
            ]
        )
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    def forward(model: keras.Model, inputs) -> tuple[np.ndarray, ...]:
        bn = model.get_layer("bn")
        trainable = [v.value for v in bn.trainable_variables]
        non_trainable = [v.value for v in bn.non_trainable_variables]

        def step(trainable, non_trainable, inputs):
            outputs, updated = bn.stateless_call(trainable, non_trainable, inputs, training=True)
            return outputs, updated

        outputs, updated = jax.jit(step)(trainable, non_trainable, inputs)
        return np.asarray(outputs), *(np.asarray(u) for u in updated)

    single = build()
    out["gamma"] = np.asarray(single.get_layer("bn").gamma.value)
    out["beta"] = np.asarray(single.get_layer("bn").beta.value)
    out["single_y"], out["single_moving_mean"], out["single_moving_variance"] = forward(single, jnp.asarray(x))
    single.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    out["single_weights"] = np.concatenate([np.ravel(w) for w in single.get_weights()])

    distribution = keras.distribution.DataParallel(devices=jax.devices()[:DEVICES])
    keras.distribution.set_distribution(distribution)
    try:
        sharded = build()
        layout = distribution.get_data_layout(x.shape)
        x_sharded = keras.distribution.distribute_tensor(jnp.asarray(x), layout)
        out["shards"] = np.asarray(len(x_sharded.addressable_shards))
        out["parallel_y"], out["parallel_moving_mean"], out["parallel_moving_variance"] = forward(sharded, x_sharded)
        sharded.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        out["parallel_weights"] = np.concatenate([np.ravel(w) for w in sharded.get_weights()])
    finally:
        keras.distribution.set_distribution(None)


LAYERS = {
    "batch": lambda: normkit.BatchNormalization(),
    "group": lambda: normkit.GroupNormalization(groups=GN_GROUPS),
    "instance": lambda: normkit.InstanceNormalization(),
    "layer": lambda: normkit.LayerNormalization(),
    # Without beta: the kernel's placeholder beta must keep the type of the zero cotangent it gets back.
    "group_without_beta": lambda: normkit.GroupNormalization(groups=GN_GROUPS, center=False),
}


def check_vma(out: dict[str, np.ndarray]) -> None:
    """jax.grad through each layer's stateless_call inside shard_map (check_vma=True, JAX's default), with the
    fast paths on and off: the gradients of x, gamma and beta, or the exception's text."""
    for fast in (True, False):
        os.environ["NORMKIT_DISABLE_FAST_PATHS"] = "0" if fast else "1"
        for name, make in LAYERS.items():
            x, gamma, beta, upstream = jax_layer_case(name.split("_")[0], DEVICES)
            layer = make()
            layer.build((x.shape[0] // DEVICES, *x.shape[1:]))
            params = [gamma, beta] if layer.center else [gamma]
            non_trainable = [v.value for v in layer.non_trainable_variables]
            kwargs = {"training": True} if isinstance(layer, normkit.BatchNormalization) else {}

            def loss(x_shard, params, upstream_shard, layer=layer, non_trainable=non_trainable, kwargs=kwargs):
                y, _ = layer.stateless_call(params, non_trainable, x_shard, **kwargs)
                return jax.lax.psum(jnp.sum(y * upstream_shard), "batch")

            key = f"{name}_{'fast' if fast else 'portable'}"
            try:
                sharded_loss = shard_map(loss, (P("batch"), P(), P("batch")), P())
                dx, dparams = jax.grad(sharded_loss, argnums=(0, 1))(x, params, upstream)
                for part, g in zip(("dx", "dgamma", "dbeta"), [dx, *dparams], strict=False):
                    out[f"{key}_{part}"] = np.asarray(g)
                out[f"{key}_error"] = np.asarray("")
            except Exception as error:  # recorded for the test to report
                out[f"{key}_error"] = np.asarray(f"{type(error).__name__}: {error}"[:2000])


def main(path: str) -> None:
    out: dict[str, np.ndarray] = {}
    adapter(out)
    data_parallel(out)
    check_vma(out)  # last: it switches the fast paths off and on through the environment
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])

"""Run as a subprocess by tests/test_distributed_torch.py: `python _distributed_torch_worker.py DIR WORLD:PORT ...`
starts, for each WORLD, that many processes (torch.multiprocessing) joined by a gloo process group on
127.0.0.1:PORT. Each writes its results to DIR/world<W>_rank<r>.npz; the test compares them with float64 NumPy
(nothing is checked here).

The processes are forked, not spawned: a spawned process imports Keras and torch again (about 8 s of CPU
each, which made 6 processes cost a minute); forked ones share the parent's imports. Nothing has run a torch
operation (or started its thread pools) before the fork.
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _distributed_inputs import SHIFT, UNEVEN_COUNTS, grad_inputs, uneven_rows  # noqa: E402

from normkit.distributed import cross_replica_for  # noqa: E402
from normkit.distributed import torch as torch_engine  # noqa: E402
from normkit.ops import SufficientStatistics, moments_from_sufficient_statistics, sufficient_statistics  # noqa: E402


def run(rank: int, world: int, port: int, directory: str) -> None:
    torch.set_num_threads(1)
    out: dict[str, np.ndarray] = {"before_init_is_none": np.asarray(torch_engine.replica_sum() is None)}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out["layer_choice"] = np.asarray(
            [
                cross_replica_for({"synchronized": True}) is not None,
                cross_replica_for({"synchronized": False}) is not None,
            ]
        )
        replica_sum = torch_engine.replica_sum()

        # The sum and its backward: loss_r = sum(w_r * ya^2) + sum(yb), each process differentiating its own.
        a, b, w = (torch.tensor(t) for t in grad_inputs(rank))
        a.requires_grad_(True)
        b.requires_grad_(True)
        ya, yb = replica_sum((a, b))
        (torch.sum(w * ya * ya) + torch.sum(yb)).backward()
        out["sum_a"], out["sum_b"] = ya.detach().numpy(), yb.detach().numpy()
        out["grad_a"], out["grad_b"] = a.grad.numpy(), b.grad.numpy()

        # Mixed dtypes travel in one buffer per dtype: an integer count beside float sums.
        count, total = replica_sum((torch.tensor([rank + 1], dtype=torch.int64), torch.tensor([0.5 * rank])))
        out["int_count"], out["float_total"] = count.numpy(), total.numpy()

        # Uneven per-process batches (3 + 5; 3, 5, 0, 4), at mean 1e4, combined through sufficient statistics.
        rows = torch.tensor(uneven_rows(rank, UNEVEN_COUNTS[world][rank]))
        stats = sufficient_statistics(rows, [0], shift=torch.tensor(SHIFT))
        summed = replica_sum((stats.count, stats.shifted_sum, stats.shifted_sum_of_squares))
        moments = moments_from_sufficient_statistics(SufficientStatistics(*summed, stats.shift))
        out["uneven_mean"] = moments.mean.detach().cpu().numpy().reshape(-1)
        out["uneven_variance"] = moments.variance.detach().cpu().numpy().reshape(-1)
    finally:
        dist.destroy_process_group()
    np.savez(os.path.join(directory, f"world{world}_rank{rank}.npz"), **out)


def main(directory: str, worlds: list[str]) -> None:
    for spec in worlds:
        world, port = (int(part) for part in spec.split(":"))
        mp.start_processes(run, args=(world, port, directory), nprocs=world, join=True, start_method="fork")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

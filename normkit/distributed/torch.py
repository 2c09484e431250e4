"""PyTorch: the sum over the processes of a `torch.distributed` process group (gloo on CPU, NCCL on GPU).

When a process group with more than one process is initialized (`torchrun`, `torch.multiprocessing.spawn` +
`init_process_group`, the usual setting of DistributedDataParallel), `replica_sum()` sums tensors over it with
`torch.distributed.all_reduce`. The tensors of one dtype travel as one flat buffer (one collective per dtype,
not one per tensor: the per-message latency dominates for per-channel statistics).

`all_reduce` itself is not differentiable (it works in place and autograd does not see it); the sum here is an
autograd Function whose backward all-reduces the incoming gradients, the gradient of a sum over replicas.
Every process must run the same sequence of collectives: the forward always does, and the backward runs on
every process whose loss depends on the outputs (gradients that are None are sent as zeros).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from normkit.distributed._select import ReplicaSum


def _all_reduce_sum(tensors: Sequence[torch.Tensor], group: Any) -> tuple[torch.Tensor, ...]:
    """New tensors holding the sums over the group, one collective per (dtype, device)."""
    results: list[torch.Tensor | None] = [None] * len(tensors)
    buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.dtype, t.device), []).append(i)
    for indices in buckets.values():
        flat = torch.cat([tensors[i].detach().reshape(-1) for i in indices])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for i in indices:
            n = tensors[i].numel()
            # A copy, not a view of the shared buffer: autograd treats outputs that alias each other specially.
            results[i] = flat[offset : offset + n].reshape(tensors[i].shape).clone()
            offset += n
    return tuple(results)  # type: ignore[arg-type]


class _AllReduceSum(torch.autograd.Function):
    """y_i = sum over processes of x_i; dx_i = sum over processes of dy_i."""

    @staticmethod
    def forward(ctx: Any, group: Any, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.group = group
        ctx.floating = tuple(t.is_floating_point() or t.is_complex() for t in tensors)
        outputs = _all_reduce_sum(tensors, group)
        ctx.mark_non_differentiable(*(o for o, f in zip(outputs, ctx.floating, strict=True) if not f))
        return outputs

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        positions = [i for i, f in enumerate(ctx.floating) if f]
        summed = _all_reduce_sum([grads[i] for i in positions], ctx.group)
        result: list[Any] = [None] * len(grads)
        for i, g in zip(positions, summed, strict=True):
            result[i] = g
        return (None, *result)


def replica_sum(group: Any = None) -> ReplicaSum | None:
    """The sum over the processes of `group` (default: the default process group), or None.

    None when torch.distributed is unavailable or not initialized, or the group has one process.
    """
    if not dist.is_available() or not dist.is_initialized():
        return None
    if dist.get_world_size(group) <= 1:
        return None

    def all_reduce_sum(tensors: Sequence[Any]) -> tuple[Any, ...]:
        tensors = tuple(torch.as_tensor(t) for t in tensors)
        if not tensors:
            return ()
        return tuple(_AllReduceSum.apply(group, *tensors))

    return all_reduce_sum

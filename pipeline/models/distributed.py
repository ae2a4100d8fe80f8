"""Collective helpers that work with or without a process group (no group is a world of size 1).

Every function takes the same code path for one worker and for many; with one worker the
collectives reduce to the identity and no process group is needed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int]:
    """Return ``(rank, world_size)`` of the current process group, or ``(0, 1)`` when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Return every worker's ``tensor [N, ...]`` concatenated in rank order ``[W*N, ...]``, without gradient.

    All workers must pass tensors of the same shape.
    """
    _, world = world_info()
    if world == 1:
        return tensor.detach()
    gathered = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every worker's gradient and returns this worker's slice."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        """Return the rank-ordered concatenation of every worker's ``tensor`` ``[W*N, ...]``."""
        rank, world = world_info()
        ctx.rank = rank
        ctx.rows = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        """Return the gradient of the sum of all workers' losses with respect to this worker's slice."""
        # Each worker's loss depends on every slice, so the local slice's gradient is the sum over workers;
        # DDP's gradient averaging then yields the gradient of the mean of the workers' losses.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Return every worker's ``tensor [N, ...]`` concatenated in rank order ``[W*N, ...]``, differentiable.

    Gradient reaches the local slice from every worker's loss. All workers must pass equal shapes.
    """
    _, world = world_info()
    if world == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@torch.no_grad()
def shuffle_batch(batch: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return this worker's slice of the globally shuffled batch ``[N, ...]`` and the unshuffle index ``[W*N]``.

    MoCo's shuffle-BN: the batches of all workers are gathered, rank 0 draws one permutation of the
    global batch and broadcasts it, and each worker keeps its slice of the permuted batch, so that
    batch-norm statistics of the key encoder mix samples from all workers. With one worker this is a
    local random permutation. ``generator`` (on ``batch.device``) is used on rank 0 only.
    """
    rank, world = world_info()
    gathered = concat_all_gather(batch)  # [W*N, ...]
    total = gathered.shape[0]
    if rank == 0:
        permutation = torch.randperm(total, device=batch.device, generator=generator)  # [W*N]
    else:
        permutation = torch.empty(total, dtype=torch.long, device=batch.device)
    if world > 1:
        dist.broadcast(permutation, src=0)
    unshuffle_index = torch.argsort(permutation)  # [W*N]
    local = permutation.view(world, -1)[rank]  # [N]
    return gathered[local], unshuffle_index


@torch.no_grad()
def unshuffle_batch(batch: torch.Tensor, unshuffle_index: torch.Tensor) -> torch.Tensor:
    """Return the rows ``[N, ...]`` that belong to this worker's original batch, undoing ``shuffle_batch``."""
    rank, world = world_info()
    gathered = concat_all_gather(batch)  # [W*N, ...]
    local = unshuffle_index.view(world, -1)[rank]  # [N]
    return gathered[local]


def broadcast_object(value: Any, device: torch.device | None = None) -> Any:
    """Return rank 0's ``value`` on every worker (pickled through the process group; identity with one worker).

    ``device`` is where the pickled bytes travel: the worker's GPU under NCCL, None (CPU) under gloo.
    """
    _, world = world_info()
    if world == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, device=device)
    return holder[0]

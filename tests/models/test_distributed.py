"""Distributed helpers without a process group (world of one) and in a real two-process gloo group."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.models.distributed import (
    all_gather_with_grad,
    concat_all_gather,
    shuffle_batch,
    unshuffle_batch,
    world_info,
)

WORLD = 2
ROWS = 3


def test_world_of_one_without_a_process_group() -> None:
    assert not dist.is_initialized()
    assert world_info() == (0, 1)
    tensor = torch.randn(4, 2, requires_grad=True)
    gathered = concat_all_gather(tensor)
    assert torch.equal(gathered, tensor) and not gathered.requires_grad
    with_grad = all_gather_with_grad(tensor)
    with_grad.sum().backward()
    assert torch.equal(tensor.grad, torch.ones(4, 2))


def test_world_of_one_shuffle_is_a_permutation_and_unshuffle_its_inverse() -> None:
    batch = torch.arange(10.0)[:, None].expand(10, 3).contiguous()  # [10, 3]
    shuffled, unshuffle_index = shuffle_batch(batch, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, batch)
    assert sorted(shuffled[:, 0].tolist()) == batch[:, 0].tolist()
    assert torch.equal(unshuffle_batch(shuffled, unshuffle_index), batch)
    # A row-wise computation on the shuffled batch comes back in the original order.
    assert torch.equal(unshuffle_batch(shuffled * 2 + 1, unshuffle_index), batch * 2 + 1)


def _worker(rank: int, init_file: str) -> None:
    """Run the checks of one rank; any failed assertion fails ``mp.spawn`` in the parent."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert world_info() == (rank, WORLD)
        local = torch.arange(ROWS * 2, dtype=torch.float32).view(ROWS, 2) + 100 * rank  # [3, 2]
        everything = torch.cat([torch.arange(ROWS * 2.0).view(ROWS, 2) + 100 * r for r in range(WORLD)])  # [6, 2]
        assert torch.equal(concat_all_gather(local), everything)

        torch.manual_seed(rank)  # different local RNG state: the permutation must still be rank 0's
        shuffled, unshuffle_index = shuffle_batch(local)
        assert torch.equal(concat_all_gather(unshuffle_index), unshuffle_index.repeat(WORLD))
        permutation = torch.argsort(unshuffle_index)
        assert torch.equal(shuffled, everything[permutation.view(WORLD, -1)[rank]])
        assert torch.equal(unshuffle_batch(shuffled, unshuffle_index), local)
        assert torch.equal(unshuffle_batch(shuffled * 3, unshuffle_index), local * 3)

        source = local.clone().requires_grad_(True)
        gathered = all_gather_with_grad(source)  # [6, 2]
        assert torch.equal(gathered.detach(), everything)
        # Rank r weighs the gathered rows by (r + 1): the local slice's gradient sums both ranks' weights.
        ((rank + 1) * gathered * torch.arange(1.0, WORLD * ROWS + 1)[:, None]).sum().backward()
        row_weights = torch.arange(1.0, WORLD * ROWS + 1)[rank * ROWS : (rank + 1) * ROWS, None]
        expected = sum(r + 1 for r in range(WORLD)) * row_weights.expand(ROWS, 2)
        assert torch.equal(source.grad, expected), (source.grad, expected)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_group(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True)

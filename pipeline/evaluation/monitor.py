"""Feature extraction over a sharded loader, top-1 across workers, and the per-epoch weighted kNN monitor."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.evaluation.knn import weighted_knn_predict


def _distributed() -> bool:
    """Return whether a process group with more than one member is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    batches: Iterable,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    normalize: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return pooled features ``[n, D]`` (float32; L2-normalised if ``normalize``) and sample indices ``[n]``.

    ``progress`` (e.g. a ``pipeline.runtime.progress.ImageProgress``) is called after each batch with the number
    of images embedded so far: a host-side count, so reporting adds no device synchronisation.
    """
    was_training = backbone.training
    backbone.eval()
    features, indices = [], []
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )
    done = 0
    with autocast:
        for images, _, index in batches:
            done += images.shape[0]
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            pooled = backbone(images).float()
            features.append(F.normalize(pooled, dim=1) if normalize else pooled)
            indices.append(index.to(device, non_blocking=True))
            if progress is not None:
                progress(done)
    backbone.train(was_training)
    if not features:
        width = getattr(backbone, "feature_dim", 0)
        return torch.zeros(0, width, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(features), torch.cat(indices).long()


def gather_by_index(
    values: torch.Tensor, indices: torch.Tensor, total: int, destination: int | None = None
) -> torch.Tensor | None:
    """Return ``[total, ...]`` holding every worker's ``values`` placed at their sample ``indices``.

    With ``destination`` only that rank receives the rows (the others get None and send theirs once),
    instead of every rank holding a copy. Workers may hold different numbers of rows (padding samplers
    repeat some): rows are padded to the largest count and a repeated index writes the same row twice.
    """
    result = values.new_zeros((total, *values.shape[1:]))
    if not _distributed():
        result[indices] = values
        return result
    count = torch.tensor([values.shape[0]], device=values.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    largest = int(torch.stack(counts).max())
    padded_values = values.new_zeros((largest, *values.shape[1:]))
    padded_values[: values.shape[0]] = values
    padded_indices = indices.new_zeros(largest)
    padded_indices[: indices.shape[0]] = indices
    receives = destination is None or dist.get_rank() == destination
    gathered_values = [torch.empty_like(padded_values) for _ in counts] if receives else None
    gathered_indices = [torch.empty_like(padded_indices) for _ in counts] if receives else None
    if destination is None:
        dist.all_gather(gathered_values, padded_values)
        dist.all_gather(gathered_indices, padded_indices)
    else:
        dist.gather(padded_values, gathered_values, dst=destination)
        dist.gather(padded_indices, gathered_indices, dst=destination)
    if gathered_values is None or gathered_indices is None:
        return None
    for rank_count, rank_values, rank_indices in zip(counts, gathered_values, gathered_indices, strict=True):
        n = int(rank_count)
        result[rank_indices[:n]] = rank_values[:n]
    return result


def sharded_top1(predictions: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> float:
    """Return top-1 (percent) of each worker's ``predictions`` for the samples at ``index``, across workers.

    Per-sample correctness is gathered by index, so that the repeats a padding sampler adds count once.
    """
    correct = (predictions == labels.to(predictions.device)[index]).float()
    total = labels.shape[0]
    correct_all = gather_by_index(correct, index, total)
    seen_all = gather_by_index(torch.ones_like(correct), index, total)
    return float(100.0 * correct_all.sum() / seen_all.sum().clamp_min(1))


def knn_monitor(
    backbone: nn.Module,
    memory_batches: Iterable,
    memory_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_index: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> float:
    """Return weighted-kNN top-1 (percent) of this worker's query features against the memory bank, across workers.

    ``query_features`` are the worker's pooled features of its query shard (``extract_features``, normalised
    or not: they are L2-normalised here) at sample ``query_index``. Each worker embeds its shard of the
    memory set, the bank is all-gathered, and each worker classifies its own queries.
    """
    memory_features, memory_index = extract_features(backbone, memory_batches, device, autocast_dtype, channels_last)
    bank = gather_by_index(memory_features, memory_index, memory_labels.shape[0])
    memory_labels = memory_labels.to(device)
    labelled = memory_labels >= 0  # unlabelled training images (label -1, e.g. STL-10's) cannot vote
    predictions = weighted_knn_predict(
        bank[labelled],
        memory_labels[labelled],
        F.normalize(query_features, dim=1),
        num_classes,
        k=k,
        temperature=temperature,
    )
    return sharded_top1(predictions, query_index, query_labels)

"""The MoCo queue of negative keys with their labels, kept in buffers so checkpoints and devices carry it."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def check_divisible(queue_size: int, global_batch: int) -> None:
    """Return None if ``queue_size`` is a multiple of ``global_batch``; raise ValueError naming both otherwise."""
    if global_batch < 1 or queue_size % global_batch != 0:
        raise ValueError(
            f"queue length {queue_size} must be a multiple of the global batch size {global_batch} "
            f"(every enqueue writes one global batch of keys)"
        )


class LabelledQueue(nn.Module):
    """A ring buffer of ``size`` unit-norm embeddings ``[K, D]`` with one label per entry ``[K]``.

    ``embeddings``, ``labels`` and ``pointer`` are buffers, so they are saved in ``state_dict`` and
    follow ``.to(device)``. The write position lives in a Python int that ``pointer`` mirrors: an
    enqueue then never reads a device tensor back to the host. The int is restored from the buffer
    when a state dict is loaded; code that writes ``pointer`` directly must load a state dict instead.
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    pointer: torch.Tensor

    def __init__(
        self, size: int, dim: int, num_classes: int | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be positive, got size {size} dim {dim}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive or None, got {num_classes}")
        self.size = size
        self.dim = dim
        self.num_classes = num_classes
        embeddings = F.normalize(torch.randn(size, dim, generator=generator), dim=1)  # [K, D]
        if num_classes is None:
            labels = torch.full((size,), -1, dtype=torch.long)
        else:
            labels = torch.randint(0, num_classes, (size,), generator=generator)  # [K]
        self.register_buffer("embeddings", embeddings)
        self.register_buffer("labels", labels)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self._position = 0

    @property
    def position(self) -> int:
        """Return the index of the next entry to be overwritten."""
        return self._position

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Return None after writing ``keys [N, D]`` (and ``labels [N]``, else -1) at the pointer, wrapping around."""
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"enqueue expects keys [N, {self.dim}], got shape {tuple(keys.shape)}")
        count = keys.shape[0]
        if labels is not None and labels.shape != (count,):
            raise ValueError(f"enqueue expects labels [{count}], got shape {tuple(labels.shape)}")
        check_divisible(self.size, count)
        slots = (torch.arange(count, device=self.embeddings.device) + self._position) % self.size  # [N]
        self.embeddings.index_copy_(0, slots, keys.detach().to(self.embeddings))
        if labels is None:
            self.labels.index_fill_(0, slots, -1)
        else:
            self.labels.index_copy_(0, slots, labels.to(self.labels))
        self._position = (self._position + count) % self.size
        self.pointer.fill_(self._position)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Return None after loading the buffers and re-syncing the Python write position from ``pointer``."""
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._position = int(self.pointer) % self.size

    def extra_repr(self) -> str:
        """Return the queue's size, dim and number of classes for ``repr``."""
        return f"size={self.size}, dim={self.dim}, num_classes={self.num_classes}"

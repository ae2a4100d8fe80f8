"""One optimisation step, shared by the Ray training loop and the step benchmark (no Ray needed)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from pipeline.methods.base import Method
from pipeline.methods.context import Batch, StepInfo
from pipeline.training.compilation import first_step_guard


def cpu_has_native_bf16() -> bool:
    """Return whether this CPU has bf16 arithmetic units (AVX-512 BF16 or AMX), on which bf16 autocast pays."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(amp: str, device: torch.device | None = None) -> torch.dtype | None:
    """Return the autocast dtype for ``train.amp`` on ``device`` (None when off).

    ``auto`` is bf16 on a CUDA device and off elsewhere (and off when no device is given). Not on a CPU, not
    even one with bf16 units (``cpu_has_native_bf16``): there bf16 sped the quickstart's epochs up 1.14x but
    moved its 8-epoch kNN from 79.5% to 72.1%, a change of result a default should not make unasked.
    """
    if amp == "auto":
        return torch.bfloat16 if device is not None and device.type == "cuda" else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """Return the autocast context for ``dtype`` on ``device`` (a no-op context when None)."""
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def to_device(value: Any, device: torch.device, channels_last: bool) -> Any:
    """Return ``value`` (tensor or nested dict of tensors) on ``device``; images optionally channels-last.

    4-D images ``[B, C, H, W]`` become channels-last; 5-D image groups ``[B, N, C, H, W]`` (CPC's patch grid)
    are laid out so that each image is, and flattening them to ``[B*N, C, H, W]`` stays a channels-last view.
    """
    if isinstance(value, dict):
        return {key: to_device(item, device, channels_last) for key, item in value.items()}
    if channels_last and value.dim() == 4:
        return value.to(device, non_blocking=True, memory_format=torch.channels_last)
    if channels_last and value.dim() == 5:
        moved = value.to(device, non_blocking=True)
        return moved.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return value.to(device, non_blocking=True)


def batch_to_device(raw: tuple[Any, torch.Tensor, torch.Tensor], device: torch.device, channels_last: bool) -> Batch:
    """Return a loader's ``(views, labels, indices)`` as a Batch on ``device``."""
    views, labels, indices = raw
    return Batch(
        views=to_device(views, device, channels_last),
        labels=labels.to(device, non_blocking=True),
        indices=indices.to(device, non_blocking=True),
    )


def train_step(
    model: nn.Module,
    method: Method,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: Batch,
    step: StepInfo,
    learning_rate: float,
    amp_dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """Return the step's detached losses after forward, backward, optimiser and scaler steps and ``on_step_end``.

    ``model`` is what runs the forward pass (the DDP wrapper, or ``method`` itself on one process). The first
    step after ``compile_networks`` falls back to eager if compilation fails (``first_step_guard``).
    """
    for group in optimizer.param_groups:
        group["lr"] = learning_rate

    def forward_backward() -> dict[str, torch.Tensor]:
        with autocast(batch.labels.device, amp_dtype):
            losses = model(batch, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        return losses

    losses = first_step_guard(method, forward_backward)
    scaler.step(optimizer)
    scaler.update()
    method.on_step_end()
    return {key: value.detach() for key, value in losses.items()}

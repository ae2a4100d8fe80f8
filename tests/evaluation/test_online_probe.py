"""The online probe on its own: when it runs, what one step changes (only the head), and its heads across workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipeline.config import OnlineProbeConfig
from pipeline.evaluation.online_probe import OnlineProbe, probe_enabled

CPU = torch.device("cpu")


class PooledNet(nn.Module):
    """A tiny backbone with batch norm: conv, BN, ReLU, global pooling; ``feature_dim`` like the project's."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.feature_dim = 8

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images).mean(dim=(2, 3))


def _separable(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return images whose class (0 or 1) is the sign of their mean brightness, and the labels."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = torch.randn(count, 3, 6, 6, generator=generator) * 0.1 + (labels.float() * 2 - 1)[:, None, None, None]
    return images, labels


def test_auto_runs_the_probe_only_where_training_labels_are_known() -> None:
    auto = OnlineProbeConfig()
    assert probe_enabled(auto, np.array([0, 1, -1]), 2)
    assert not probe_enabled(auto, np.array([-1, -1]), 10)
    assert not probe_enabled(auto, np.array([0, 0]), 1)
    assert not probe_enabled(OnlineProbeConfig(enabled=False), np.array([0, 1]), 2)
    assert probe_enabled(OnlineProbeConfig(enabled=True), np.array([-1]), 2)


def test_a_step_changes_only_the_head_and_the_head_learns() -> None:
    generator = torch.Generator().manual_seed(0)
    backbone = PooledNet().train()
    backbone.layers[1].running_mean.fill_(0.5)
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    probe = OnlineProbe(backbone, 2, OnlineProbeConfig(lr=0.5), CPU)

    losses = []
    for _ in range(30):
        images, labels = _separable(32, generator)
        figures = probe.step(images, labels, None)
        assert figures["labelled"] == 32
        losses.append(float(figures["loss_sum"] / figures["labelled"]))
    assert backbone.training  # its mode is restored after the inference-mode pass
    for key, value in backbone.state_dict().items():  # weights and BN running statistics alike
        assert torch.equal(value, before[key]), key
    assert all(parameter.grad is None for parameter in backbone.parameters())
    images, labels = _separable(200, generator)
    accuracy = (probe.predict(probe.features(images, None)) == labels).float().mean()
    assert losses[-1] < losses[0] and accuracy > 0.9


def test_a_batch_without_labels_leaves_the_head_unchanged_and_reports_zeros() -> None:
    probe = OnlineProbe(PooledNet(), 3, OnlineProbeConfig(), CPU)
    figures = probe.step(torch.randn(4, 3, 6, 6), torch.full((4,), -1), None)
    assert [float(figures[key]) for key in ("loss_sum", "correct", "labelled")] == [0.0, 0.0, 0.0]
    assert not probe.head.weight.any() and not probe.head.bias.any()


class Overflowing(PooledNet):
    """PooledNet whose features of the first image are infinite, as an fp16 overflow leaves them."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = super().forward(images)
        features[0] = float("inf")
        return features


def test_overflowed_features_are_left_out_and_the_head_stays_finite() -> None:
    probe = OnlineProbe(Overflowing(), 2, OnlineProbeConfig(lr=0.5), CPU)
    images, labels = _separable(8, torch.Generator().manual_seed(0))
    figures = probe.step(images, labels, None)
    assert figures["labelled"] == 7 and torch.isfinite(figures["loss_sum"])
    assert torch.isfinite(probe.head.weight).all() and probe.head.weight.any()


def _partly_labelled(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a 16-image batch whose first 3 images (all in rank 0's half) have no label: the halves weigh 5 and 8."""
    images, labels = _separable(16, torch.Generator().manual_seed(step))
    labels[:3] = -1
    return images, labels


def _probe_worker(rank: int, init_file: str, out_dir: str) -> None:
    """Each rank steps its half of one batch; the head it ends with is saved for the parent to compare."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        backbone = PooledNet().eval()
        probe = OnlineProbe(backbone, 2, OnlineProbeConfig(lr=0.5), CPU)
        for step in range(3):
            images, labels = _partly_labelled(step)
            probe.step(images[rank * 8 : (rank + 1) * 8], labels[rank * 8 : (rank + 1) * 8], None)
        torch.save(probe.head.state_dict(), Path(out_dir) / f"head{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_unevenly_labelled_workers_hold_the_head_of_one_worker_with_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_probe_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    heads = [torch.load(tmp_path / f"head{rank}.pt") for rank in range(2)]

    torch.manual_seed(0)
    backbone = PooledNet().eval()
    probe = OnlineProbe(backbone, 2, OnlineProbeConfig(lr=0.5), CPU)
    for step in range(3):
        probe.step(*_partly_labelled(step), None)

    for key, value in probe.head.state_dict().items():
        assert torch.equal(heads[0][key], heads[1][key]), key
        torch.testing.assert_close(heads[0][key], value, rtol=1e-5, atol=1e-6)

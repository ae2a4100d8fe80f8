"""Progress lines of long passes: ImageProgress's interval, rate and ETA, extract_features' callback, and the lines
the evaluation command prints while it embeds (a tiny run written directly: no Ray, no MLflow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.config import load_config, with_overrides
from pipeline.evaluate import main as evaluate_main
from pipeline.evaluation.monitor import extract_features
from pipeline.models.backbones import build_backbone
from pipeline.runtime.progress import ImageProgress, ProgressRelay, ProgressReporter, format_duration
from tests.test_export import write_run

LINE = re.compile(r"^(?P<label>.+) (?P<done>\d+)/(?P<total>\d+) images, (?P<rate>\d+) img/s, (?P<tail>.+)$")


class IndexedImages(Dataset):
    """``count`` random 16 px images yielded as ``(image, label, index)``, as the project's sources do."""

    def __init__(self, count: int) -> None:
        self.images = torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        """Return the number of images."""
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        """Return image ``index``, label 0 and its index."""
        return self.images[index], 0, index


class FakeClock:
    """A clock advanced by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """Return the current fake time in seconds."""
        return self.now


def test_lines_come_at_the_interval_with_rate_and_eta_and_once_at_the_total() -> None:
    clock, lines = FakeClock(), []
    progress = ImageProgress(lines.append, "  features backbone train:", 50, every_s=2.0, clock=clock)
    for done in (10, 20, 30, 40, 50):  # 10 images per second
        clock.now += 1.0
        progress(done)
    assert lines == [
        "  features backbone train: 20/50 images, 10 img/s, ETA 3s",
        "  features backbone train: 40/50 images, 10 img/s, ETA 1s",
        "  features backbone train: 50/50 images, 10 img/s, done in 5s",
    ]
    assert format_duration(3725) == "1h02m" and format_duration(185) == "3m05s"


def test_extract_features_reports_increasing_counts_ending_at_the_total() -> None:
    model = with_overrides(load_config(None), {"model.width": 4, "model.cifar_stem": True}).model
    loader = DataLoader(IndexedImages(30), batch_size=7)
    counts: list[int] = []
    backbone = build_backbone(model, "plain")
    features, indices = extract_features(backbone, loader, torch.device("cpu"), progress=counts.append)
    assert counts == [7, 14, 21, 28, 30]
    assert features.shape[0] == 30 and sorted(indices.tolist()) == list(range(30))

    lines: list[str] = []
    extract_features(backbone, loader, torch.device("cpu"), progress=ImageProgress(lines.append, "x", 30, every_s=0.0))
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed) and [int(match["done"]) for match in parsed] == counts
    assert all(int(match["rate"]) > 0 for match in parsed)
    assert all(match["tail"].startswith("ETA ") for match in parsed[:-1]) and parsed[-1]["tail"].startswith("done in ")


def test_the_evaluation_command_prints_progress_while_it_embeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"data.synthetic.num_train": 40, "data.synthetic.num_test": 20, "data.num_workers": 0, "train.epochs": 1}
    run_dir, _ = write_run(tmp_path, "supcon", **data)
    assert evaluate_main(["--run", str(run_dir), "--set", "eval.linear.epochs=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [match.groupdict() for line in lines if (match := LINE.match(line))]
    assert [(entry["label"], entry["done"], entry["total"]) for entry in progress][-2:] == [
        ("features backbone train:", "40", "40"),
        ("features backbone test:", "20", "20"),
    ]
    assert progress[-1]["tail"].startswith("done in ")


def test_a_local_relay_prints_lines_and_gives_the_hooks_verdict_after_each_epoch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[dict[str, float]] = []

    def hook(metrics: dict[str, float]) -> bool:
        seen.append(metrics)
        return metrics["epoch"] < 2

    relay = ProgressRelay(on_epoch=hook, local=True)
    worker = ProgressReporter(relay.handle)
    worker.say("epoch 1/3 loss 1.0")
    worker.epoch(1, {"epoch": 1.0, "train/loss": 1.0})
    assert worker.verdict(1) is True
    worker.epoch(2, {"epoch": 2.0, "train/loss": 0.5})
    assert worker.verdict(2) is False
    assert relay.ended_early(2) and not relay.ended_early(1)
    assert not relay.stop_requested()  # nobody asked the run to stop: an end here is an interrupt
    relay.close()
    assert seen == [{"epoch": 1.0, "train/loss": 1.0}, {"epoch": 2.0, "train/loss": 0.5}]
    assert "epoch 1/3 loss 1.0" in capsys.readouterr().out


def test_a_failing_epoch_hook_ends_the_run_at_that_epoch_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    def hook(metrics: dict[str, float]) -> bool:
        raise RuntimeError("tune is gone")

    relay = ProgressRelay(on_epoch=hook, local=True)
    worker = ProgressReporter(relay.handle)
    worker.epoch(1, {"epoch": 1.0})
    assert worker.verdict(1) is False
    relay.close()
    assert "the epoch hook failed (tune is gone); the run ends after epoch 1" in capsys.readouterr().out


def test_a_worker_without_a_relay_prints_and_always_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    worker = ProgressReporter(None)
    worker.say("a line")
    worker.epoch(1, {"epoch": 1.0})
    assert worker.verdict(1) is True
    assert capsys.readouterr().out == "a line\n"

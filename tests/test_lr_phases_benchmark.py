"""The learning-rate phase benchmark resumes a run's checkpoint and trains it at fixed rates in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.runtime.launch import pretrain
from tests.support.benchmarks import load_benchmark
from tests.support.configs import tiny_config


def test_phases_parse_and_bad_phases_are_named() -> None:
    lr_phases = load_benchmark("lr_phases")
    assert lr_phases.parse_phases("0:40,0.03:8") == [(0.0, 40), (0.03, 8)]
    for bad in ("0.03", "x:4", "0.1:0", "-1:3"):
        with pytest.raises(ValueError, match=f"'{bad}'"):
            lr_phases.parse_phases(bad)


def test_zero_rate_freezes_the_online_encoder_and_windows_are_reported(tmp_path: Path, mlflow_uri: str) -> None:
    lr_phases = load_benchmark("lr_phases")
    config = tiny_config(tmp_path, mlflow_uri, **{"ray.num_workers": 1, "train.epochs": 1})
    run_dir = Path(pretrain(config, local=True).checkpoint_path).parent
    config, source, method, optimizer, epoch = lr_phases.resume_method(run_dir, [])
    assert epoch == 1
    before = {name: value.clone() for name, value in method.online.state_dict().items() if value.is_floating_point()}
    rows = lr_phases.run_phases(config, source, method, optimizer, epoch, [(0.0, 4), (0.05, 2)], window=2)
    assert [(step, rate) for step, rate, _ in rows] == [(2, 0.0), (4, 0.0), (6, 0.05)]
    assert all({"loss", "info_nce", "contrast_acc"} <= set(means) for _, _, means in rows)
    after = method.online.state_dict()
    weights = [name for name in before if "running" not in name and "num_batches" not in name]
    # The last phase (lr 0.05) moves the weights; rerun the zero phase alone to check it leaves them in place.
    assert any(not torch.equal(before[name], after[name]) for name in weights)
    config, source, method, optimizer, epoch = lr_phases.resume_method(run_dir, [])
    lr_phases.run_phases(config, source, method, optimizer, epoch, [(0.0, 3)], window=3)
    assert all(torch.equal(before[name], method.online.state_dict()[name]) for name in weights)

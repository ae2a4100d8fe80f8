"""End-to-end pretraining with the views made per batch on the training device (``data.augment_on: device``).

The runs are local (the loop in this process, one worker): what is tested is the batched views inside the
loop and its resume, not Ray; the views' per-rank generators are covered by the batched-view tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.runtime.launch import pretrain
from pipeline.training.checkpoints import latest_checkpoint, load_checkpoint
from tests.support.configs import tiny_config

DEVICE = {"data.augment_on": "device", "ray.num_workers": 1}


def test_device_augmented_run_resumes_exactly(tmp_path: Path, mlflow_uri: str) -> None:
    reference = pretrain(tiny_config(tmp_path, mlflow_uri, **{"ray.run_name": "reference", **DEVICE}), local=True)
    stopped = tiny_config(
        tmp_path, mlflow_uri, **{"ray.run_name": "stopped", "train.inject_failure_at_epoch": 2, **DEVICE}
    )
    with pytest.raises(Exception, match="injected failure"):
        pretrain(stopped, local=True)
    assert load_checkpoint(latest_checkpoint(tmp_path / "runs" / "stopped"))["epoch"] == 1
    resumed = pretrain(stopped, local=True)

    final = load_checkpoint(Path(resumed.checkpoint_path))
    expected = load_checkpoint(Path(reference.checkpoint_path))
    assert final["epoch"] == expected["epoch"] == 2
    assert final["global_step"] == expected["global_step"]
    assert final["method"].keys() == expected["method"].keys()
    for key, value in expected["method"].items():
        assert torch.equal(final["method"][key], value), key
    # The loader-mode run of the same config trained on other views: the batched path really ran.
    loader = {**DEVICE, "data.augment_on": "loader", "ray.run_name": "loader"}
    loader_run = pretrain(tiny_config(tmp_path, mlflow_uri, **loader), local=True)
    loader_mode = load_checkpoint(Path(loader_run.checkpoint_path))
    assert not torch.equal(loader_mode["method"]["queue.embeddings"], expected["method"]["queue.embeddings"])

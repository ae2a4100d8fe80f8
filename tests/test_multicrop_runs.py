"""A multi-crop run end to end in the calling process: it trains, logs the local crops' loss, and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.runtime.launch import pretrain
from pipeline.training.checkpoints import latest_checkpoint, load_checkpoint
from tests.support.configs import tiny_config

MULTICROP = {
    "ray.num_workers": 1,
    "eval.linear.enabled": False,
    "method.local_crops": [{"size": 16, "scale": [0.05, 0.4], "count": 2}],
}


def test_a_multicrop_run_logs_its_local_loss_and_resumes_to_the_uninterrupted_state(
    tmp_path: Path, mlflow_uri: str
) -> None:
    straight = pretrain(tiny_config(tmp_path, mlflow_uri, **MULTICROP, **{"ray.run_name": "straight"}), local=True)
    assert straight.metrics["train/local_info_nce"] > 0
    broken = tiny_config(
        tmp_path, mlflow_uri, **MULTICROP, **{"ray.run_name": "broken", "train.inject_failure_at_epoch": 2}
    )
    with pytest.raises(RuntimeError, match="injected failure"):
        pretrain(broken, local=True)
    resumed = pretrain(broken, local=True)

    expected = load_checkpoint(latest_checkpoint(tmp_path / "runs" / "straight"))
    actual = load_checkpoint(Path(resumed.checkpoint_path))
    assert actual["epoch"] == expected["epoch"] == 2
    for name, tensor in expected["method"].items():
        assert torch.equal(actual["method"][name], tensor), name
    assert actual["metrics"]["train/local_info_nce"] == expected["metrics"]["train/local_info_nce"]

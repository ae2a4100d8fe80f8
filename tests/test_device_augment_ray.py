"""End-to-end pretraining with the views made per batch on the worker's device (``data.augment_on: device``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.checkpoints import latest_checkpoint, load_checkpoint
from pipeline.launch import pretrain
from tests.support.configs import Reference, tiny_config

pytestmark = pytest.mark.usefixtures("ray_session")

DEVICE = {"data.augment_on": "device"}


def test_device_augmented_run_resumes_exactly(tmp_path: Path, mlflow_uri: str, tiny_reference: Reference) -> None:
    reference = pretrain(tiny_config(tmp_path, mlflow_uri, **{"ray.run_name": "reference", **DEVICE}))
    stopped = tiny_config(
        tmp_path,
        mlflow_uri,
        **{"ray.run_name": "stopped", "train.inject_failure_at_epoch": 2, "ray.max_failures": 0, **DEVICE},
    )
    with pytest.raises(Exception, match="injected failure"):
        pretrain(stopped)
    assert load_checkpoint(latest_checkpoint(tmp_path / "runs" / "stopped"))["epoch"] == 1
    resumed = pretrain(stopped)

    final = load_checkpoint(Path(resumed.checkpoint_path))
    expected = load_checkpoint(Path(reference.checkpoint_path))
    assert final["epoch"] == expected["epoch"] == 2
    assert final["global_step"] == expected["global_step"]
    assert final["method"].keys() == expected["method"].keys()
    for key, value in expected["method"].items():
        assert torch.equal(final["method"][key], value), key
    # The loader-mode run of the same config trained on other views: the batched path really ran.
    loader_mode = load_checkpoint(Path(tiny_reference.result.checkpoint_path))
    assert not torch.equal(loader_mode["method"]["queue.embeddings"], expected["method"]["queue.embeddings"])

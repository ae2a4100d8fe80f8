"""End-to-end pretraining on real Ray Train (2 CPU workers, gloo DDP) with a real MLflow sqlite store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow import MlflowClient

from pipeline.config import ConfigError, TrackingConfig
from pipeline.record.run import open_run
from pipeline.runtime import launch
from pipeline.runtime.cluster import ResourceError, check_resources
from pipeline.runtime.launch import pretrain
from pipeline.training.checkpoints import METRICS_FILE, checkpoint_metrics, latest_checkpoint, load_checkpoint
from tests.support.configs import Reference, tiny_config

pytestmark = pytest.mark.usefixtures("ray_session")

STEPS_PER_EPOCH = 4  # 64 images / global batch 16


def test_two_worker_moco_run_is_recorded_in_mlflow(tiny_reference: Reference) -> None:
    result, mlflow_uri = tiny_reference.result, tiny_reference.mlflow_uri

    assert 0.0 <= result.metrics["knn/top1"] <= 100.0
    assert result.pixel_knn_top1 is not None
    state = load_checkpoint(Path(result.checkpoint_path))
    assert state["epoch"] == 2
    assert state["global_step"] == 2 * STEPS_PER_EPOCH
    assert (Path(result.checkpoint_path) / METRICS_FILE).is_file()
    assert checkpoint_metrics(Path(result.checkpoint_path)) == pytest.approx(state["metrics"])
    assert result.metrics == pytest.approx(state["metrics"])
    queue_pointer = int(state["method"]["queue.pointer"])
    assert queue_pointer == (state["global_step"] * 16) % 64

    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.queue_size"] == "64"
    assert run.data.params["ray.num_workers"] == "2"
    for metric in ("train/loss", "train/info_nce", "train/lr", "knn/top1", "perf/images_per_s", "perf/epoch_time_s"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
        assert steps == [0, 1], metric
    assert len(client.get_metric_history(run.info.run_id, "final/knn/top1")) == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "summary.json", "pictures"} <= artifacts
    assert run.data.tags["checkpoint"] == result.checkpoint_path
    (picture,) = client.list_artifacts(run.info.run_id, "pictures")
    assert picture.path == "pictures/embedding_map_epoch_0002.png" and picture.file_size > 1000
    assert (Path(result.checkpoint_path).parent / picture.path).is_file()
    assert "picture_error" not in run.data.tags


def test_a_picture_that_cannot_be_drawn_is_a_tagged_warning(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_features(*args: object) -> None:
        raise RuntimeError("no test split here")

    monkeypatch.setattr(launch, "backbone_test_features", no_features)
    handle, _ = open_run(mlflow_uri, TrackingConfig(uri=mlflow_uri), "pictureless", {})
    plan = SimpleNamespace(run_dir=tmp_path, config=tiny_config(tmp_path, mlflow_uri))

    assert launch.draw_pictures(plan, handle, tmp_path / "epoch_0002") is None

    assert MlflowClient(mlflow_uri).get_run(handle.run_id).data.tags["picture_error"] == "no test split here"
    assert "warning: the embedding map could not be drawn (no test split here)" in capsys.readouterr().out


def test_stopped_run_resumes_exactly(tmp_path: Path, mlflow_uri: str, tiny_reference: Reference) -> None:
    reference = tiny_reference.result

    stopped = tiny_config(
        tmp_path, mlflow_uri, **{"ray.run_name": "stopped", "train.inject_failure_at_epoch": 2, "ray.max_failures": 0}
    )
    with pytest.raises(Exception, match="injected failure"):
        pretrain(stopped)
    run_dir = tmp_path / "runs" / "stopped"
    after_stop = load_checkpoint(latest_checkpoint(run_dir))
    assert after_stop["epoch"] == 1 and after_stop["global_step"] == STEPS_PER_EPOCH
    client = MlflowClient(mlflow_uri)
    stopped_run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert client.get_run(stopped_run_id).info.status == "FAILED"

    resumed = pretrain(stopped)
    assert resumed.mlflow_run_id == stopped_run_id
    final = load_checkpoint(Path(resumed.checkpoint_path))
    expected = load_checkpoint(Path(reference.checkpoint_path))
    assert final["epoch"] == expected["epoch"] == 2
    assert final["global_step"] == expected["global_step"]
    assert final["optimizer"]["param_groups"][0]["lr"] == expected["optimizer"]["param_groups"][0]["lr"]
    assert torch.equal(final["method"]["queue.pointer"], expected["method"]["queue.pointer"])
    torch.testing.assert_close(final["method"]["queue.embeddings"], expected["method"]["queue.embeddings"])
    steps = sorted(m.step for m in client.get_metric_history(stopped_run_id, "train/loss"))
    assert steps == [0, 1]
    assert client.get_run(stopped_run_id).info.status == "FINISHED"


def test_requests_beyond_a_local_cluster_fail_clearly(tmp_path: Path, mlflow_uri: str) -> None:
    config = tiny_config(tmp_path, mlflow_uri, **{"ray.num_workers": 3})
    with pytest.raises(ResourceError, match=r"ray.num_workers=3 .* 3 CPU wanted, 2 in the cluster"):
        check_resources(config.ray, local=True)


def test_queue_not_multiple_of_global_batch_is_rejected(tmp_path: Path, mlflow_uri: str) -> None:
    config = tiny_config(tmp_path, mlflow_uri, **{"method.queue_size": 72})
    with pytest.raises(ConfigError, match="72"):
        pretrain(config)

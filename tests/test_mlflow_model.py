"""The finished run's backbone as an MLflow model: logged on the pretraining run by pretrain, loadable with
``mlflow.pytorch.load_model("runs:/<id>/backbone")``, the checkpoint's features, registered under a name on request."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from pipeline.config import TrackingConfig
from pipeline.data.build import build_source
from pipeline.evaluation.stage import evaluation_networks, load_run_config
from pipeline.export import MODEL_NAME, log_final_model
from pipeline.record import run as record_run
from pipeline.record import store
from tests.support.configs import Reference

pytestmark = pytest.mark.usefixtures("ray_session")

# Measured on CPU: the exported program reproduces the checkpoint's backbone exactly (max abs diff 0.0).
TOLERANCE = 1e-5


def checkpoint_backbone(checkpoint: Path) -> torch.nn.Module:
    """Return the backbone as the evaluation stage builds it from the checkpoint (the run's own batch norm)."""
    config = load_run_config(checkpoint.parent)
    return evaluation_networks(config, checkpoint, build_source(config.data, "train").num_classes)["backbone"]


def test_the_finished_run_has_a_backbone_model_with_the_checkpoints_features(tiny_reference: Reference) -> None:
    result = tiny_reference.result
    with _use_tracking_uri(tiny_reference.mlflow_uri):
        model = mlflow.pytorch.load_model(f"runs:/{result.mlflow_run_id}/{MODEL_NAME}")
        info = mlflow.models.get_model_info(f"runs:/{result.mlflow_run_id}/{MODEL_NAME}")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 32, 32)
    assert info.saved_input_example_info is not None
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (model(images) - checkpoint_backbone(Path(result.checkpoint_path))(images)).abs().max().item()
    assert difference < TOLERANCE
    run = MlflowClient(tiny_reference.mlflow_uri).get_run(result.mlflow_run_id)
    assert [output.step for output in run.outputs.model_outputs] == [0], "one model, logged once"


def test_a_name_registers_it_and_a_second_report_logs_nothing(tiny_reference: Reference, mlflow_uri: str) -> None:
    run_dir = Path(tiny_reference.result.checkpoint_path).parent
    client = MlflowClient(mlflow_uri)
    experiment = store.experiment_id(mlflow_uri, TrackingConfig().experiment)
    handle = record_run.RunHandle(mlflow_uri, experiment, client.create_run(experiment).info.run_id)

    uri = log_final_model(handle, run_dir, registered_name="tiny-backbone")
    assert log_final_model(handle, run_dir, registered_name="tiny-backbone") == uri == f"runs:/{handle.run_id}/backbone"
    assert len(client.get_run(handle.run_id).outputs.model_outputs) == 1
    (version,) = client.search_model_versions("name = 'tiny-backbone'")
    assert str(version.version) == "1" and version.run_id == handle.run_id
    assert version.source == f"models:/{record_run.logged_model_id(handle, MODEL_NAME)}"


def test_a_model_that_cannot_be_logged_is_a_warning_and_a_tag(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.runtime import launch

    def refuse(*args: object) -> str:
        raise RuntimeError("this store has no model registry\nsecond line")

    monkeypatch.setattr(launch, "log_final_model", refuse)
    experiment = store.experiment_id(mlflow_uri, "model-failure")
    client = MlflowClient(mlflow_uri)
    handle = record_run.RunHandle(mlflow_uri, experiment, client.create_run(experiment).info.run_id)
    assert launch.log_backbone_model(handle, tmp_path / "run", "name") is None
    assert client.get_run(handle.run_id).data.tags["model_error"] == "this store has no model registry"
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("warning: the backbone could not be logged")

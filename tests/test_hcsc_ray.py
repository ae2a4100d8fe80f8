"""HCSC on Ray Train (2 workers) with the run's clustering actor: both overlap modes, both feature paths,
a worker failure that resumes and rebuilds the hierarchy, every clustering metric in MLflow, no actor left."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config import load_config, with_overrides
from pipeline.runtime.launch import pretrain
from pipeline.runtime.resources import actor_name
from tests.support.actors import wait_until_gone
from tests.support.configs import tiny_overrides

pytestmark = pytest.mark.usefixtures("ray_session")

LEVEL_METRICS = (
    "clusters",
    "non_empty",
    "mean_concentration",
    "nmi_class",
    "ari_class",
    "nmi_superclass",
    "ari_superclass",
)
EPOCH_METRICS = (
    "clustering/seconds",
    "clustering/staleness_epochs",
    "train/icsc_kept",
    "train/pcsc_kept",
    *(f"clustering/level{level}/{name}" for level in range(3) for name in LEVEL_METRICS),
)


@pytest.mark.parametrize(
    ("mode", "overrides", "staleness"),
    [
        # Overlap: epoch 2 trains with the hierarchy of the weights that ended epoch 0 (one behind); the failure at
        # the start of epoch 3 restarts the workers, which rebuild the hierarchy from the restored weights.
        (
            "overlap",
            {"method.clustering.overlap": True, "train.inject_failure_at_epoch": 3, "ray.max_failures": 1},
            [1, 0],
        ),
        ("workers", {"method.clustering.where": "workers"}, [0, 0]),
    ],
)
def test_three_epochs_with_warm_up_and_the_clustering_actor(
    tmp_path: Path,
    mlflow_uri: str,
    mode: str,
    overrides: dict[str, object],
    staleness: list[int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    values = tiny_overrides(
        tmp_path,
        mlflow_uri,
        **{
            "train.epochs": 3,
            "method.warmup_epochs": 1,
            "method.hierarchy": [12, 6, 3],
            "method.clustering.niter": 5,
            "method.clustering.nredo": 1,
            "eval.linear.enabled": False,
            "eval.pictures": True,
            "ray.run_name": f"hcsc-{mode}",
            **overrides,
        },
    )
    result = pretrain(with_overrides(load_config("hcsc_synthetic.yaml"), values))
    # The actor's embedding progress reaches the driver through the run's relay; with where: workers it only clusters.
    embedded = {
        int(match[1])
        for line in capsys.readouterr().out.splitlines()
        if (match := re.match(r"  clustering after (\d+) epochs: embedded 64/64 images, \d+ img/s, done in ", line))
    }
    assert sorted(embedded) == ([0, 1, 2] if mode == "overlap" else [])
    client = MlflowClient(mlflow_uri)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"

    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "train/info_nce")] == [0], "warm-up"
    for key in ("train/instance_loss", "train/prototype_loss", *EPOCH_METRICS):
        history = client.get_metric_history(result.mlflow_run_id, key)
        assert [metric.step for metric in history] == [1, 2], key
    # With overlap the last warm-up epoch already waits for its submission (the workers' embeddings or the weights).
    waits = client.get_metric_history(result.mlflow_run_id, "clustering/wait_s")
    assert [metric.step for metric in waits] == ([0, 1, 2] if mode == "overlap" else [1, 2])
    history = client.get_metric_history(result.mlflow_run_id, "clustering/staleness_epochs")
    assert [metric.value for metric in history] == staleness
    for level in range(3):
        for reference in ("class", "superclass"):
            values_logged = client.get_metric_history(result.mlflow_run_id, f"clustering/level{level}/nmi_{reference}")
            assert all(0.0 <= metric.value <= 1.0 for metric in values_logged)
    for key in ("train/icsc_kept", "train/pcsc_kept"):
        assert all(0.0 < metric.value <= 1.0 for metric in client.get_metric_history(result.mlflow_run_id, key))

    artifacts = [artifact.path for artifact in client.list_artifacts(result.mlflow_run_id, "hierarchy")]
    assert artifacts == ["hierarchy/epoch_0002.json", "hierarchy/epoch_0003.json"]
    summary = json.loads(
        Path(client.download_artifacts(result.mlflow_run_id, artifacts[-1], str(tmp_path))).read_text()
    )
    assert summary["sizes"] == [12, 6, 3] and summary["weights_after_epochs"] == 3 - 1 - staleness[-1]
    assert "assignments" not in summary
    levels = summary["levels"]
    assert [len(level["sizes"]) for level in levels] == [12, 6, 3]
    assert all(sum(level["sizes"]) == 64 for level in levels)  # every training image in one prototype per level
    assert all(-1 <= label < 20 for level in levels for label in level["majority"])
    assert max(levels[0]["parents"]) < 6 and max(levels[1]["parents"]) < 3
    assert "parents" not in levels[-1]
    listed = client.list_artifacts(result.mlflow_run_id, "pictures")
    pictures = {artifact.path: artifact.file_size for artifact in listed}
    assert sorted(pictures) == ["pictures/embedding_map_epoch_0003.png", "pictures/hierarchy_epoch_0003.png"]
    assert min(pictures.values()) > 1000
    assert (tmp_path / "runs" / f"hcsc-{mode}" / "pictures" / "hierarchy_epoch_0003.png").is_file()

    assert wait_until_gone(actor_name(f"hcsc-{mode}", "clustering")), "the clustering actor outlived the run"

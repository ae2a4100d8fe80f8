"""The linear evaluation stage on a finished 2-epoch synthetic run: metrics and artifacts in MLflow, reuse, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pipeline.config import load_config, with_overrides
from pipeline.evaluate import evaluate_and_record, evaluate_run
from pipeline.evaluation.stage import EvaluationError
from pipeline.runtime.launch import pretrain
from pipeline.training.checkpoints import load_checkpoint, write_checkpoint
from tests.support.configs import tiny_config, tiny_overrides

pytestmark = pytest.mark.usefixtures("ray_session")

ROOT = Path(__file__).resolve().parent.parent


def test_evaluation_lands_in_the_run_is_reused_and_refuses_unfit_runs(tmp_path: Path, mlflow_uri: str) -> None:
    config = tiny_config(
        tmp_path,
        mlflow_uri,
        **{
            "ray.num_workers": 1,
            "ray.run_name": "probe",
            "data.synthetic.num_train": 160,
            "data.long_tail_ratio": 10,
            "eval.linear.enabled": True,
            "eval.linear.epochs": 5,
        },
    )
    # Pretrained in this process (the loop is not this test's subject); the augmented protocol below runs on Ray.
    result = pretrain(config, local=True)
    run_dir = tmp_path / "runs" / "probe"
    assert set(result.evaluation) == {"backbone"}
    assert 0 <= result.evaluation["backbone"]["top1"] <= 100
    assert {"many", "medium", "few"} <= set(result.evaluation["backbone"])

    client = MlflowClient(mlflow_uri)
    history = client.get_metric_history(result.mlflow_run_id, "eval/features/backbone/top1")
    assert [(m.step, m.value) for m in history] == [(2, result.evaluation["backbone"]["top1"])]
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "eval/features")}
    assert {
        "eval/features/per_class_backbone.csv",
        "eval/features/confusion_backbone.png",
        "eval/features/table.txt",
    } <= artifacts

    started = time.monotonic()
    again = evaluate_and_record(run_dir)
    assert again.reused and time.monotonic() - started < 5
    assert again.networks["backbone"].top1 == result.evaluation["backbone"]["top1"]
    assert len(client.get_metric_history(result.mlflow_run_id, "eval/features/backbone/top1")) == 1

    balanced = evaluate_run(run_dir, ["eval.linear.sampling=class_balanced", "eval.linear.optimizer=lbfgs"])
    assert not balanced.reused and balanced.sampling == "class_balanced"

    augmented_settings = [
        "eval.linear.protocol=augmented",
        "eval.linear.augmented.epochs=2",
        "eval.linear.augmented.milestones=[1]",
        "eval.linear.augmented.batch_size=32",
        "eval.linear.baselines=true",
        "ray.num_workers=2",
    ]
    augmented = evaluate_and_record(run_dir, augmented_settings)
    assert augmented.protocol == "augmented" and augmented.sampling == "class_balanced"
    assert set(augmented.networks) == {"backbone", "raw_pixels", "random_init"}
    assert all(0 <= network.top1 <= 100 for network in augmented.networks.values())
    assert len(client.get_metric_history(result.mlflow_run_id, "eval/augmented/backbone/top1")) == 1
    assert len(client.get_metric_history(result.mlflow_run_id, "eval/features/backbone/top1")) == 1

    unfinished = tmp_path / "runs" / "unfinished"
    shutil.copytree(run_dir, unfinished)
    shutil.rmtree(unfinished / "epoch_0002")
    with pytest.raises(EvaluationError, match=r"run unfinished is not finished \(1/2 epochs saved\)"):
        evaluate_run(unfinished)

    foreign = tmp_path / "runs" / "foreign"
    shutil.copytree(run_dir, foreign)
    state = load_checkpoint(foreign / "epoch_0002")
    state["method"] = {"something.else": torch.zeros(1)}
    write_checkpoint(foreign / "epoch_0002", state)
    shutil.rmtree(foreign / "eval")
    with pytest.raises(EvaluationError, match=r"does not hold a moco method"):
        evaluate_run(foreign)

    for missing in (str(tmp_path / "nowhere"), "0" * 32):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.evaluate", "--run", missing, "--tracking-uri", mlflow_uri],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr


def test_selfcon_run_reports_backbone_sub_network_and_ensemble(tmp_path: Path, mlflow_uri: str) -> None:
    overrides = tiny_overrides(
        tmp_path,
        mlflow_uri,
        **{
            "method.name": "selfcon",
            "method.variant": "M",
            # Two workers: the SupCon family's gathered contrast runs end to end under Ray Train's DDP.
            "ray.num_workers": 2,
            "eval.linear.enabled": True,
            "eval.linear.epochs": 5,
        },
    )
    overrides.pop("method.queue_size")
    result = pretrain(with_overrides(load_config("quickstart.yaml"), overrides))
    assert set(result.evaluation) == {"backbone", "exit_layer2", "ensemble"}
    client = MlflowClient(mlflow_uri)
    for classifier in ("backbone", "exit_layer2", "ensemble"):
        history = client.get_metric_history(result.mlflow_run_id, f"eval/features/{classifier}/top1")
        assert [m.value for m in history] == [result.evaluation[classifier]["top1"]]
    assert len(client.get_metric_history(result.mlflow_run_id, "train/selfcon")) == 2

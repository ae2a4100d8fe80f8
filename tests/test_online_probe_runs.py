"""The online probe inside real (local, in-process) runs: it never changes the encoder, logs per epoch, resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pipeline.runtime.launch import PretrainResult, pretrain
from pipeline.training.checkpoints import latest_checkpoint, load_checkpoint
from tests.support.configs import tiny_config

LOCAL = {"ray.num_workers": 1, "eval.linear.enabled": False, "train.epochs": 3}


def _run(folder: Path, name: str, **overrides: object) -> tuple[PretrainResult, str]:
    """Return a tiny local MoCo run (3 epochs) under ``folder`` with ``overrides``, and its MLflow store."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return pretrain(tiny_config(folder, uri, **LOCAL, **{"ray.run_name": name}, **overrides), local=True), uri


def _history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    """Return a metric's (step, value) history in step order."""
    return sorted((point.step, point.value) for point in MlflowClient(uri).get_metric_history(run_id, metric))


def _assert_same_tree(actual: object, expected: object, where: str = "") -> None:
    """Assert two nested dicts/lists of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same_tree(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for index, (mine, theirs) in enumerate(zip(actual, expected, strict=True)):
            _assert_same_tree(mine, theirs, f"{where}/{index}")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def with_probe(tmp_path_factory: pytest.TempPathFactory) -> tuple[PretrainResult, str]:
    """Return the tiny local run with the probe on (the default for labelled data) and its MLflow store."""
    return _run(tmp_path_factory.mktemp("with_probe"), "with_probe")


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_the_encoder_ends_bit_identical_with_and_without_the_probe(
    augment_on: str, with_probe: tuple[PretrainResult, str], tmp_path: Path
) -> None:
    probed, probed_uri = with_probe
    if augment_on != "loader":
        probed, probed_uri = _run(tmp_path / "on", "on", **{"data.augment_on": augment_on})
    plain, plain_uri = _run(tmp_path / "off", "off", **{"data.augment_on": augment_on, "eval.online_probe.enabled": 0})

    on, off = load_checkpoint(Path(probed.checkpoint_path)), load_checkpoint(Path(plain.checkpoint_path))
    assert on["method"].keys() == off["method"].keys()
    for key, tensor in off["method"].items():  # encoders, momentum encoders, queue, BN statistics
        assert torch.equal(on["method"][key], tensor), key
    for index, state in off["optimizer"]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(on["optimizer"]["state"][index][name], tensor), (index, name)
    for metric in ("train/loss", "knn/top1"):
        assert _history(probed_uri, probed.mlflow_run_id, metric) == _history(plain_uri, plain.mlflow_run_id, metric)
    assert [step for step, _ in _history(probed_uri, probed.mlflow_run_id, "online/top1")] == [0, 1, 2]
    assert "online_probe" in on and "online_probe" not in off
    assert not _history(plain_uri, plain.mlflow_run_id, "online/top1")


def test_the_probe_logs_its_figures_and_its_final_top1(with_probe: tuple[PretrainResult, str]) -> None:
    result, uri = with_probe
    for metric in ("online/train_loss", "online/train_top1"):
        assert [step for step, _ in _history(uri, result.mlflow_run_id, metric)] == [0, 1, 2], metric
    top1 = _history(uri, result.mlflow_run_id, "online/top1")
    assert all(0.0 <= value <= 100.0 for _, value in top1)
    assert _history(uri, result.mlflow_run_id, "final/online/top1") == [(3, top1[-1][1])]
    assert result.metrics["online/top1"] == top1[-1][1]


def test_a_run_stopped_by_a_failure_resumes_the_probe_exactly(
    with_probe: tuple[PretrainResult, str], tmp_path: Path
) -> None:
    reference, reference_uri = with_probe
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stopped = tiny_config(tmp_path, uri, **LOCAL, **{"ray.run_name": "stopped", "train.inject_failure_at_epoch": 2})
    with pytest.raises(RuntimeError, match="injected failure"):
        pretrain(stopped, local=True)
    assert load_checkpoint(latest_checkpoint(tmp_path / "runs" / "stopped"))["epoch"] == 1

    resumed = pretrain(stopped, local=True)  # an injected failure fires once per run folder

    final, expected = load_checkpoint(Path(resumed.checkpoint_path)), load_checkpoint(Path(reference.checkpoint_path))
    _assert_same_tree(final["online_probe"], expected["online_probe"])
    for metric in ("online/top1", "online/train_loss"):
        assert _history(uri, resumed.mlflow_run_id, metric) == _history(
            reference_uri, reference.mlflow_run_id, metric
        ), metric

"""Every recorded accuracy names the protocol that produced it."""

from __future__ import annotations

from pipeline.record.names import metric_protocol


def test_each_accuracy_metric_names_its_protocol_and_other_metrics_none() -> None:
    assert "weighted kNN" in metric_protocol("knn/top1")
    assert metric_protocol("final/knn/top1") == metric_protocol("knn/top1")
    assert "online linear probe" in metric_protocol("final/online/top1")
    assert "features protocol" in metric_protocol("eval/features/backbone/top1")
    assert "augmented protocol" in metric_protocol("eval/augmented/ensemble/top1")
    assert metric_protocol("train/loss") is None and metric_protocol("online_extra") is None

"""The method interface on a real 2-worker Ray Train run: indices, epoch context, broadcast, run-scoped actors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config, with_overrides
from pipeline.data.build import build_source
from pipeline.methods.registry import PLUGINS_ENV
from pipeline.runtime.launch import pretrain
from pipeline.runtime.resources import actor_name
from pipeline.training.checkpoints import load_checkpoint
from tests.support.actors import wait_until_gone
from tests.support.probe_method import read_records

pytestmark = pytest.mark.usefixtures("ray_session")

NUM_TRAIN = 64


def test_probe_method_sees_indices_epoch_context_and_a_surviving_actor(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PLUGINS_ENV, "tests.support.probe_method")
    records_path = tmp_path / "records.jsonl"
    config = with_overrides(
        load_config("quickstart.yaml"),
        {
            "method.name": "probe",
            "method.record_path": str(records_path),
            "data.synthetic.num_train": NUM_TRAIN,
            "data.synthetic.num_test": 32,
            "data.num_workers": 0,
            "model.width": 4,
            "train.batch_size": 16,
            "train.epochs": 2,
            "train.inject_failure_at_epoch": 2,
            "eval.knn_k": 10,
            "eval.pixel_baseline": False,
            "data.augment_on": "loader",
            "ray.num_workers": 2,
            "ray.cpus_per_worker": 1,
            "ray.max_failures": 1,
            "ray.run_name": "probe",
            "ray.storage_path": str(tmp_path / "runs"),
            "tracking.uri": mlflow_uri,
        },
    )
    result = pretrain(config)
    assert load_checkpoint(Path(result.checkpoint_path))["epoch"] == 2
    records = read_records(records_path)

    started = [r for r in records if r["event"] == "actor_started"]
    assert len(started) == 1, "the actor was created once and survived the worker-group restart"
    epoch_starts = {(r["epoch"], r["rank"]): r for r in records if r["event"] == "epoch_start"}
    assert set(epoch_starts) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    pids = {epoch: {epoch_starts[epoch, rank]["pid"] for rank in (0, 1)} for epoch in (0, 1)}
    assert pids[0].isdisjoint(pids[1]), "epoch 2 ran in a restarted worker group"
    for (epoch, _), record in epoch_starts.items():
        assert record["world_size"] == 2 and record["device"] == "cpu" and record["num_train"] == NUM_TRAIN
        rank0 = epoch_starts[epoch, 0]
        assert record["received"] == {"from_rank": 0, "drawn": rank0["drawn"]}, "rank 0's value reached every rank"
        assert record["gathered_rows"] == NUM_TRAIN and record["gathered_nonzero_rows"] == NUM_TRAIN
    assert epoch_starts[0, 0]["drawn"] != epoch_starts[0, 1]["drawn"]

    labels = build_source(config.data, "train").labels
    for epoch in (0, 1):
        batches = [r for r in records if r["event"] == "batch" and r["epoch"] == epoch]
        seen = [index for batch in batches for index in batch["indices"]]
        assert sorted(seen) == list(range(NUM_TRAIN)), "one epoch visits every training image once"
        for batch in batches:
            assert batch["labels"] == [int(labels[index]) for index in batch["indices"]]

    assert wait_until_gone(actor_name("probe", "recorder")), "the run's actor outlived the run"
    printed = capsys.readouterr().out
    assert "epoch 2/2 loss" in printed and "(RayTrainWorker" not in printed

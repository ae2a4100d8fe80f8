"""A sweep trial's protocol without Ray: the run hands Tune one epoch at a time and goes on only when asked."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow import MlflowClient

from pipeline.config import ExperimentConfig
from pipeline.record import names, store
from pipeline.runtime.launch import RunInterrupted
from tests.support.configs import tiny_config
from tuning.trial import EPOCH_KEY, FINISHED_KEY, TrialStream

EPOCHS = 3


class FakeRun:
    """Stands in for ``pretrain``: trains ``EPOCHS`` epochs, asking its hook after each whether to go on.

    ``repeat`` hands that epoch to the hook a second time (a worker group restarted from its checkpoint).
    """

    def __init__(self, fail_at: int | None = None, repeat: int | None = None) -> None:
        self.trained: list[int] = []
        self.fail_at, self.repeat = fail_at, repeat
        self.verdicts: list[bool] = []

    def __call__(self, config: ExperimentConfig, on_epoch: Any) -> Any:
        experiment = store.experiment_id(config.tracking.uri, config.tracking.experiment)
        self.run_id = MlflowClient(config.tracking.uri).create_run(experiment).info.run_id
        for epoch in range(1, EPOCHS + 1):
            if epoch == self.fail_at:
                raise ValueError("loss is nan")
            self.trained.append(epoch)
            for _ in range(2 if epoch == self.repeat else 1):
                go_on = on_epoch({"epoch": epoch, "train/loss": 1.0 / epoch, "note": "not a number"})
                self.verdicts.append(go_on)
            if not go_on and epoch < EPOCHS:
                raise RunInterrupted("fake", Path("."), epoch, EPOCHS, "run-id")
        figures = {"knn/top1": 42.0}
        return SimpleNamespace(metrics=figures, evaluation={"backbone": {"top1": 50.0}}, mlflow_run_id=self.run_id)


def three_epochs(tmp_path: Path, mlflow_uri: str, **overrides: object) -> ExperimentConfig:
    """Return the tiny config trained for ``EPOCHS`` epochs."""
    return tiny_config(tmp_path, mlflow_uri, **{"train.epochs": EPOCHS, **overrides})


def settle() -> None:
    """Give the run's thread time to do anything it (wrongly) would without an answer."""
    time.sleep(0.2)


def test_each_epoch_is_handed_out_and_the_run_waits_for_the_next_request(tmp_path: Path, mlflow_uri: str) -> None:
    run = FakeRun()
    stream = TrialStream(three_epochs(tmp_path, mlflow_uri), run)
    first = stream.next_result()
    assert first == {"epoch": 1.0, "train/loss": 1.0}
    settle()
    assert run.trained == [1]  # parked at the boundary until Tune asks for the next result
    assert stream.next_result()[EPOCH_KEY] == 2.0
    # The last epoch is not handed out on its own: its figures come with the final result, after the evaluation.
    final = stream.next_result()
    assert final["done"] is True and final[FINISHED_KEY] == 1.0 and final["knn/top1"] == 42.0
    assert final["eval/features/backbone/top1"] == 50.0 and final[EPOCH_KEY] == 3.0
    stream.close()
    assert run.trained == [1, 2, 3] and run.verdicts == [True, True, True]
    assert not stream.thread.is_alive()
    # Pretrained and evaluated: the run is tagged complete, so a later run of the sweep keeps it.
    assert names.COMPLETE_TAG in MlflowClient(mlflow_uri).get_run(run.run_id).data.tags


def test_a_run_ended_at_an_epoch_is_not_tagged_complete(tmp_path: Path, mlflow_uri: str) -> None:
    run = FakeRun()
    stream = TrialStream(three_epochs(tmp_path, mlflow_uri), run)
    assert stream.next_result()[EPOCH_KEY] == 1.0
    stream.close()
    assert names.COMPLETE_TAG not in MlflowClient(mlflow_uri).get_run(run.run_id).data.tags


def test_closing_after_an_epoch_ends_the_run_at_that_epoch(tmp_path: Path, mlflow_uri: str) -> None:
    run = FakeRun()
    stream = TrialStream(three_epochs(tmp_path, mlflow_uri), run)
    assert stream.next_result()[EPOCH_KEY] == 1.0
    stream.close()
    assert run.trained == [1] and run.verdicts == [False]
    assert not stream.thread.is_alive()


def test_closing_before_the_first_epoch_ends_the_run_at_its_first_boundary(tmp_path: Path, mlflow_uri: str) -> None:
    run = FakeRun()
    stream = TrialStream(three_epochs(tmp_path, mlflow_uri), run)
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive() and run.trained == [1] and run.verdicts == [False]


def test_an_epoch_handed_over_again_after_the_close_gets_end_here_without_waiting(
    tmp_path: Path, mlflow_uri: str
) -> None:
    run = FakeRun(repeat=1)
    stream = TrialStream(three_epochs(tmp_path, mlflow_uri), run)
    assert stream.next_result()[EPOCH_KEY] == 1.0
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "close() hung on an epoch handed over twice"
    assert run.trained == [1] and run.verdicts == [False, False]


def test_a_failing_run_raises_its_error_to_tune_and_records_it(tmp_path: Path, mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    experiment = store.experiment_id(mlflow_uri, "contrastive")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    config = tiny_config(
        tmp_path, mlflow_uri, **{"tracking.parent_run_id": parent, "tracking.tags": {"trial": "grid-000"}}
    )
    failing = FakeRun(fail_at=2)
    stream = TrialStream(config, failing)
    assert stream.next_result()[EPOCH_KEY] == 1.0
    with pytest.raises(ValueError, match="loss is nan"):
        stream.next_result()
    stream.close()
    assert names.COMPLETE_TAG not in client.get_run(failing.run_id).data.tags
    (recorded,) = client.search_runs([experiment], filter_string="tags.trial = 'grid-000'")
    assert recorded.data.tags[names.ERROR_TAG] == "loss is nan"

"""One sweep trial as Tune runs it: a whole pretraining run whose figures are reported to Tune.

A module of its own: Tune pickles the trainable, and the sweep's callbacks read the keys it reports.
"""

from __future__ import annotations

import threading
from typing import Any

from pipeline.config import ExperimentConfig, build_config
from pipeline.record.run import metric_history
from pipeline.record.sweep import find_child, record_failure

# Reported with a trial's final figures: Tune's results carry bookkeeping keys even for trials that never reported.
FINISHED_KEY = "sweep/finished"
EPOCH_KEY = "epoch"
PROGRESS_POLL_S = 2.0


def trial_metrics(result: Any, config: ExperimentConfig) -> dict[str, float]:
    """Return a finished pretraining's figures for Tune, named as in MLflow: last epoch's and ``eval/...`` ones."""
    protocol = config.eval.linear.protocol
    metrics = {key: float(value) for key, value in result.metrics.items() if isinstance(value, int | float)}
    for network, figures in (result.evaluation or {}).items():
        metrics.update({f"eval/{protocol}/{network}/{key}": float(value) for key, value in figures.items()})
    return {**metrics, EPOCH_KEY: float(config.train.epochs), FINISHED_KEY: 1.0}


def run_trial(trial_config: dict[str, Any]) -> None:
    """Tune's function trainable: pretrain (and evaluate) one grid point, then report its final metrics."""
    from ray import tune

    from pipeline.runtime.launch import pretrain

    config = build_config(trial_config["config"])
    progress = trial_config.get("progress_metric")
    try:
        result = pretrain(config) if progress is None else pretrain_reporting(config, progress)
    except Exception as exc:
        record_failure(config.tracking, exc)
        raise
    tune.report(trial_metrics(result, config))


def pretrain_reporting(config: ExperimentConfig, metric: str) -> Any:
    """Return ``pretrain(config)``'s result after reporting each epoch's ``metric`` to Tune as it lands in MLflow.

    Training runs in a thread; this one reads the trial's MLflow run every few seconds, so a scheduler
    (ASHA) can stop the trial between epochs without any hook inside the training workers.
    """
    from ray import tune

    from pipeline.runtime.launch import pretrain

    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["result"] = pretrain(config)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial's own thread below
            outcome["error"] = exc

    worker = threading.Thread(target=train, name="pretrain", daemon=True)
    worker.start()
    reported, child = 0, None
    while True:
        running = worker.is_alive()
        # The child run is looked up until it exists, then only its metric history is read.
        child = child or find_child(config.tracking)
        history = metric_history(config.tracking.uri, child, metric) if child else []
        for step, value in history[reported:]:
            tune.report({metric: value, EPOCH_KEY: step + 1})
        reported = len(history)
        if not running:
            break
        worker.join(timeout=PROGRESS_POLL_S)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]

"""Tune callbacks of the sweep driver (a module of their own: Tune pickles them with the experiment state)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from pipeline.config import build_config
from pipeline.record.sweep import mark_stopped
from tuning.trial import EPOCH_KEY, FINISHED_KEY


class EarlyStopRecorder(Callback):
    """Marks in MLflow a trial that completed without its final report: the scheduler (ASHA) stopped it."""

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Mark ``trial``'s MLflow run as stopped early unless it reported its final figures."""
        last = trial.last_result or {}
        if not last.get(FINISHED_KEY):
            mark_stopped(build_config(trial.config["config"]).tracking, int(last.get(EPOCH_KEY, 0)))

"""Tune callbacks of the sweep driver (a module of their own: Tune pickles them with the experiment state)."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from tuning.sweep import EPOCH_KEY, FINISHED_KEY, mark_stopped


class EarlyStopRecorder(Callback):
    """Marks in MLflow a trial that completed without its final report: the scheduler (ASHA) stopped it."""

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Mark ``trial``'s MLflow run as stopped early unless it reported its final figures."""
        last = trial.last_result or {}
        if not last.get(FINISHED_KEY):
            mark_stopped(trial.config, int(last.get(EPOCH_KEY, 0)))

"""Tune callbacks of the sweep driver (a module of their own: Tune pickles them with the experiment state)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipeline.config import TrackingConfig
from pipeline.record.sweep import mark_stopped
from pipeline.runtime.progress import request_stop
from tuning.trial import EPOCH_KEY, FINISHED_KEY


class StopRequester(Callback):
    """Tags the run of a trial the scheduler stopped (completed without its final figures), then asks it to stop.

    Tune calls this before it stops the trial's actor, and only for a scheduler's decision, never while
    tearing down an interrupted sweep: the request is on the run's relay before the trial is told to end.
    The tag is written here first, so a run Tune kills before it can end itself is still known as stopped.
    """

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Tag ``trial``'s run ``stopped_early`` and ask it to stop, unless it reported its final figures."""
        last = trial.last_result or {}
        if last.get(FINISHED_KEY):
            return
        tracking = trial.config.get("config", {}).get("tracking", {})
        try:
            mark_stopped(TrackingConfig.model_validate(tracking), int(last.get(EPOCH_KEY, 0)))
        except Exception as exc:  # noqa: BLE001 - an exception in a Tune callback would end the whole sweep
            print(f"warning: trial {_trial_name(trial)}'s run could not be tagged stopped_early ({exc})", flush=True)
        request_stop(_trial_name(trial))


def _trial_name(trial: Any) -> str:
    """Return the grid's name of a Tune trial (its run name), e.g. ``cifar10_laptop-003``.

    Read from the config's data, not rebuilt: an exception in a Tune callback would end the whole sweep.
    """
    return str(trial.config.get("config", {}).get("ray", {}).get("run_name") or trial)


class TrialProgress(Callback):
    """Prints a line when a trial starts (with the file its epoch lines go to) and when it ends, with its metric."""

    def __init__(self, total: int, metric: str) -> None:
        self.total = total
        self.metric = metric
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print that ``trial`` started, how many have ended, and where Tune writes the trial's output."""
        self.started[trial.trial_id] = time.monotonic()
        ended = sum(other.status in ("TERMINATED", "ERROR") for other in trials)
        log = Path(trial.storage.trial_working_directory) / "stdout"
        print(f"trial {_trial_name(trial)} started ({ended}/{self.total} ended); its epoch lines: {log}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print that ``trial`` ended, with the sweep's metric when it reported one and the trial's wall time."""
        last = trial.last_result or {}
        value = last.get(self.metric)
        figure = f"{self.metric} {value:.2f}" if isinstance(value, int | float) else "no final figures"
        if not last.get(FINISHED_KEY):
            figure = f"stopped early by the scheduler after epoch {int(last.get(EPOCH_KEY, 0))} ({figure})"
        started = self.started.pop(trial.trial_id, None)
        took = f" in {time.monotonic() - started:.0f}s" if started is not None else ""
        print(f"trial {_trial_name(trial)} ended{took}: {figure}", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Print that ``trial`` failed; its error is printed with the sweep's summary and tagged on its run."""
        self.started.pop(trial.trial_id, None)
        print(f"trial {_trial_name(trial)} failed (the others go on)", flush=True)

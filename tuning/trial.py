"""One sweep trial as Tune runs it: a whole pretraining run, steered by Tune one epoch at a time.

The run hands each epoch's metrics to Tune as it finishes it and waits for Tune's word before the
next: Tune asking for the next result means go on, Tune stopping the trial means end here. A trial the
scheduler stopped is tagged ``stopped_early`` and its run asked to stop (``tuning.callbacks.StopRequester``),
so the run ends KILLED at the epoch the scheduler judged. An interrupted sweep's trials are usually torn
down mid-epoch (Tune kills a trial whose ``stop`` waits behind a running ``step``); the sweep then ends
their runs KILLED and they resume from their checkpoints when it runs again. A module of its own: Tune
pickles the trainable, and the sweep's callbacks read the keys it reports.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from ray import tune

from pipeline.config import ExperimentConfig, build_config
from pipeline.record.sweep import mark_complete, record_failure

# Reported with a trial's final figures: Tune's results carry bookkeeping keys even for trials that never reported.
FINISHED_KEY = "sweep/finished"
EPOCH_KEY = "epoch"


def trial_metrics(result: Any, config: ExperimentConfig) -> dict[str, float]:
    """Return a finished pretraining's figures for Tune, named as in MLflow: last epoch's and ``eval/...`` ones."""
    protocol = config.eval.linear.protocol
    metrics = {key: float(value) for key, value in result.metrics.items() if isinstance(value, int | float)}
    for network, figures in (result.evaluation or {}).items():
        metrics.update({f"eval/{protocol}/{network}/{key}": float(value) for key, value in figures.items()})
    return {**metrics, EPOCH_KEY: float(config.train.epochs), FINISHED_KEY: 1.0}


def epoch_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Return one epoch's figures for Tune: the numeric metrics, with the epoch number under ``EPOCH_KEY``."""
    return {key: float(value) for key, value in metrics.items() if isinstance(value, int | float)}


class TrialStream:
    """A pretraining run in a thread, handing out one result per call: each epoch's metrics, then the final figures.

    The run waits after each epoch until the next ``next_result`` call (go on) or ``close`` (end here).
    ``pretrain`` is ``pipeline.runtime.launch.pretrain`` (a parameter so the protocol is tested without Ray).
    """

    def __init__(self, config: ExperimentConfig, pretrain: Callable[..., Any]) -> None:
        self.config = config
        self.results: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.verdicts: queue.Queue[bool] = queue.Queue()
        self.awaiting = False  # the run waits for the verdict on the last epoch handed out
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(pretrain,), name="pretrain", daemon=True)
        self.thread.start()

    def _on_epoch(self, metrics: dict[str, float]) -> bool:
        """Hand one epoch's metrics out and return the verdict on going on (the run's epoch hook).

        The last epoch is not handed out: its figures come with the final result, after the evaluation, so
        no scheduler can stop the trial between its last epoch and its evaluation (ASHA's top rung can sit
        at the last epoch). Once closed, every epoch's verdict is end here.
        """
        if metrics.get(EPOCH_KEY, 0) >= self.config.train.epochs:
            return True
        if self.closed.is_set():
            return False
        self.results.put(("epoch", metrics))
        return self.verdicts.get()

    def _run(self, pretrain: Callable[..., Any]) -> None:
        """Pretrain (and evaluate), queueing the final figures, or the end or error that came instead."""
        from pipeline.runtime.launch import RunInterrupted

        try:
            result = pretrain(self.config, on_epoch=self._on_epoch)
            mark_complete(self.config.tracking, result.mlflow_run_id)
        except RunInterrupted as ended:
            self.results.put(("ended", ended))
        except BaseException as exc:  # noqa: BLE001 - handed to the trial's own thread, which raises it to Tune
            self.results.put(("error", exc))
        else:
            self.results.put(("final", trial_metrics(result, self.config)))

    def next_result(self) -> dict[str, Any]:
        """Return the next result for Tune (letting the run go on past the last epoch handed out); raise its error."""
        if self.awaiting:
            self.verdicts.put(True)
            self.awaiting = False
        kind, payload = self.results.get()
        if kind == "epoch":
            self.awaiting = True
            return epoch_metrics(payload)
        if kind == "final":
            return {**payload, "done": True}
        if kind == "ended":
            raise RuntimeError(f"{payload} before Tune asked it to end")
        record_failure(self.config.tracking, payload)
        raise payload

    def close(self) -> None:
        """Return None once the run has ended: a run waiting after an epoch (or reaching the next) ends there."""
        # The False answers a hook waiting now; the event answers every later one (a worker group restarted
        # from a checkpoint can hand over an epoch again).
        self.closed.set()
        self.verdicts.put(False)
        self.thread.join()


class PretrainTrial(tune.Trainable):
    """Tune's trainable: one grid point's pretraining (and evaluation), one result per epoch, then the final one."""

    def setup(self, config: dict[str, Any]) -> None:
        """Start the trial's run (``config["config"]`` is its ExperimentConfig as JSON-ready data)."""
        from pipeline.runtime.launch import pretrain

        self.stream = TrialStream(build_config(config["config"]), pretrain)

    def step(self) -> dict[str, Any]:
        """Return the run's next result: an epoch's metrics, or the final figures (``done``)."""
        return self.stream.next_result()

    def cleanup(self) -> None:
        """End the run at its epoch boundary (Tune stopped the trial) or wait for its end (it finished)."""
        self.stream.close()

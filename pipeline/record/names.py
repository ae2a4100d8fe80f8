"""Every tag, artifact and search filter the project writes into or reads from MLflow, named once."""

from __future__ import annotations

PARENT_TAG = "mlflow.parentRunId"
# On a run a sweep's scheduler stopped: the epochs it trained. Such a run stays KILLED whatever its processes report.
STOPPED_TAG = "stopped_early"
ERROR_TAG = "error"
# On a finished run whose backbone could not be logged as an MLflow model: why.
MODEL_ERROR_TAG = "model_error"
# On a finished run whose pictures could not be drawn: why.
PICTURE_ERROR_TAG = "picture_error"
# On a trial's child run that an interrupted sweep left unfinished: when, and that a re-run resumes it.
INTERRUPTED_TAG = "interrupted"
# On a sweep trial's run whose pretraining and evaluation both ended (when): the sweep keeps such a trial.
COMPLETE_TAG = "trial_complete"
# On a run read into this store from a sweep's archive: the archive it came from.
IMPORTED_TAG = "imported_from"
RUN_NAME_TAG = "run_name"
RUN_DIR_TAG = "run_dir"
METHOD_TAG = "method"
CHECKPOINT_TAG = "checkpoint"
# train.amp as the training device resolved it (bfloat16, float16 or off): runs of one config can differ in it.
AUTOCAST_TAG = "autocast"
# Tags naming folders on the machine a run trained on; meaningless in another store.
MACHINE_TAGS = (RUN_DIR_TAG, CHECKPOINT_TAG)
SWEEP_TAG = "sweep"
SWEEP_ROLE_TAG = "sweep_role"
PARENT_ROLE = "parent"
GRID_TAG = "grid"
TRIAL_TAG = "trial"
SEED_TAG = "seed"
AXIS_TAG_PREFIX = "axis."

CONFIG_ARTIFACT = "config.yaml"
SUMMARY_ARTIFACT = "summary.json"
# The run's pictures (the test embeddings' 2-D map), as artifacts and in the run folder.
PICTURES_DIR = "pictures"
# On a sweep's parent run: the planned trials (name, axis values, seed), so a report knows the pending ones.
TRIALS_ARTIFACT = "trials.json"


def sweep_parent_filter(sweep: str) -> str:
    """Return the MLflow search filter matching the parent run of the sweep named ``sweep``."""
    return f"tags.{SWEEP_TAG} = '{sweep}' and tags.{SWEEP_ROLE_TAG} = '{PARENT_ROLE}'"


def children_filter(parent_run_id: str, trial: str | None = None) -> str:
    """Return the MLflow search filter of the child runs of ``parent_run_id`` (only trial ``trial``'s if given)."""
    found = f"tags.{PARENT_TAG} = '{parent_run_id}'"
    return found if trial is None else f"{found} and tags.{TRIAL_TAG} = '{trial}'"


# Which protocol produced a recorded accuracy, by the start of its metric name (``final/`` dropped): reports and
# summaries print it beside the number, so that a figure is never read under the wrong protocol.
METRIC_PROTOCOLS = {
    "knn/": "weighted kNN on frozen backbone features of un-augmented images, test against train, during pretraining",
    "online/": "online linear probe: a linear head trained during pretraining on detached backbone features of "
    "un-augmented images, encoder untouched",
    "eval/features/": "offline linear probe (features protocol): trained on frozen features of un-augmented "
    "training images after pretraining",
    "eval/augmented/": "offline linear probe (augmented protocol, the papers'): trained on crops and flips through "
    "the frozen backbone after pretraining",
}


def metric_protocol(metric: str) -> str | None:
    """Return the evaluation protocol behind ``metric`` (e.g. ``final/knn/top1``), or None if it is no accuracy."""
    name = metric.removeprefix("final/")
    return next((text for prefix, text in METRIC_PROTOCOLS.items() if name.startswith(prefix)), None)

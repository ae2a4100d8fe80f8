"""Fault-injection hooks that recovery tests (and anyone checking a cluster's fault tolerance) use.

- ``train.inject_failure_at_epoch: N`` raises InjectedFailure once, on the last rank, at the start of
  epoch N (1-based), so ``ray.max_failures`` and resume can be exercised.
- ``PIPELINE_TEST_PAUSE_AT=<point>:<epoch>`` (environment) makes rank 0 stop once at a named point of
  that epoch (1-based): it writes its process id to ``<run dir>/.paused-<point>-<epoch>`` and sleeps,
  so that a test can signal the driver or kill the worker at exactly that point. Points:
  ``epoch_start``, ``mid_epoch`` (after the epoch's first step), ``knn`` (before the kNN pass) and
  ``after_report`` (checkpoint reported, before the next epoch). Unset, the hooks cost nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

FAILURE_MARKER = ".injected_failure"
PAUSE_ENV = "PIPELINE_TEST_PAUSE_AT"
PAUSE_POINTS = ("epoch_start", "mid_epoch", "knn", "after_report")
PAUSE_SECONDS = 300.0


class InjectedFailure(RuntimeError):
    """Raised once by ``train.inject_failure_at_epoch`` to exercise recovery from a crashed worker."""


def pause_marker(run_dir: Path, point: str, epoch: int) -> Path:
    """Return the file rank 0 writes when it pauses at ``point`` of ``epoch``."""
    return run_dir / f".paused-{point}-{epoch}"


class FaultHooks:
    """The hooks of one worker: where the run lives, its rank and the world size."""

    def __init__(self, run_dir: Path, rank: int, world_size: int, failure_epoch: int | None) -> None:
        self.run_dir, self.rank, self.world_size, self.failure_epoch = run_dir, rank, world_size, failure_epoch
        self.pause_at = self._parse(os.environ.get(PAUSE_ENV, ""))

    @staticmethod
    def _parse(spec: str) -> tuple[str, int] | None:
        """Return the (point, epoch) of a pause spec, None when unset; raise ValueError naming a bad one."""
        if not spec:
            return None
        point, _, epoch = spec.partition(":")
        if point not in PAUSE_POINTS or not epoch.isdigit():
            raise ValueError(f"{PAUSE_ENV}={spec!r}: expected <point>:<epoch> with point one of {PAUSE_POINTS}")
        return point, int(epoch)

    def maybe_fail(self, epoch: int) -> None:
        """Raise InjectedFailure once, on the last rank, at the start of the configured epoch (1-based)."""
        if self.failure_epoch != epoch or self.rank != self.world_size - 1:
            return
        marker = self.run_dir / FAILURE_MARKER
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"failure injected at epoch {epoch}\n")
        raise InjectedFailure(f"injected failure at the start of epoch {epoch} on rank {self.rank}")

    def maybe_pause(self, point: str, epoch: int) -> None:
        """Stop rank 0 once at ``point`` of ``epoch`` (1-based) when PIPELINE_TEST_PAUSE_AT asks for it."""
        if self.pause_at != (point, epoch) or self.rank != 0:
            return
        marker = pause_marker(self.run_dir, point, epoch)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        time.sleep(PAUSE_SECONDS)

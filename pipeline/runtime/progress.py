"""Progress lines from rank 0 to the person who started the run, without Ray's own chatter.

Ray forwards every remote process's output to the driver, prefixed by the process, and mixes in
Ray Train's per-report lines. The driver instead starts Ray with that forwarding off (unless
``--verbose``) and relays the project's own lines through a small queue actor that lives for the
run: the training loop ``say``s a line, the driver prints it as it is.

``ImageProgress`` turns a pass over many images (feature extraction in the evaluation stage and the
clustering actor, the augmented probe's epochs) into such lines: images done, images/s and ETA.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from queue import Empty as LocalEmpty
from typing import Any

POLL_SECONDS = 0.2
# Long passes (a training set of millions of images) get a line this often; a short one only its closing line.
PROGRESS_EVERY_S = 10.0


def format_duration(seconds: float) -> str:
    """Return ``seconds`` as ``1h02m``, ``3m05s`` or ``12s``."""
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ImageProgress:
    """A progress callback for one pass over ``total`` images: call it with the images done so far.

    It says ``<label> done/total images, R img/s, ETA t`` when ``every_s`` seconds have passed since its
    last line, and ``... done in t`` once the pass is complete. The rate counts from construction, so
    loader start-up is part of it, as a person waiting sees it.
    """

    def __init__(
        self,
        say: Callable[[str], None],
        label: str,
        total: int,
        every_s: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.say, self.label, self.total, self.every_s, self.clock = say, label, total, every_s, clock
        self.started = self.last_said = clock()

    def __call__(self, done: int) -> None:
        """Return None after saying a line when ``every_s`` has passed since the last one or the pass is complete."""
        now = self.clock()
        finished = done >= self.total
        if not finished and now - self.last_said < self.every_s:
            return
        self.last_said = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        if finished:
            tail = f"done in {format_duration(elapsed)}"
        else:
            tail = f"ETA {format_duration((self.total - done) / rate)}" if rate > 0 else "ETA unknown"
        self.say(f"{self.label} {done}/{self.total} images, {rate:.0f} img/s, {tail}")


class ProgressReporter:
    """Worker side: send a line to the driver's relay, or print it when there is no relay."""

    def __init__(self, queue: Any | None) -> None:
        self.queue = queue

    def say(self, line: str) -> None:
        """Return None after handing ``line`` to the relay (printing it here when the relay is gone or absent)."""
        if self.queue is not None:
            try:
                self.queue.put_nowait(line)
                return
            except Exception:  # noqa: BLE001 - a lost relay must never stop training; the line goes to the log
                self.queue = None
        print(line, flush=True)


class ProgressRelay:
    """Driver side: a run-scoped queue actor and a thread printing what the workers put in it."""

    def __init__(self) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="progress-relay", daemon=True)
        self._thread.start()

    def _print_waiting(self, timeout: float | None) -> bool:
        """Return whether a line was printed after waiting up to ``timeout`` seconds for one."""
        from ray.util.queue import Empty

        try:
            line = self.queue.get(block=timeout is not None, timeout=timeout)
        except (Empty, LocalEmpty):
            return False
        print(line, flush=True)
        return True

    def _pump(self) -> None:
        """Print lines as they arrive until stopped."""
        while not self._stop.is_set():
            try:
                self._print_waiting(POLL_SECONDS)
            except Exception:  # noqa: BLE001 - the queue actor is gone (run torn down); nothing left to relay
                return

    def close(self) -> None:
        """Return None after printing every line still queued and ending the queue actor."""
        self._stop.set()
        self._thread.join()
        try:
            while self._print_waiting(None):
                pass
        finally:
            self.queue.shutdown(force=True)

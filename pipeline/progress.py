"""Progress lines from rank 0 to the person who started the run, without Ray's own chatter.

Ray forwards every remote process's output to the driver, prefixed by the process, and mixes in
Ray Train's per-report lines. The driver instead starts Ray with that forwarding off (unless
``--verbose``) and relays the project's own lines through a small queue actor that lives for the
run: the training loop ``say``s a line, the driver prints it as it is.
"""

from __future__ import annotations

import threading
from queue import Empty as LocalEmpty
from typing import Any

POLL_SECONDS = 0.2


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

"""Progress lines and epoch figures from rank 0 to the driver, and the driver's word on going on.

Ray forwards every remote process's output to the driver, prefixed by the process, and mixes in
Ray Train's per-report lines. The driver instead starts Ray with that forwarding off (unless
``--verbose``) and relays the project's own lines through a small actor that lives for the run
(``RunRelay``): the training loop ``say``s a line, the driver prints it as it is.

The same relay carries each epoch's figures to the driver's ``on_epoch`` hook (a sweep trial hands
them to Tune). A run started with a hook is steered: after each epoch rank 0 waits for the hook's
verdict, go on or end here, so a scheduler's decision lands exactly at the epoch it judged. Anyone
holding the run's name may ``request_stop`` it: a run that ends on a verdict after such a request
was stopped early; one that ends without was interrupted and resumes.

``ImageProgress`` turns a pass over many images (feature extraction in the evaluation stage and the
clustering actor, the augmented probe's epochs) into such lines: images done, images/s and ETA.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

POLL_SECONDS = 0.2
# How often a steered rank 0 asks the relay for its verdict while it waits.
VERDICT_POLL_S = 0.05
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


@dataclass(frozen=True)
class EpochFigures:
    """One finished epoch's metrics, from rank 0 to the driver's ``on_epoch`` hook."""

    epoch: int
    metrics: dict[str, float]


# The driver's hook: called with each epoch's figures, it returns whether the run goes on after that epoch.
EpochHook = Callable[[dict[str, float]], bool]


class RunRelay:
    """The relay's state: lines and epoch figures waiting for the driver, the verdicts, and any stop request.

    Made a Ray actor for a run on Ray Train (named after the run, so ``request_stop`` finds it); a local run
    uses it as a plain object.
    """

    def __init__(self) -> None:
        self.items: list[str | EpochFigures] = []
        self.verdicts: dict[int, bool] = {}
        self.stop_asked = False

    def put(self, item: str | EpochFigures) -> None:
        """Queue a line or an epoch's figures for the driver."""
        self.items.append(item)

    def take(self) -> list[str | EpochFigures]:
        """Return everything queued since the last call, oldest first."""
        items, self.items = self.items, []
        return items

    def decide(self, epoch: int, go_on: bool) -> None:
        """Record the driver's verdict on the run after ``epoch``."""
        self.verdicts[epoch] = go_on

    def verdict(self, epoch: int) -> bool | None:
        """Return the verdict after ``epoch``: True go on, False end here, None not given yet."""
        return self.verdicts.get(epoch)

    def request_stop(self) -> None:
        """Record that the run is asked to stop early (its next end-here verdict is a stop, not an interrupt)."""
        self.stop_asked = True

    def stop_requested(self) -> bool:
        """Return whether the run was asked to stop early."""
        return self.stop_asked


def relay_name(run_name: str) -> str:
    """Return the Ray name of a run's relay actor."""
    from pipeline.runtime.resources import actor_name

    return actor_name(run_name, "relay")


def request_stop(run_name: str) -> bool:
    """Return whether the running run ``run_name`` was found and asked to stop early (False: it has no relay)."""
    import ray

    try:
        relay = ray.get_actor(relay_name(run_name))
    except ValueError:
        return False
    ray.get(relay.request_stop.remote())
    return True


class ProgressReporter:
    """Worker side of the relay: say a line, hand over an epoch's figures, wait for the verdict.

    ``relay`` is the run's relay actor, a ``RunRelay`` of this process (a steered local run), or None (print here).
    """

    def __init__(self, relay: Any | None) -> None:
        self.relay = relay

    def call(self, method: str, *args: Any) -> Any:
        """Return the relay's ``method(*args)``, calling through Ray when the relay is an actor."""
        if isinstance(self.relay, RunRelay):
            return getattr(self.relay, method)(*args)
        import ray

        return ray.get(getattr(self.relay, method).remote(*args))

    def say(self, line: str) -> None:
        """Return None after handing ``line`` to the relay (printing it here when the relay is gone or absent)."""
        if self.relay is not None:
            try:
                self.call("put", line)
                return
            except Exception:  # noqa: BLE001 - a lost relay must never stop training; the line goes to the log
                self.relay = None
        print(line, flush=True)

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Hand epoch ``epoch``'s figures to the driver's hook (nothing without a relay, or once it is lost)."""
        if self.relay is not None:
            try:
                self.call("put", EpochFigures(epoch, dict(metrics)))
            except Exception:  # noqa: BLE001 - a lost relay must never stop training; nobody is left to steer it
                self.relay = None

    def verdict(self, epoch: int) -> bool:
        """Return the driver's verdict after ``epoch`` (True: go on), waiting for it; True without a relay."""
        if self.relay is None:
            return True
        while (go_on := self.call("verdict", epoch)) is None:
            time.sleep(VERDICT_POLL_S)
        return bool(go_on)


class ProgressRelay:
    """Driver side: the run's relay (an actor, or local), and a thread printing lines and judging epochs.

    Without ``on_epoch`` every epoch's verdict is go on; with it, the hook's answer (an exception in the
    hook ends the run after that epoch, as an interrupt would).
    """

    def __init__(self, run_name: str | None = None, on_epoch: EpochHook | None = None, local: bool = False) -> None:
        self.on_epoch = on_epoch
        self.verdicts: dict[int, bool] = {}
        if local:
            self.handle: Any = RunRelay()  # what workers build their ProgressReporter on
        else:
            import ray

            options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0}
            if run_name is not None:
                options["name"] = relay_name(run_name)
                with contextlib.suppress(ValueError):  # ValueError: no namesake from an earlier attempt, the usual case
                    ray.kill(ray.get_actor(options["name"]), no_restart=True)
            self.handle = ray.remote(RunRelay).options(**options).remote()
        self.reporter = ProgressReporter(self.handle)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="progress-relay", daemon=True)
        self._thread.start()

    def _handle(self, items: list[str | EpochFigures]) -> None:
        """Print the lines and pass each epoch's figures to the hook, recording its verdict."""
        for item in items:
            if isinstance(item, str):
                print(item, flush=True)
                continue
            if item.epoch in self.verdicts:
                # A worker group restarted from a checkpoint retrains an epoch the hook has judged already.
                self.reporter.call("decide", item.epoch, self.verdicts[item.epoch])
                continue
            go_on = True
            if self.on_epoch is not None:
                try:
                    go_on = bool(self.on_epoch(item.metrics))
                except Exception as exc:  # noqa: BLE001 - a failing hook ends the run at this epoch, said here
                    print(f"warning: the epoch hook failed ({exc}); the run ends after epoch {item.epoch}", flush=True)
                    go_on = False
            self.verdicts[item.epoch] = go_on
            self.reporter.call("decide", item.epoch, go_on)

    def _pump(self) -> None:
        """Handle what arrives every ``POLL_SECONDS`` until stopped."""
        while not self._stop.wait(POLL_SECONDS):
            try:
                self._handle(self.reporter.call("take"))
            except Exception:  # noqa: BLE001 - the relay actor is gone (run torn down); nothing left to relay
                return

    def stop_requested(self) -> bool:
        """Return whether somebody asked the run to stop early (False once the relay is gone)."""
        try:
            return bool(self.reporter.call("stop_requested"))
        except Exception:  # noqa: BLE001 - a relay that died cannot have recorded a request
            return False

    def ended_early(self, epochs_done: int) -> bool:
        """Return whether the hook's verdict after ``epochs_done`` ended the run there."""
        try:
            return self.reporter.call("verdict", epochs_done) is False
        except Exception:  # noqa: BLE001 - a relay that died gave no verdict
            return False

    def close(self) -> None:
        """Return None after handling everything still queued and ending the relay actor."""
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):  # the relay actor is already gone: nothing left to hand on
            self._handle(self.reporter.call("take"))
        if not isinstance(self.handle, RunRelay):
            import ray

            ray.kill(self.handle, no_restart=True)

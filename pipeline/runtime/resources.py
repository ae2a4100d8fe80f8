"""Run-scoped Ray actors: created by the driver once per run from the method's declarations, always torn down.

The driver owns them, so they outlive a worker-group restart (``ray.max_failures``) and die with
the run whether it finishes, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import inspect
from types import TracebackType
from typing import Any

import ray

from pipeline.methods.context import ActorSpec


def required_resources(specs: dict[str, ActorSpec]) -> dict[str, float]:
    """Return the CPUs and GPUs the declared actors reserve together."""
    return {
        "CPU": sum(spec.num_cpus for spec in specs.values()),
        "GPU": sum(spec.num_gpus for spec in specs.values()),
    }


def actor_name(run_name: str, key: str) -> str:
    """Return the Ray name of a run's actor: unique per run, so concurrent runs (sweep trials) never share one."""
    return f"{run_name}/{key}"


class RunResources:
    """The actors of one run: ``start`` creates them and returns their handles; ``close`` kills every one.

    An actor class whose constructor takes ``progress`` receives the run's progress relay there.
    """

    def __init__(self, specs: dict[str, ActorSpec], run_name: str, progress: Any | None = None) -> None:
        self.specs = dict(specs)
        self.run_name = run_name
        self.progress = progress
        self.handles: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        """Return ``{name: actor handle}`` after creating every declared actor (a leftover namesake is replaced)."""
        for key, spec in self.specs.items():
            name = actor_name(self.run_name, key)
            with contextlib.suppress(ValueError):  # ValueError: no actor of that name, the usual case
                ray.kill(ray.get_actor(name), no_restart=True)
            remote_class = ray.remote(spec.actor_class).options(
                name=name,
                num_cpus=spec.num_cpus,
                num_gpus=spec.num_gpus,
                max_restarts=0,
                max_concurrency=spec.max_concurrency,
                # Out of any enclosing placement group: a sweep trial's captures what it creates, and its own
                # bundle holds no CPU; the sweep counts these actors against the cluster, where they go.
                scheduling_strategy="DEFAULT",
            )
            kwargs = dict(spec.kwargs)
            if self.progress is not None and "progress" in inspect.signature(spec.actor_class).parameters:
                kwargs["progress"] = self.progress
            self.handles[key] = remote_class.remote(*spec.args, **kwargs)
        return dict(self.handles)

    def close(self) -> None:
        """Return None after killing every actor this run created."""
        for handle in self.handles.values():
            ray.kill(handle, no_restart=True)
        self.handles.clear()

    def __enter__(self) -> dict[str, Any]:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

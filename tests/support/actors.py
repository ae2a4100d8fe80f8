"""Which named Ray actors are alive (run-scoped actors must not outlive their run)."""

from __future__ import annotations

import time

import ray


def alive_actor_names() -> set[str]:
    """Return the names of the named actors that are alive."""
    return {entry["name"] if isinstance(entry, dict) else entry for entry in ray.util.list_named_actors()}


def wait_until_gone(name: str, seconds: float = 10.0) -> bool:
    """Return whether the named actor ``name`` is gone, polling for up to ``seconds`` (kills are asynchronous)."""
    deadline = time.monotonic() + seconds
    while name in alive_actor_names() and time.monotonic() < deadline:
        time.sleep(0.2)
    return name not in alive_actor_names()

"""Ray agents left by a SIGKILLed driver's local Ray are found and stopped; the agents of a live Ray are not touched.

After the driver dies, its raylet and GCS die with it, but ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``
linger (about a minute measured here) trying to report to the dead GCS. A new local start stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.runtime.cluster import RAY_AGENT_TITLES, orphaned_ray_agents, process_title, stop_orphaned_ray_agents

START_RAY = (
    "import ray, time; ray.init(num_cpus=1, object_store_memory=80 * 1024 * 1024, include_dashboard=False); "
    "print('up', flush=True); time.sleep(300)"
)


def agents_in_group(pgid: int) -> set[int]:
    """Return the ids of the running Ray agent processes in the process group ``pgid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            if int(fields[2]) == pgid and fields[0] != "Z" and process_title(pid) in RAY_AGENT_TITLES:
                found.add(pid)
    return found


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_agents_of_a_killed_local_ray_are_stopped_and_live_ones_kept() -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-c", START_RAY], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert driver.stdout.readline().strip() == "up"
        wait_for(lambda: len(agents_in_group(driver.pid)) == len(RAY_AGENT_TITLES), 60, "the agents never started")
        agents = agents_in_group(driver.pid)
        assert not agents & set(orphaned_ray_agents()), "an agent of a live Ray was taken for an orphan"

        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_for(lambda: agents <= set(orphaned_ray_agents()), 20, "the killed driver's agents were never orphaned")
        started = time.monotonic()
        assert agents <= set(stop_orphaned_ray_agents())
        assert not agents_in_group(driver.pid), "orphaned agents survived the cleanup"
        # Left alone they live about a minute more: the cleanup took seconds.
        assert time.monotonic() - started < 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)

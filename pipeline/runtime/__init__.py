"""Running a run: the driver, Ray connection and placement, run-scoped actors, worker sessions and progress lines."""

"""Running a run: the driver, Ray connection and placement, run-scoped actors and progress lines."""

"""Training: the per-worker loop, one optimiser step, schedules, checkpoints, compilation and fault hooks."""

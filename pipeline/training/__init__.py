"""Training: the per-worker loop and its sessions, one step, schedules, checkpoints, compilation, fault hooks."""

"""Running a job: the Ray Train driver, the per-worker loop and the DeepSpeed engine glue."""

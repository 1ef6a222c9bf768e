"""Names inside a train run folder, shared by the driver, the workers and the result readers (no torch)."""

CHECKPOINT_SUBDIR = "checkpoint"  # the Hugging Face/DeepSpeed checkpoint inside each Ray checkpoint
INJECT_FAULT_ENV = "PLATYPUS_RAY_INJECT_FAULT_AT_STEP"  # the last rank raises once at this step (fault drills)

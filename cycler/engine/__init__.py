"""Running a compiled protocol on one channel: the runner, its states, safety checks, resuming."""

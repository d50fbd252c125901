"""The run directory's one owner: its layout (every file name in it), the lock that gives it
to one job, and the checkpoints kept in it."""

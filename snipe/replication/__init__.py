"""Restart and replication of tasks: I/O-free cores (takeover) and the sealing of task secrets."""

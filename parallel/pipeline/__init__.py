"""Pipeline parallelism: schedule tables (schedule.py) and the SPMD executor that runs them (executor.py)."""

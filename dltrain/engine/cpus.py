"""How many cores this process may use (no torch here: a sweep's parent asks before importing it)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def jobs_at_once(n_jobs: int) -> int:
    """How many jobs a launcher's n_jobs runs at once, joblib's way: N > 0 is N, -1 is every usable
    core, -2 all but one, ... (at least one)."""
    return max(1, usable_cpus() + 1 + n_jobs if n_jobs < 0 else n_jobs)

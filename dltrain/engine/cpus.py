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


class CpuLoad:
    """How many cores other processes keep busy, measured between `CpuLoad()` and `.busy_elsewhere()`:
    the machine's busy time (/proc/stat) less this process's own CPU time, over the wall time
    between. None where /proc/stat is missing (not Linux) or too little time passed to tell."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, int] | None:
        import time

        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
                cpus = sum(1 for line in f if line.startswith("cpu"))
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user .. steal, in seconds
        own = sum(os.times()[:2])
        return time.monotonic(), busy, own, cpus

    def busy_elsewhere(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[0] - self.start[0] < 0.05:
            return None
        wall = end[0] - self.start[0]
        return max(0.0, (end[1] - self.start[1]) - (end[2] - self.start[2])) / wall

    def free_cores(self) -> int | None:
        """Usable cores that no other process was using (at least 1), or None if it cannot tell."""
        others = self.busy_elsewhere()
        if others is None or self.start is None:
            return None
        return max(1, min(usable_cpus(), round(self.start[3] - others)))  # start[3]: the machine's cores

"""How many cores this process may use, how busy the others keep them, and when the command
started (no torch here: a sweep's parent asks before importing it)."""

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


# Processes this one started to work for it (the plot process): their CPU time counts as this
# process's own, not as another process's load.
HELPERS: set[int] = set()


def _stat_seconds(pid: int | str, *fields: int) -> float:
    """The sum of /proc/PID/stat's clock-tick `fields` (numbered from 3, after the command name,
    which may hold spaces), in seconds; OSError, ValueError or IndexError where unreadable."""
    with open(f"/proc/{pid}/stat") as f:
        values = f.read().rpartition(")")[2].split()
    return sum(int(values[i - 3]) for i in fields) / os.sysconf("SC_CLK_TCK")


def helpers_cpu_seconds() -> float:
    """The CPU time (user + system) the HELPERS have used so far (for one that has exited, what it
    had used when last seen)."""
    for pid in list(HELPERS):
        try:
            _SEEN[pid] = _stat_seconds(pid, 14, 15)  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return sum(_SEEN.values())


_SEEN: dict[int, float] = {}


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
        own = sum(os.times()[:2]) + helpers_cpu_seconds()
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


# When the command began (time.monotonic()), if `mark_command_start` was called: the `dltrain`
# command marks it as it starts, so a run can report the time from the command to its first step.
_COMMAND_STARTED: float | None = None


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat against the boot clock, to the
    kernel's tick of 10 ms), or None where that cannot be read."""
    import time

    try:
        return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - _stat_seconds("self", 22))  # starttime, since boot
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def mark_command_start() -> None:
    """The `dltrain` command starts: from the process's own start where it can be read (the
    interpreter's start-up and imports count), else from now."""
    import time

    global _COMMAND_STARTED
    _COMMAND_STARTED = time.monotonic() - (process_age() or 0.0)


def command_started() -> float | None:
    return _COMMAND_STARTED

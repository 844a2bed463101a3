"""A 16-job grid on digits: launcher=joblib against the same grid run sequentially (target ratio <= 0.55).

    python benchmarks/sweep_parallel.py [--epochs 30] [--cores 2] [--repeat 3] [--one-thread]

Both sweeps run as `dltrain -m ...` commands, in the same call, one after the other; the wall
time of each whole command is measured (start-up, the check of all 16 combinations, the jobs and
the summary). With --cores N both are pinned to the first N cores (Linux), so the result does
not depend on how many the machine has. Sequential jobs use torch's default threads; joblib runs
one job per core with one torch thread each.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["optim=adam,nesterov", "optim.lr=0.001,0.003", "model.dropout=0.0,0.2", "model.layers=2,3"]  # the default MLP, 30 epochs


def run(sweep_dir: Path, epochs: int, extra: list[str], env: dict) -> float:
    cmd = [sys.executable, "-m", "dltrain", "-m", *GRID, f"trainer.max_epochs={epochs}", "trainer.progress=none", *extra, f"hydra.sweep.dir={sweep_dir}"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    seconds = time.perf_counter() - t
    rows = list(csv.DictReader((sweep_dir / "sweep.csv").open()))
    assert len(rows) == 16 and all(r["status"] == "completed" for r in rows), rows
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per job (30: the default trainer)")
    parser.add_argument("--cores", type=int, default=2, help="pin both sweeps to this many cores (0: no pinning)")
    parser.add_argument("--one-thread", action="store_true", help="also time the sequential grid with one torch thread")
    parser.add_argument("--repeat", type=int, default=1, help="run each sweep this many times, alternating; report medians")
    args = parser.parse_args()
    if args.cores and hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, available[: args.cores])  # inherited by the dltrain processes
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {**os.environ, "COLUMNS": "200"}
    load = os.getloadavg()[0]
    times: dict[str, list[float]] = {"sequential": [], "joblib": [], "one_thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):  # alternate, so a change in the machine's load hits both
            times["sequential"].append(run(Path(tmp) / f"sequential-{i}", args.epochs, [], env))
            times["joblib"].append(run(Path(tmp) / f"joblib-{i}", args.epochs, ["launcher=joblib"], env))
            if args.one_thread:  # for reference: sequential jobs on one core each
                times["one_thread"].append(run(Path(tmp) / f"one-thread-{i}", args.epochs, [], {**env, "OMP_NUM_THREADS": "1"}))
    sequential, parallel = statistics.median(times["sequential"]), statistics.median(times["joblib"])
    ratio = parallel / sequential
    print(f"16-job grid on digits ({' '.join(GRID)}), {args.epochs} epochs per job, {cores} cores, "
          f"median of {args.repeat}, load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"sequential:                  {sequential:6.1f} s  {_all(times['sequential'])}")
    print(f"launcher=joblib:             {parallel:6.1f} s  {_all(times['joblib'])}  ratio {ratio:.2f} (target <= 0.55)")
    if times["one_thread"]:
        one = statistics.median(times["one_thread"])
        print(f"sequential, 1 torch thread:  {one:6.1f} s  {_all(times['one_thread'])}  joblib ratio to it {parallel / one:.2f}")
    return 0 if ratio <= 0.55 else 1


def _all(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in values) + ")" if len(values) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())

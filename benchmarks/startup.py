"""From command to result: a 1-epoch default run against importing torch and making an Adam optimizer.

    python benchmarks/startup.py [--rounds 7] [--cores 2]

Each round runs, one after the other (interleaved, so a change in the machine's speed hits all):

    baseline   python -c "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"
    dltrain    dltrain trainer.max_epochs=1 (the default MLP on digits, into a fresh folder)

and reports the medians of the whole-process wall times, and of the run's own `startup_seconds`
(summary.json: from the command's start to the end of its first optimizer step).

Targets (issue 15): whole process <= baseline + 1.0 s; first step <= baseline + 0.5 s.
For reference it also times the baseline without the interpreter's teardown (os._exit at the
end), which `dltrain` skips once everything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "import torch; torch.optim.Adam([torch.zeros(1, requires_grad=True)])"


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cores", type=int, default=2, help="pin every command to this many cores (0: no pinning)")
    args = parser.parse_args()
    if args.cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])  # inherited by the commands
    exe = shutil.which("dltrain") or str(Path(sys.executable).with_name("dltrain"))
    env = {**os.environ, "COLUMNS": "200"}
    times: dict[str, list[float]] = {"baseline": [], "baseline_no_teardown": [], "dltrain": [], "startup": []}
    with tempfile.TemporaryDirectory() as tmp:
        timed([sys.executable, "-c", BASELINE], env)  # warm the file cache
        for i in range(args.rounds):
            times["baseline"].append(timed([sys.executable, "-c", BASELINE], env))
            run_dir = Path(tmp) / f"run-{i}"
            times["dltrain"].append(timed([exe, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"], env))
            times["startup"].append(json.loads((run_dir / "summary.json").read_text())["startup_seconds"])
            times["baseline_no_teardown"].append(timed([sys.executable, "-c", BASELINE + "; import os; os._exit(0)"], env))
    m = {k: statistics.median(v) for k, v in times.items()}
    print(f"medians of {args.rounds} interleaved rounds, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores")
    print(f"  baseline (import torch, Adam):        {m['baseline']:.2f} s   (without its teardown: {m['baseline_no_teardown']:.2f} s)")
    print(f"  dltrain, 1 epoch, whole process:      {m['dltrain']:.2f} s   baseline {m['dltrain'] - m['baseline']:+.2f} s (target <= +1.0), ratio {m['dltrain'] / m['baseline']:.2f}")
    print(f"  dltrain, command to first step:       {m['startup']:.2f} s   baseline {m['startup'] - m['baseline']:+.2f} s (target <= +0.5)")
    ok = m["dltrain"] <= m["baseline"] + 1.0 and m["startup"] <= m["baseline"] + 0.5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""How fast `dltrain --help` answers (target < 0.5 s), against a bare `python -c pass`.

    python benchmarks/cli_startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def timed(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    exe = shutil.which("dltrain") or str(__import__("pathlib").Path(sys.executable).with_name("dltrain"))
    python = timed([sys.executable, "-c", "pass"], args.runs)
    help_ = timed([exe, "--help"], args.runs)
    print(f"python -c pass:  median {python * 1000:.0f} ms")
    print(f"dltrain --help:  median {help_ * 1000:.0f} ms  (target < 500 ms; ratio to bare python {help_ / python:.2f})")
    return 0 if help_ < 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())

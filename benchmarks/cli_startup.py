"""How fast `dltrain --help` answers, against a bare `python -c pass` timed in the same run.

Target: under 50 ms above bare Python (and under 0.5 s in all). The two commands alternate,
round by round; medians are reported.

    python benchmarks/cli_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    exe = shutil.which("dltrain") or str(Path(sys.executable).with_name("dltrain"))
    timed([exe, "--help"])  # warm the file cache
    bare, help_ = [], []
    for _ in range(args.runs):
        bare.append(timed([sys.executable, "-c", "pass"]))
        help_.append(timed([exe, "--help"]))
    b, h = statistics.median(bare), statistics.median(help_)
    print(f"python -c pass:  median {b * 1000:.0f} ms")
    print(f"dltrain --help:  median {h * 1000:.0f} ms: {(h - b) * 1000:.0f} ms above bare python (target < 50 ms), ratio {h / b:.2f}")
    return 0 if h - b < 0.05 and h < 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())

"""What reading your own data costs, against the libraries underneath, timed in the same run:

1. a generated table (default 1,000,000 rows, 30 feature columns: 24 numeric with a few gaps, 6
   strings; a string target), `data=table` reading, imputing, encoding and splitting it, cold
   (nothing cached) and warm (the parsed dataset cached), against `pandas.read_csv` of the same
   file alone (pyarrow engine, as data=table uses);
2. a folder of generated 28x28 grey PNGs (default 60,000 in 10 class folders), `data=image_folder`
   decoding them, cold and warm, against a bare Pillow decode loop (`np.asarray(Image.open(p))`
   per file, one thread).

Each case is the median of `--rounds` interleaved rounds; the files are written once, first.

    python benchmarks/own_data.py [--rows 1000000] [--images 60000] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_table(path: Path, rows: int, seed: int = 0) -> None:
    import pandas as pd

    rng = np.random.default_rng(seed)
    numeric = {f"n{i}": rng.normal(size=rows).astype(np.float32) for i in range(24)}
    for i in range(0, 24, 6):
        numeric[f"n{i}"][rng.random(rows) < 0.01] = np.nan  # a few gaps to impute
    strings = {f"s{i}": rng.choice([f"v{j}" for j in range(3 + 2 * i)], rows) for i in range(6)}
    score = numeric["n1"] + (strings["s0"] == "v0")
    frame = pd.DataFrame({**numeric, **strings, "label": np.where(score > 0.3, "yes", "no")})
    frame.to_csv(path, index=False, float_format="%.5g")


def make_images(root: Path, count: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
    base = (rng.random((10, 28, 28)) * 255).astype(np.uint8)
    for i in range(count):
        c = i % 10
        noisy = np.clip(base[c].astype(np.int16) + rng.integers(-40, 40, (28, 28)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / str(c) / f"{i:06d}.png")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import pandas as pd
    from PIL import Image

    from dltrain.data import DATASETS

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = timed(lambda: make_table(tmp / "table.csv", args.rows))
        print(f"wrote {args.rows:,} rows x 31 columns ({(tmp / 'table.csv').stat().st_size / 2**20:.0f} MiB) in {t:.1f} s")
        t = timed(lambda: make_images(tmp / "images", args.images))
        print(f"wrote {args.images:,} PNGs in {t:.1f} s")
        files = sorted((tmp / "images").rglob("*.png"))

        def cold(params: dict):
            with tempfile.TemporaryDirectory() as cache:
                os.environ["DLTRAIN_CACHE"] = cache
                return DATASETS.build(params)

        table = {"name": "table", "path": str(tmp / "table.csv"), "target": "label"}
        folder = {"name": "image_folder", "root": str(tmp / "images")}
        warm_cache = tempfile.mkdtemp()

        def warm(params: dict):
            os.environ["DLTRAIN_CACHE"] = warm_cache
            return DATASETS.build(params)

        warm(table), warm(folder)  # fill the warm cache
        cases: dict[str, list[float]] = {k: [] for k in ("pandas.read_csv", "data=table cold", "data=table cached", "Pillow loop", "data=image_folder cold", "data=image_folder cached")}
        for _ in range(args.rounds):
            cases["pandas.read_csv"].append(timed(lambda: pd.read_csv(tmp / "table.csv", engine="pyarrow")))
            cases["data=table cold"].append(timed(lambda: cold(table)))
            cases["data=table cached"].append(timed(lambda: warm(table)))
            cases["Pillow loop"].append(timed(lambda: [np.asarray(Image.open(p)) for p in files]))
            cases["data=image_folder cold"].append(timed(lambda: cold(folder)))
            cases["data=image_folder cached"].append(timed(lambda: warm(folder)))
        med = {k: statistics.median(v) for k, v in cases.items()}
        print(f"\nmedians of {args.rounds} interleaved rounds, torch threads {args.threads}, {os.cpu_count()} cores")
        for k, v in med.items():
            print(f"  {k:26s} {v:8.2f} s   ({', '.join(f'{x:.2f}' for x in cases[k])})")
        print(f"table: data=table cold / pandas.read_csv = {med['data=table cold'] / med['pandas.read_csv']:.2f}; cached / read_csv = {med['data=table cached'] / med['pandas.read_csv']:.2f}")
        n = len(files)
        print(f"images: Pillow loop {n / med['Pillow loop']:,.0f} images/s; data=image_folder cold {n / med['data=image_folder cold']:,.0f} images/s "
              f"(ratio {med['Pillow loop'] / med['data=image_folder cold']:.2f}); cached {n / med['data=image_folder cached']:,.0f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

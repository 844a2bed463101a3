"""k-fold cross-validation: `dltrain cv k=5 [overrides]` and its summary.

The command is a sweep over `cv.fold=0..k-1` with `cv.k=k` (so `launcher=joblib` runs the folds
in parallel, like any sweep), into a cv directory (`cv/DATE/TIME/`, one run directory per fold).
Each fold trains on k-1 folds of the training and validation examples and validates on the one
left (data/base.py `fold_split`: scikit-learn's StratifiedKFold); the test split is held out of
every fold. When the sweep ends, `summarize_cv` writes `cv.csv` (one row per fold, then the mean
and the standard deviation), `cv.json`, `cv.png` and prints a table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from dltrain.errors import UserError

CV_DIR = "cv/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}"
SWEEP_SYNTAX = (",", "range(", "choice(", "interval(", "glob(")


def cv_argv(argv: list[str]) -> list[str]:
    """`dltrain cv [k=N] [overrides]` as the sweep command it stands for (k defaults to 5)."""
    k, rest = 5, []
    for arg in argv:
        if arg in ("-m", "--multirun"):
            continue  # it is a sweep already
        key, sep, value = arg.partition("=")
        if sep and key == "k":
            try:
                k = int(value)
            except ValueError:
                k = 0
            if k < 2:
                raise UserError(f"k={value} is not allowed; allowed: a whole number of folds, 2 or more")
        elif sep and key.lstrip("+~") in ("cv.k", "cv.fold"):
            raise UserError(f"{arg}: `dltrain cv` runs every fold itself (k=N sets how many); to train one fold: dltrain cv.k=5 cv.fold=2")
        elif sep and key.lstrip("+~").split("/")[0] == "hparams_search" or key == "sweep.resume":
            raise UserError(f"{arg}: `dltrain cv` cross-validates one configuration; allowed: plain overrides")
        elif sep and not key.startswith("hydra.") and not value.startswith("[") and any(s in value for s in SWEEP_SYNTAX):
            raise UserError(f"{arg}: `dltrain cv` cross-validates one configuration, not a grid; allowed: one value per key (run cv once per setting)")
        else:
            rest.append(arg)
    if not any(a.startswith("hydra.sweep.dir=") for a in rest):
        rest.append(f"hydra.sweep.dir={CV_DIR}")
    return ["-m", f"cv.k={k}", "cv.fold=" + ",".join(str(i) for i in range(k)), *rest]


def _fold_of(run_dir: Path) -> tuple[int, int] | None:
    """(k, fold) from a fold run's config.yaml (or Hydra's copy of it), or None."""
    import yaml

    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        try:
            cv = (yaml.safe_load(path.read_text()) or {}).get("cv") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(cv.get("k"), int) and cv["k"] >= 2 and isinstance(cv.get("fold"), int):
            return cv["k"], cv["fold"]
    return None


def collect_folds(cv_dir: Path) -> tuple[int, list[dict[str, Any]]] | None:
    """(k, one record per fold run: fold, status, run_dir and its metrics: the best epoch's val_*
    and the test split's test_*), or None where `cv_dir` holds no fold runs."""
    folds, ks = [], set()
    for p in sorted(cv_dir.iterdir()) if cv_dir.is_dir() else []:
        found = _fold_of(p) if p.is_dir() and not p.name.startswith(".") else None
        if found is None:
            continue
        ks.add(found[0])
        record: dict[str, Any] = {"fold": found[1], "status": "incomplete", "run_dir": str(p)}
        try:
            summary = json.loads((p / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
        if summary:
            record["status"] = "completed"
            record.update({k: v for k, v in (summary.get("best") or {}).items() if k.startswith("val_")})
            record.update({f"test_{k}": v for k, v in (summary.get("test") or {}).items()})
        folds.append(record)
    if not folds:
        return None
    if len(ks) > 1:
        raise UserError(f"{cv_dir} holds runs of different cv.k ({', '.join(map(str, sorted(ks)))}): one cross-validation per directory")
    return ks.pop(), sorted(folds, key=lambda r: r["fold"])


def fold_means(cv_dir: str | Path, console=None) -> dict[str, Any]:
    """Summarise the folds in `cv_dir` (summarize_cv) as a run's summary would hold them: `best`
    the folds' mean validation metrics (cv_val_*), `test` their mean test metrics, `folds` their
    run directories. What a cv objective and a cv recipe's check read."""
    result = summarize_cv(cv_dir, console) or {"mean": {}}
    mean = result["mean"]
    return {
        "best": {f"cv_{m}": v for m, v in mean.items() if m.startswith("val_")},
        "test": {m.removeprefix("test_"): v for m, v in mean.items() if m.startswith("test_")},
        "folds": [f["run_dir"] for f in result.get("folds", [])],
    }


def summarize_cv(cv_dir: str | Path, console=None) -> dict[str, Any] | None:
    """Write cv.csv, cv.json, cv.png and report.html for a cv directory and print its table; None if it holds no folds."""
    import numpy as np

    from dltrain.files import atomic_write

    cv_dir = Path(cv_dir)
    found = collect_folds(cv_dir)
    if found is None:
        return None
    k, folds = found
    done = [f for f in folds if f["status"] == "completed"]
    metrics = sorted({m for f in done for m in f if m.startswith(("val_", "test_"))}, key=lambda m: (not m.startswith("val_"), m))
    mean, std = {}, {}
    for m in metrics:
        values = np.array([f[m] for f in done if isinstance(f.get(m), (int, float))], dtype=np.float64)
        if len(values):
            mean[m], std[m] = float(values.mean()), float(values.std())  # numpy's (population) std, as scikit-learn's cv_results_
    result = {"k": k, "completed": len(done), "folds": folds, "mean": mean, "std": std}

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["fold", "status", *metrics, "run_dir"], lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(folds)
    writer.writerow({"fold": "mean", "status": f"{len(done)}/{k}", **mean})
    writer.writerow({"fold": "std", "status": f"{len(done)}/{k}", **std})
    atomic_write(cv_dir / "cv.csv", buffer.getvalue().encode())
    atomic_write(cv_dir / "cv.json", (json.dumps(result, indent=2) + "\n").encode())
    _plot(cv_dir / "cv.png", folds, [m for m in metrics if m.startswith("val_")], mean, std, k)
    from dltrain.report import esc, folder_report

    means = ", ".join(f"{m} {mean[m]:.4g} ± {std[m]:.2g}" for m in metrics if m in mean and m.startswith("val_"))
    folder_report(cv_dir, f"dltrain cv: {k} folds", "cv.csv", f"<p>{len(done)} of {k} folds completed; {esc(means)}</p>")
    if console is not None:
        _table(console, cv_dir, result, metrics)
    return result


def _plot(path: Path, folds: list[dict], metrics: list[str], mean: dict, std: dict, k: int) -> None:
    """One panel per validation metric: each fold's value, the mean and a band of one std."""
    if not metrics:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dltrain.files import writing

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 0.8, 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        xs = [f["fold"] for f in folds if isinstance(f.get(m), (int, float))]
        ax.plot(xs, [f[m] for f in folds if isinstance(f.get(m), (int, float))], "o", label="fold")
        ax.axhline(mean[m], color="k", lw=1, label=f"mean {mean[m]:.4g}")
        ax.axhspan(mean[m] - std[m], mean[m] + std[m], color="k", alpha=0.1, label=f"± std {std[m]:.2g}")
        ax.set(title=m, xlabel="fold", xticks=range(k))
        ax.legend(fontsize=7)
    fig.suptitle(f"{k}-fold cross-validation")
    fig.tight_layout()
    with writing(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(console, cv_dir: Path, result: dict, metrics: list[str]) -> None:
    from rich.table import Table

    k, folds = result["k"], result["folds"]
    table = Table(title=f"{k}-fold cross-validation: {result['completed']} of {k} folds finished")
    table.add_column("metric")
    table.add_column("mean", justify="right", style="bold")
    table.add_column("std", justify="right")
    for f in folds:
        table.add_column(f"fold {f['fold']}", justify="right")
    for m in metrics:
        cells = [f"{f[m]:.4f}" if isinstance(f.get(m), (int, float)) and math.isfinite(f[m]) else f["status"] for f in folds]
        table.add_row(m, f"{result['mean'][m]:.4f}" if m in result["mean"] else "", f"{result['std'][m]:.4f}" if m in result["std"] else "", *cells)
    console.print(table)
    console.print(f"cv.csv, cv.json, cv.png, report.html: [bold]{cv_dir}[/]", highlight=False)


def cv_summarize_command(argv: list[str]) -> int:
    """`dltrain cv summarize DIR`: rebuild a cv directory's summary."""
    from rich.console import Console

    if len(argv) != 1:
        raise UserError("usage: dltrain cv summarize DIR")
    if summarize_cv(argv[0], Console(stderr=True)) is None:
        raise UserError(f"{argv[0]} holds no cross-validation folds (run directories with cv.k >= 2 in their config.yaml)")
    return 0

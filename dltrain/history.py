"""Past runs: `dltrain runs` lists them, `dltrain compare` sets them side by side, `dltrain
report` rebuilds their pages. Everything here reads run directories only (config.yaml,
summary.json, metrics.csv): no torch, no model is built.

    dltrain runs [DIR...] [model=cnn] [data=digits] [status=finished] [--json]
    dltrain compare RUN RUN ... | SWEEP_DIR [out=DIR]
    dltrain report RUN_DIR|SWEEP_DIR|CV_DIR ...
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dltrain import report as rp
from dltrain.errors import ConfigError, UserError

ROOTS = ("outputs", "multirun", "cv")  # where runs land by default (single runs, sweeps, cv)
SKIP = {"checkpoints", "plots", "analysis", "tensorboard", ".hydra"}  # inside a run: no runs there
FILTERS = ("model", "data", "status", "task")
NOT_COMPARED = ("hydra.", "trainer.resume", "trainer.progress")  # differ without changing the result


@dataclass
class RunInfo:
    """What `runs` and `compare` show of one run directory."""

    path: Path
    started: float
    status: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, str]] = field(repr=False)

    @property
    def model(self) -> str:
        return str(self.config.get("model.name", "?"))

    @property
    def data(self) -> str:
        return str(self.config.get("data.name", "?"))

    @property
    def task(self) -> str:
        return str(self.summary.get("task") or self.config.get("task") or "?")

    @property
    def epochs(self) -> int:
        return int(self.summary.get("epochs") or len(self.metrics))

    @property
    def train_seconds(self) -> float:
        if "train_seconds" in self.summary:
            return float(self.summary["train_seconds"])
        return sum(float(r.get("seconds") or 0) for r in self.metrics)

    @property
    def main_metric(self) -> tuple[str, float] | None:
        return rp.main_metric(self.summary, {"sweep": {"objective": self.config.get("sweep.objective")}})

    def as_json(self) -> dict[str, Any]:
        metric = self.main_metric
        return {
            "run_dir": str(self.path), "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)), "status": self.status,
            "model": self.model, "data": self.data, "task": self.task, "metric": metric[0] if metric else None, "value": metric[1] if metric else None,
            "test": self.summary.get("test") or {}, "epochs": self.epochs, "train_seconds": round(self.train_seconds, 3),
        }


def read_run(path: Path) -> RunInfo:
    summary = rp.read_json(path / "summary.json") or {}
    return RunInfo(path, rp.started_at(path), rp.run_status(path, summary), rp.flatten(rp.read_config(path)), summary, rp.read_metrics(path))


def find_runs(roots: Sequence[Path]) -> list[Path]:
    """Every run directory (a folder with config.yaml) under `roots`, sweep jobs and cv folds too."""
    found = []
    for root in roots:
        if (root / "config.yaml").is_file():
            found.append(root)
            continue
        for here, dirs, files in os.walk(root):
            if "config.yaml" in files:
                found.append(Path(here))
            dirs[:] = sorted(d for d in dirs if d not in SKIP)
    return found


def _split_args(argv: Sequence[str], verb: str, allowed: Sequence[str], flags: Sequence[str] = ()) -> tuple[list[str], dict[str, str], set[str]]:
    paths, options, given = [], {}, set()
    for a in argv:
        if a.startswith("--"):
            if a not in flags:
                raise UserError(f"dltrain {verb}: unknown flag {a!r}; allowed: {', '.join(flags) or 'none'}")
            given.add(a)
        elif "=" in a:
            key, value = a.split("=", 1)
            if key not in allowed:
                raise UserError(f"dltrain {verb}: unknown key {key!r} (in {a!r}); allowed: {', '.join(allowed)}")
            options[key] = value
        else:
            paths.append(a)
    return paths, options, given


# ---- dltrain runs -------------------------------------------------------------------------------


def runs_command(argv: Sequence[str]) -> int:
    from rich.console import Console

    folders, filters, flags = _split_args(argv, "runs", FILTERS, ("--json",))
    if "status" in filters and filters["status"] not in rp.STATUSES:
        raise ConfigError("status", filters["status"], "allowed: " + ", ".join(rp.STATUSES))
    roots = [Path(f) for f in folders] or [Path(r) for r in ROOTS if Path(r).is_dir()]
    for root in roots:
        if not root.is_dir():
            raise UserError(f"dltrain runs: {str(root)!r} is not a folder")
    runs = [read_run(p) for p in find_runs(roots)]
    runs = [r for r in runs if all(str(getattr(r, k)) == v for k, v in filters.items())]
    runs.sort(key=lambda r: r.started, reverse=True)
    if "--json" in flags:
        print(json.dumps([r.as_json() for r in runs], indent=2))
        return 0
    console = Console()
    if not runs:
        where = " ".join(map(str, roots)) or "outputs/, multirun/ or cv/ here"
        console.print(f"no runs{' matching ' + ' '.join(f'{k}={v}' for k, v in filters.items()) if filters else ''} under {where}", highlight=False)
        return 0
    console.print(runs_table(runs, console.width))
    return 0


# Columns of `dltrain runs`, the most useful first: at a narrow width the last ones go first.
COLUMNS = ("run", "status", "model", "test", "data", "when", "train s", "epochs")


def runs_table(runs: Sequence[RunInfo], width: int):
    """The runs as a table that fits `width` columns: the least useful columns are left out (the
    full values are in `dltrain runs --json`); the run's path is never cut."""
    from rich.table import Table

    metrics = {m[0] for r in runs if (m := r.main_metric)}
    same = len(metrics) == 1
    colours = {"finished": "green", "failed": "red", "running": "cyan"}
    cells = []
    for r in runs:
        m = r.main_metric
        test = "" if m is None else f"{m[1]:.4f}" if same else f"{m[0]} {m[1]:.4f}"
        cells.append({
            "run": _shown_path(r.path), "status": r.status, "model": r.model, "test": test, "data": r.data,
            "when": time.strftime("%m-%d %H:%M", time.localtime(r.started)), "train s": f"{r.train_seconds:.1f}", "epochs": str(r.epochs),
        })
    headers = {c: c for c in COLUMNS} | ({"test": next(iter(metrics))} if same else {})
    need = {c: max(len(headers[c]), *(len(row[c]) for row in cells)) + 3 for c in COLUMNS}  # a cell's padding and border
    shown = list(COLUMNS)
    while len(shown) > 2 and sum(need[c] for c in shown) + 1 > width:
        shown.pop()
    table = Table(title=f"{len(runs)} run{'s' if len(runs) != 1 else ''}, newest first, test metric" + ("" if len(shown) == len(COLUMNS) else " (--json: every field)"), title_justify="left")
    for c in shown:
        table.add_column(headers[c], justify="right" if c in ("test", "train s", "epochs") else "left", no_wrap=c != "run", overflow="fold", min_width=min(need[c] - 3, 40) if c == "run" else None)
    for row in cells:
        table.add_row(*(f"[{colours.get(row[c], 'yellow')}]{row[c]}[/]" if c == "status" else row[c] for c in shown))
    return table


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---- dltrain compare ----------------------------------------------------------------------------


def comparable(runs: Sequence[RunInfo]) -> list[str]:
    """The config keys whose values differ between the runs (a key one run lacks differs too)."""
    keys = sorted({k for r in runs for k in r.config if not k.startswith(NOT_COMPARED)})
    return [k for k in keys if len({json.dumps(r.config[k], sort_keys=True, default=str) if k in r.config else "<unset>" for r in runs}) > 1]


def result_metrics(run: RunInfo) -> dict[str, float]:
    out = {f"test_{k}": v for k, v in (run.summary.get("test") or {}).items()}
    out.update({f"best_{k}": v for k, v in (run.summary.get("best") or {}).items() if k != "epoch"})
    if run.summary:
        out.update(epochs=run.epochs, train_seconds=run.train_seconds)
    return out


def curve_metrics(runs: Sequence[RunInfo]) -> list[str]:
    """metrics.csv columns that at least two of the runs share (all of them, for one run)."""
    counts: dict[str, int] = {}
    for r in runs:
        for c in (r.metrics[0] if r.metrics else {}):
            if c not in ("epoch", "step", "seconds") and "/" not in c:
                counts[c] = counts.get(c, 0) + 1
    return [c for c, n in counts.items() if n >= min(2, len(runs))]


def plot_curves(runs: Sequence[RunInfo], metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from dltrain.engine.plots import save_figure

    fig = Figure(figsize=(6, 3.6), dpi=110)
    ax = fig.add_subplot()
    values = []
    for i, r in enumerate(runs, 1):
        points = [(float(row["epoch"]), float(row[metric])) for row in r.metrics if row.get(metric) not in (None, "")]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if len(points) < 30 else None, ms=3, label=f"#{i} {r.model}")
            values += [v for _, v in points]
    ax.set_title(f"{metric} per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if (metric == "lr" or metric.endswith("loss")) and values and min(values) > 0 and max(values) > 3 * min(values):
        ax.set_yscale("log")  # losses and learning rates span decades
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def expand(paths: Sequence[str]) -> list[Path]:
    """Run directories named on the command line; a sweep or cv directory stands for its jobs."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"run directory {str(p)!r} does not exist")
        if (p / "config.yaml").is_file():
            out.append(p)
            continue
        inside = find_runs([p])
        if not inside:
            raise UserError(f"{str(p)!r} is neither a run directory (no config.yaml) nor a folder of runs")
        out.extend(sorted(inside, key=lambda q: (len(q.parts), int(q.name) if q.name.isdigit() else 0, str(q))))
    return out


def compare_command(argv: Sequence[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    paths, options, _ = _split_args(argv, "compare", ("out",))
    dirs = expand(paths)
    if len(dirs) < 2:
        raise UserError(f"dltrain compare needs two runs or more (or a sweep directory), got {len(dirs)}: dltrain compare RUN RUN ... | SWEEP_DIR")
    runs = [read_run(p) for p in dirs]
    keys = comparable(runs)
    results = [result_metrics(r) for r in runs]
    metric_names = list(dict.fromkeys(k for res in results for k in res))
    out = Path(options.get("out") or Path("outputs") / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)

    console = Console()
    for i, r in enumerate(runs, 1):
        console.print(f"#{i} {_shown_path(r.path)} [dim]({r.status})[/]", highlight=False, soft_wrap=True)
    transpose = len(runs) > 4  # many runs: one row each
    table = Table(title="config keys that differ, and results", title_justify="left")
    if transpose:
        table.add_column("run")
        for k in [*keys, *metric_names]:
            table.add_column(_short_key(k), justify="right", overflow="ellipsis")
        for i, (r, res) in enumerate(zip(runs, results, strict=True), 1):
            table.add_row(f"#{i}", *(rp.fmt(r.config.get(k, "")) for k in keys), *(rp.fmt(res.get(m, "")) for m in metric_names))
    else:
        table.add_column("key")
        for i in range(1, len(runs) + 1):
            table.add_column(f"#{i}", justify="right", overflow="fold")
        for k in keys:
            table.add_row(k, *(rp.fmt(r.config.get(k, "—")) for r in runs))
        if keys and metric_names:
            table.add_section()
        for m in metric_names:
            table.add_row(m, *(rp.fmt(res.get(m, "—")) for res in results))
    console.print(table)

    buffer = io.StringIO()  # compare.csv: full values, one row per run
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "run_dir", "status", *keys, *metric_names])
    for i, (r, res) in enumerate(zip(runs, results, strict=True), 1):
        writer.writerow([i, str(r.path), r.status, *(r.config.get(k, "") for k in keys), *(res.get(m, "") for m in metric_names)])
    from dltrain.files import atomic_write

    atomic_write(out / "compare.csv", buffer.getvalue().encode())
    images = [plot_curves(runs, m, out / f"{m}.png") for m in curve_metrics(runs)]
    write_compare_html(out, runs, keys, results, metric_names, images)
    console.print(f"compare: [bold]{out / 'compare.html'}[/] (and compare.csv, {len(images)} curve plot{'s' if len(images) != 1 else ''})", highlight=False, soft_wrap=True)
    return 0


def _short_key(key: str) -> str:
    """model.hidden -> hidden, best_val_accuracy -> best_val_acc…: a header that fits."""
    tail = key.rsplit(".", 1)[-1]
    return tail if len(tail) <= 14 else tail[:13] + "…"


def write_compare_html(out: Path, runs: Sequence[RunInfo], keys: Sequence[str], results: Sequence[dict], metric_names: Sequence[str], images: Sequence[Path]) -> Path:
    legend = []
    for i, r in enumerate(runs, 1):
        target = r.path / rp.REPORT
        name = rp.esc(_shown_path(r.path))
        link = f'<a href="{rp.esc(os.path.relpath(target.resolve(), out.resolve()))}">{name}</a>' if target.is_file() else name
        legend.append((f"#{i}", link, r.model, r.data, r.status))
    header = ["", *(f"#{i}" for i in range(1, len(runs) + 1))]
    rows = [(k, *(r.config.get(k, "—") for r in runs)) for k in keys] + [(m, *(res.get(m, "—") for res in results)) for m in metric_names]
    body = [
        f"<h1>dltrain compare: {len(runs)} runs</h1>",
        rp.section("runs", "Runs", rp.table(["", "run", "model", "data", "status"], legend, raw=[1])),
        rp.section("differences", "Config keys that differ, and results", rp.table(header, rows) if rows else "<p>The runs have the same config and no results.</p>"),
        rp.section("curves", "Learning curves", *(rp.image(p) for p in images)),
    ]
    return rp.write_page(out / "compare.html", f"dltrain compare: {len(runs)} runs", body)


# ---- dltrain report -----------------------------------------------------------------------------


def report_command(argv: Sequence[str]) -> int:
    """dltrain report RUN_DIR...: rebuild each run's report.html (a sweep's or cv directory's too)."""
    if not argv:
        raise UserError("dltrain report needs a run directory: dltrain report RUN_DIR|SWEEP_DIR|CV_DIR ...")
    for arg in argv:
        path = Path(arg)
        if not path.is_dir():
            raise UserError(f"run directory {arg!r} does not exist")
        if (path / "config.yaml").is_file():
            written = rp.run_report(path)
        elif any((path / name).is_file() for name in ("cv.json", "multirun.yaml", "sweep.csv")):
            from dltrain.crossval import summarize_cv
            from dltrain.sweeps import summarize

            if summarize_cv(path) is None:  # not a cv directory: a sweep's
                summarize(path)
            written = path / rp.REPORT
        else:
            raise UserError(f"{arg!r} is not a dltrain run, sweep or cv directory: it has no config.yaml, multirun.yaml or cv.json")
        print(f"report: {written}")
    return 0

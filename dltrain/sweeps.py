"""Sweeps: run each job safely, and summarise a sweep directory honestly.

    <sweep dir>/multirun.yaml   the sweep's config (Hydra)
    <sweep dir>/N/              job N's run directory, plus job.json: status, reason, objective, seconds
    <sweep dir>/sweep.csv       one row per job: status, swept values, objective, metrics, seconds, run dir
    <sweep dir>/best.yaml       the winning job: its overrides, objective and test metrics
    <sweep dir>/sweep.png       the objective against each swept parameter
    <sweep dir>/parallel.png    three swept keys or more: parallel coordinates, one line per job
    <sweep dir>/report.html     all of it on one page, each job linked to its own report.html

A job that fails (a bad combination, a diverged loss, an exception) is recorded as failed with a
one-line reason and the sweep goes on. `summarize` re-creates the three files from the job
directories alone, so `dltrain sweep summarize DIR` works for any sweep, finished or not.
This module is imported by Hydra's callback config on every run: keep its top light.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from dltrain import overrides as ov
from dltrain import private_api
from dltrain.errors import UserError, unknown_choice

log = logging.getLogger("dltrain")

JOB_FILE = "job.json"
STATUS_ORDER = {"completed": 0, "pruned": 1, "failed": 2, "interrupted": 3, "running": 4, "incomplete": 5}


# ---- config ----------------------------------------------------------------------------------


def resume_dir(overrides: Sequence[str]) -> list[str]:
    """With sweep.resume=true and no hydra.sweep.dir: `hydra.sweep.dir=` of the latest sweep that ran
    the same command line, so its finished jobs are skipped (an empty list when there is none)."""
    import sys

    import yaml

    resume = [o.partition("=")[2] for o in overrides if o.lstrip("+").startswith("sweep.resume=")]
    if not resume or yaml.safe_load(resume[-1]) is not True or any(o.startswith("hydra.sweep.dir=") for o in overrides):
        return []
    previous = find_previous_sweep(overrides)
    if previous is None:
        sys.stderr.write("dltrain: sweep.resume: no earlier sweep under multirun/ ran this command; starting a new one\n")
        return []
    sys.stderr.write(f"dltrain: sweep.resume: continuing the sweep in {previous}\n")
    return [f"hydra.sweep.dir={previous}"]


def prewarm_workers(overrides: Sequence[str]) -> None:
    """With launcher=joblib: get the workers ready while this process checks the sweep.

    On Linux the workers are forked from one process that has imported and warmed up everything a
    job needs, once (multiprocessing's forkserver, preloading dltrain.worker), instead of each
    worker importing it all: on 2 cores the first job started 0.8 s sooner. Elsewhere each worker
    warms itself up. joblib reuses this (loky) executor when the launcher asks for it, and loky
    still watches every worker (a job that crashes its process is an error, not a hang)."""
    if "launcher=joblib" not in overrides:
        return
    n_jobs = next((int(o.partition("=")[2]) for o in overrides if o.startswith("hydra.launcher.n_jobs=") and o.partition("=")[2].lstrip("-").isdigit()), -1)
    import threading

    task = _ready if _start_forkserver() else _warm_up

    def warm() -> None:
        try:
            from joblib import Parallel, delayed

            from dltrain.engine.cpus import jobs_at_once

            workers = jobs_at_once(n_jobs)
            # the executor arguments of Hydra's joblib launcher (defaults), so that it is reused
            Parallel(n_jobs=n_jobs, backend="loky", max_nbytes=None, mmap_mode="r")(delayed(task)() for _ in range(workers))
            _import_plotting()  # this process plots the sweep at the end; it waits meanwhile
        except Exception:  # noqa: BLE001  (only a head start; the launcher starts its own workers)
            pass

    threading.Thread(target=warm, daemon=True).start()


def _start_forkserver() -> bool:
    """Make loky start its workers through multiprocessing's forkserver, and start that server
    now, preloading dltrain.worker; whether it is running. The server never initialises CUDA
    (NVML answers torch.cuda.is_available there), so a forked worker can."""
    if sys.platform != "linux":
        return False
    import multiprocessing
    from multiprocessing import forkserver

    old = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    try:
        multiprocessing.set_forkserver_preload(["dltrain.worker"])
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # read by the server when it starts
        forkserver.ensure_running()
        return private_api.loky_forkserver()
    except Exception:  # noqa: BLE001  (workers are then started the usual way)
        return False
    finally:
        if old is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = old


def _ready() -> None:
    """A worker's first task: it has nothing to import (forked from a warm server)."""


def _warm_up() -> None:
    """A worker's first task where it was not forked from a warm server: import what jobs need."""
    import dltrain.worker  # noqa: F401  (importing it warms this worker up)


def _import_plotting() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def claim_sweep_dir(overrides: Sequence[str], hydra: Mapping[str, Any]) -> None:
    """Before Hydra starts: a sweep directory named on the command line (or found by sweep.resume)
    must be new, empty, or a sweep that sweep.resume=true continues; it is locked for this process
    (one sweep per directory). A generated one (multirun/<date>/<time with microseconds>) is new."""
    import yaml

    from dltrain.files import FolderLock, check_writable

    where = next((ov.parse([o])[0].value() for o in reversed(overrides) if o.startswith("hydra.sweep.dir=")), None)
    where = str(where) if where is not None else str((hydra.get("sweep") or {}).get("dir", "multirun"))
    if "${" in where:
        check_writable(Path(where.split("${")[0] or "."), "hydra.sweep.dir")
        return
    path = Path(where)
    check_writable(path, "hydra.sweep.dir")
    resume = [o.partition("=")[2] for o in overrides if o.lstrip("+").startswith("sweep.resume=")]
    resuming = bool(resume) and yaml.safe_load(resume[-1]) is True
    if path.is_dir() and any(p.name != ".lock" for p in path.iterdir()):
        if not (path / "multirun.yaml").is_file():
            raise UserError(f"hydra.sweep.dir={path} holds files that are not a dltrain sweep's; sweep into a new or empty folder (nothing there is overwritten)")
        if not resuming:
            raise UserError(f"hydra.sweep.dir={path} holds a sweep already; add sweep.resume=true to continue it, or sweep into a new folder")
    FolderLock(path, "sweep directory").acquire()  # held until this process ends


def find_previous_sweep(overrides: Sequence[str], root: Path = Path("multirun")) -> Path | None:
    """The latest sweep dir under `root` that ran the same command line (ignoring sweep.resume)."""
    import yaml

    want = sorted(_without_resume(ov.without_hydra(overrides)))
    for path in sorted(root.glob("*/*/multirun.yaml"), reverse=True):
        try:
            task = yaml.safe_load(path.read_text())["hydra"]["overrides"]["task"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            continue
        if sorted(_without_resume(task)) == want:
            return path.parent
    return None


def _without_resume(overrides) -> list[str]:
    return [o for o in overrides if not o.lstrip("+").startswith("sweep.resume=")]


# ---- one job of a sweep ------------------------------------------------------------------------


def run_job(cfg, hc, console) -> float | None:
    """One job of a multirun: train, write job.json, return the objective (None if it failed).

    Never raises for a failing job (the sweep goes on), except to tell Optuna a trial was pruned.
    """
    from omegaconf import OmegaConf

    from dltrain import plugins, shell
    from dltrain.config import validate
    from dltrain.search import epoch_reporter, job_trial

    plugins.load_for_child()  # a worker process: the plugins of the dltrain command (the parent: loaded already)

    run_dir = Path(hc.runtime.output_dir)
    overrides = _without_resume(list(hc.overrides.task))
    record: dict[str, Any] = {"job": hc.job.num, "status": "running", "overrides": overrides}
    resume = bool(OmegaConf.select(cfg, "sweep.resume", default=False))
    earlier = read_job(run_dir)
    if resume and earlier and earlier.get("status") == "completed" and earlier.get("overrides") == overrides:
        console.print(f"job {hc.job.num}: already finished ({earlier.get('objective_name')}={earlier.get('objective')}); skipped", highlight=False)
        log.info("sweep.resume: job %s already finished; skipped", hc.job.num)
        return earlier.get("objective")

    from dltrain.engine import distributed

    _limit_threads(hc)
    trainer = OmegaConf.select(cfg, "trainer")  # launcher=slurm with several tasks: each is a rank
    ranks = distributed.join_submitit_tasks(trainer.backend, trainer.device, trainer.dist_timeout)
    if not ranks.main:  # rank 0 keeps the job's record and returns its objective
        _train(cfg, run_dir, console, None)
        distributed.leave()
        return None
    start = time.perf_counter()
    write_job(run_dir, record)
    pruned = None
    try:
        spec = validate(cfg)
        record.update(objective_name=spec.sweep.objective, direction=spec.sweep.direction)
        trial = job_trial(hc)
        if spec.sweep.objective.startswith("cv_"):  # every fold of this configuration, then their mean
            summary = _train_folds(cfg, run_dir, console, spec.cv.k)
        else:
            on_epoch = epoch_reporter(trial, spec.sweep.objective) if trial is not None else None
            summary = _train(cfg, run_dir, console, on_epoch)
        value = summary["best"].get(spec.sweep.objective)
        if value is None or not math.isfinite(value):
            raise UserError(f"objective {spec.sweep.objective}={value} is not a finite number")
        record.update(status="completed", objective=value)
        from dltrain.runs import print_summary

        if "cv" not in summary:  # a cv job printed its folds' table
            print_summary(console, summary, str(run_dir))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001  (recorded: the sweep goes on)
        end = shell.ending(e, ranks)
        if end is not None and end.status == "interrupted":  # SIGINT/SIGTERM (also of a job's ranks): stop the whole sweep
            record.update(status="interrupted", reason=str(e), seconds=round(time.perf_counter() - start, 3))
            write_job(run_dir, record)
            console.print(f"job {hc.job.num}: {e}; rerun the sweep command with sweep.resume=true to continue it", highlight=False, soft_wrap=True)
            raise SystemExit(end.code) from None
        if type(e).__name__ == "TrialPruned":
            pruned = e
            record.update(status="pruned", reason=str(e))
        else:
            record.update(status="failed", reason=end.line if end is not None and end.line else one_line(e))
            if end is None:  # a bug: its traceback goes to the job's log
                log.exception("job %s failed", hc.job.num)
        log.error("job %s %s: %s", hc.job.num, record["status"], record["reason"])
        console.print(f"[red]job {hc.job.num} {record['status']}:[/] {record['reason']}", highlight=False)
    record["seconds"] = round(time.perf_counter() - start, 3)
    write_job(run_dir, record)
    if ranks.enabled and record["status"] == "completed":
        distributed.leave()
    if pruned is not None:
        raise pruned
    return record.get("objective")


def _train(cfg, run_dir: Path, console, on_epoch):
    from omegaconf import OmegaConf

    from dltrain.training import train

    return train(cfg, run_dir, console, config_yaml=OmegaConf.to_yaml(cfg, resolve=True), on_epoch=on_epoch)


def _train_folds(cfg, run_dir: Path, console, k: int) -> dict:
    """sweep.objective=cv_*: train folds 0..k-1 of this job's configuration one after the other
    into RUN_DIR/fold-I, summarise them (cv.csv, cv.json, cv.png in the job's directory) and
    return a summary whose `best` holds the folds' mean validation metrics (cv_val_*) and whose
    `test` holds the mean test metrics."""
    from omegaconf import open_dict

    from dltrain.crossval import fold_means

    for fold in range(k):
        fold_cfg = cfg.copy()
        with open_dict(fold_cfg):
            fold_cfg.cv.fold = fold
        _train(fold_cfg, run_dir / f"fold-{fold}", console, None)
    means = fold_means(run_dir, console)
    return {"best": means["best"], "test": means["test"], "train_seconds": 0.0, "cv": {"k": k, "folds": means["folds"]}}


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(e, UserError) else f"{type(e).__name__}: {message}".rstrip(": ")


def _limit_threads(hc) -> None:
    """Give each job its share of the cores when a launcher runs several at once."""
    from omegaconf import OmegaConf

    n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=None)
    per_task = OmegaConf.select(hc, "launcher.cpus_per_task", default=None)
    from dltrain.engine.cpus import jobs_at_once, usable_cpus

    cpus = usable_cpus()
    if per_task:
        threads = int(per_task)
    elif n_jobs:
        threads = max(1, cpus // jobs_at_once(int(n_jobs)))
    else:
        return
    import torch

    torch.set_num_threads(max(1, threads))
    log.info("torch threads: %d (%d cores, launcher n_jobs=%s, cpus_per_task=%s)", max(1, threads), cpus, n_jobs, per_task)


def read_job(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_job(run_dir: Path, record: Mapping[str, Any]) -> None:
    from dltrain.files import atomic_write

    atomic_write(Path(run_dir) / JOB_FILE, (json.dumps(record, indent=2) + "\n").encode())


# ---- after a sweep: sweep.csv, best.yaml, sweep.png --------------------------------------------


@dataclass
class JobResult:
    job: str
    status: str
    overrides: list[str]
    run_dir: Path
    objective: float | None = None
    reason: str = ""
    seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # best-epoch val_* and test_*
    objective_name: str | None = None
    direction: str | None = None

    @property
    def params(self) -> dict[str, str]:
        return dict(o.lstrip("+~").split("=", 1) for o in self.overrides if "=" in o)


@dataclass
class SweepResult:
    path: Path
    objective: str
    direction: str
    jobs: list[JobResult]
    swept: list[str]

    @property
    def best(self) -> JobResult | None:
        done = [j for j in self.jobs if j.status == "completed" and j.objective is not None]
        return done[0] if done else None


def collect(sweep_dir: Path, objective: str | None = None, direction: str | None = None) -> SweepResult:
    """Read every job directory of a sweep (sorted: best first, then pruned, failed, unfinished)."""
    import yaml

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep directory {str(sweep_dir)!r} does not exist")
    job_dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / ".hydra").is_dir() or (p / JOB_FILE).is_file() or (p / "summary.json").is_file())]
    if not job_dirs:
        raise UserError(f"{sweep_dir} is not a sweep directory: no job directories (N/.hydra, N/summary.json) in it")
    jobs, tasks = [], set()
    for p in sorted(job_dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)):
        record = read_job(p) or {}
        overrides = record.get("overrides")
        if overrides is None:
            try:
                overrides = _without_resume(yaml.safe_load((p / ".hydra" / "overrides.yaml").read_text()) or [])
            except (OSError, yaml.YAMLError):
                overrides = []
        summary = _read_json(p / "summary.json") or _cv_summary(p)
        if summary and summary.get("task"):
            tasks.add(summary["task"])
        status = record.get("status") or ("completed" if summary else "incomplete")
        if status == "running" and not record.get("seconds"):
            status = "incomplete"  # job.json of a job that never finished writing (killed, or still running)
        job = JobResult(p.name, status, list(overrides), p, reason=record.get("reason", ""), seconds=record.get("seconds"))
        job.objective_name, job.direction = record.get("objective_name"), record.get("direction")
        if summary:
            job.metrics = {k: v for k, v in (summary.get("best") or {}).items() if k != "epoch"}
            job.metrics.update({f"test_{k}": v for k, v in (summary.get("test") or {}).items()})
            if job.seconds is None:
                job.seconds = round(summary.get("train_seconds", 0) + summary.get("test_seconds", 0), 3)
        jobs.append(job)

    configured = next((j.objective_name for j in jobs if j.objective_name), None) or _configured(sweep_dir, "objective")
    objective = objective or configured or "val_loss"
    if direction is None and objective == configured:
        direction = next((j.direction for j in jobs if j.direction and j.objective_name == objective), None) or _configured(sweep_dir, "direction")
    if direction not in ("minimize", "maximize"):
        direction = _natural_direction(objective, tasks)
    known = {k for j in jobs for k in j.metrics}
    if known and objective not in known:
        raise unknown_choice("objective", objective, sorted(k for k in known if k.startswith("val_")))
    for j in jobs:
        if j.status == "completed":
            j.objective = j.metrics.get(objective)
            if j.objective is None or not math.isfinite(j.objective):
                j.status, j.reason, j.objective = "failed", j.reason or f"{objective} is not a finite number", None
    sign = -1.0 if direction == "maximize" else 1.0
    # ties (common for accuracy on a small validation set) go to the lower validation loss
    jobs.sort(key=lambda j: (STATUS_ORDER.get(j.status, 9), sign * j.objective if j.objective is not None else 0.0, j.metrics.get("val_loss", 0.0)))
    return SweepResult(sweep_dir, objective, direction, jobs, _swept(jobs))


def _cv_summary(job_dir: Path) -> dict | None:
    """A cv_* objective's job: its folds' mean metrics (cv.json) as a summary's best and test."""
    report = _read_json(job_dir / "cv.json")
    if not report or not report.get("completed"):
        return None
    mean = report.get("mean") or {}
    return {"best": {f"cv_{m}": v for m, v in mean.items() if m.startswith("val_")}, "test": {m.removeprefix("test_"): v for m, v in mean.items() if m.startswith("test_")}}


def _natural_direction(objective: str, tasks: set[str]) -> str:
    """maximize for metrics where higher is better (accuracy, r2, ...) in the sweep's task, else minimize."""
    better = {"accuracy", "r2"}
    try:
        from dltrain.tasks import TASKS

        for task in tasks:
            better |= set(TASKS.get(task).fn.higher_is_better)
    except Exception:  # noqa: BLE001  (an unknown task in an old sweep: keep the defaults)
        pass
    return "maximize" if objective.removeprefix("cv_").removeprefix("val_").removeprefix("test_") in better else "minimize"


def _configured(sweep_dir: Path, key: str) -> str | None:
    import yaml

    try:
        value = yaml.safe_load((sweep_dir / "multirun.yaml").read_text()).get("sweep", {}).get(key)
    except (OSError, AttributeError, yaml.YAMLError):
        return None
    return None if value in (None, "auto") else str(value)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _swept(jobs: Sequence[JobResult]) -> list[str]:
    """The override keys whose values differ between jobs (all of them for a one-job sweep)."""
    keys: dict[str, set[str]] = {}
    for j in jobs:
        for k, v in j.params.items():
            keys.setdefault(k, set()).add(v)
    varying = [k for k, values in keys.items() if len(values) > 1 or any(k not in j.params for j in jobs)]
    return varying if varying or len(jobs) > 1 else list(keys)


def summarize(sweep_dir: str | Path, objective: str | None = None, direction: str | None = None, console=None) -> SweepResult:
    """Write sweep.csv, best.yaml, sweep.png and report.html for a sweep directory and print its table."""
    result = collect(Path(sweep_dir), objective, direction)
    write_csv(result)
    write_best(result)
    plot_sweep(result)
    plot_parallel(result)
    write_report(result)
    if console is not None:
        print_table(console, result)
    return result


def write_report(result: SweepResult) -> Path:
    """report.html: the best job, the objective against each swept key, and every job (linked)."""
    from dltrain.report import esc, folder_report

    best = result.best
    counts = {}
    for j in result.jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    intro = f"<p>{len(result.jobs)} jobs ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); objective <code>{esc(result.objective)}</code> ({esc(result.direction)})"
    if best is not None:
        intro += f"; best: job {esc(best.job)} with {esc(result.objective)}={best.objective:.4g}: <code>{esc(' '.join(best.overrides))}</code>"
    return folder_report(result.path, f"dltrain sweep: {result.path.name}", "sweep.csv", intro + "</p>", first=("best.yaml",))


def _metric_columns(result: SweepResult) -> list[str]:
    names = {k for j in result.jobs for k in j.metrics}
    val = sorted(k for k in names if k.startswith(("val_", "cv_val_")) and k != result.objective)
    test = sorted(k for k in names if k.startswith("test_"))
    return [result.objective, *val, *test]


def write_csv(result: SweepResult) -> Path:
    from dltrain.files import atomic_write

    metrics = _metric_columns(result)
    columns = ["job", "status", *result.swept, *metrics, "seconds", "run_dir", "overrides", "reason"]

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for j in result.jobs:
        row = {"job": j.job, "status": j.status, **{k: j.params.get(k, "") for k in result.swept}}
        row.update({m: _fmt(j.metrics.get(m)) for m in metrics})
        row.update(seconds=_fmt(j.seconds), run_dir=str(j.run_dir), overrides=" ".join(j.overrides), reason=j.reason)
        writer.writerow(row)
    path = result.path / "sweep.csv"
    atomic_write(path, buffer.getvalue().encode())
    return path


def _fmt(v: Any) -> Any:
    return "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)


def write_best(result: SweepResult) -> Path | None:
    import yaml

    from dltrain.files import atomic_write

    path = result.path / "best.yaml"
    best = result.best
    if best is None:
        path.unlink(missing_ok=True)
        return None
    counts = {s: sum(j.status == s for j in result.jobs) for s in STATUS_ORDER if any(j.status == s for j in result.jobs)}
    data = {
        "objective": result.objective,
        "direction": result.direction,
        "value": best.objective,
        "job": int(best.job) if best.job.isdigit() else best.job,
        "run_dir": str(best.run_dir),
        "overrides": best.overrides,
        "command": " ".join(["dltrain", *best.overrides]),
        "metrics": {k: v for k, v in best.metrics.items()},
        "jobs": counts,
    }
    header = f"# The best job of sweep {result.path} by {result.objective} ({result.direction}); `dltrain sweep summarize DIR` rewrites it.\n"
    atomic_write(path, (header + yaml.safe_dump(data, sort_keys=False)).encode())
    return path


def plot_sweep(result: SweepResult) -> Path | None:
    """sweep.png: the objective of every finished job against each swept parameter."""
    done = [j for j in result.jobs if j.status == "completed" and j.objective is not None]
    path = result.path / "sweep.png"
    if not done or not result.swept:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result.swept)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100, squeeze=False)
    best = result.best
    for ax, key in zip(axes.flat, result.swept, strict=False):
        values = [j.params.get(key, "") for j in done]
        numbers = [_number(v) for v in values]
        ys = [j.objective for j in done]
        if all(x is not None for x in numbers):
            ax.scatter(numbers, ys, s=22, alpha=0.8)
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
                ax.set_xscale("log")  # learning rates, weight decays: log-spaced
            elif all(float(x).is_integer() and "." not in v for x, v in zip(numbers, values, strict=True)):
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers, units: no 1.5
            if best is not None:
                ax.scatter([_number(best.params.get(key, ""))], [best.objective], marker="*", s=160, c="red", zorder=3, label="best")
        else:
            labels = sorted(set(values))
            ax.scatter([labels.index(v) for v in values], ys, s=22, alpha=0.8)
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(len(s) for s in labels) > 6 else 0)
            if best is not None:
                ax.scatter([labels.index(best.params.get(key, ""))], [best.objective], marker="*", s=160, c="red", zorder=3, label="best")
        ax.set_xlabel(key)
        ax.set_ylabel(result.objective)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{result.path.name}: {result.objective} ({result.direction}), {len(done)} finished jobs", fontsize=10)
    fig.tight_layout()
    from dltrain.engine.plots import save_figure

    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_parallel(result: SweepResult) -> Path | None:
    """parallel.png for a sweep over three keys or more: one line per finished job across an axis
    per swept key (log-scaled where its values span a decade) and the objective, coloured by the
    objective, the best job in red."""
    done = [j for j in result.jobs if j.status == "completed" and j.objective is not None]
    path = result.path / "parallel.png"
    if len(result.swept) < 3 or len(done) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    axes_values, labels = [], []
    for key in result.swept:
        raw = [j.params.get(key, "") for j in done]
        numbers = [_number(v) for v in raw]
        if all(x is not None for x in numbers):
            logged = min(numbers) > 0 and max(numbers) / min(numbers) >= 10
            xs = [math.log10(x) for x in numbers] if logged else numbers
            lo, hi = min(xs), max(xs)
            axes_values.append([(x - lo) / (hi - lo) if hi > lo else 0.5 for x in xs])
            labels.append((key, _short(str(min(numbers, key=float))), _short(str(max(numbers, key=float)))))
        else:
            names = sorted(set(raw))
            axes_values.append([names.index(v) / max(len(names) - 1, 1) for v in raw])
            labels.append((key, names[0], names[-1]))
    ys = [j.objective for j in done]
    lo, hi = min(ys), max(ys)
    axes_values.append([(y - lo) / (hi - lo) if hi > lo else 0.5 for y in ys])
    labels.append((result.objective, f"{lo:.4g}", f"{hi:.4g}"))
    fig = Figure(figsize=(max(6, 1.8 * len(labels)), 3.8), dpi=100)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"]
    xs = list(range(len(labels)))
    order = sorted(range(len(done)), key=lambda i: ys[i] if result.direction == "minimize" else -ys[i], reverse=True)  # the best drawn last
    for i in order:
        best = done[i] is result.best
        ax.plot(xs, [a[i] for a in axes_values], color="red" if best else cmap(axes_values[-1][i] if result.direction == "maximize" else 1 - axes_values[-1][i]), lw=2.5 if best else 1, alpha=1 if best else 0.7, zorder=3 if best else 2)
    for x, (_, low, high) in zip(xs, labels, strict=True):
        ax.axvline(x, color="#888", lw=0.8)
        ax.annotate(low, (x, 0), xytext=(3, -12), textcoords="offset points", fontsize=7)
        ax.annotate(high, (x, 1), xytext=(3, 4), textcoords="offset points", fontsize=7)
    ax.set_xticks(xs, [n for n, _, _ in labels], fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(f"{result.path.name}: {len(done)} jobs across {len(result.swept)} keys, coloured by {result.objective} (best in red)", fontsize=9)
    fig.tight_layout()
    from dltrain.engine.plots import save_figure

    save_figure(fig, path)
    return path


def _header(key: str, swept: Sequence[str]) -> str:
    """A swept key's column header: its last part (optim.lr -> lr) where no other key shares it."""
    tail = key.rsplit(".", 1)[-1]
    return tail if sum(k.rsplit(".", 1)[-1] == tail for k in swept) == 1 else key


def _short(value: str) -> str:
    number = _number(value)
    return f"{number:.4g}" if number is not None and "." in value else value


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def print_table(console, result: SweepResult, limit: int = 40) -> None:
    from rich.table import Table

    metrics = _metric_columns(result)[:4]
    metrics = sorted(metrics, key=lambda m: m != result.objective)  # the objective first: the last to go
    styles = {"completed": "green", "pruned": "yellow", "failed": "red"}
    jobs = result.jobs[:limit]
    columns = {  # header -> cells, in the order they are left out when the table is too wide (last first)
        "job": [j.job for j in jobs], "status": [j.status for j in jobs],
        **{_header(k, result.swept): [_short(j.params.get(k, "")) for j in jobs] for k in result.swept},
        **{m: [f"{j.metrics[m]:.4f}" if m in j.metrics else "" for j in jobs] for m in metrics},
        "seconds": ["" if j.seconds is None else f"{j.seconds:.1f}" for j in jobs],
    }
    keep = 2 + len(result.swept) + bool(metrics)  # job, status, the swept keys and the objective stay
    shown = list(columns)
    need = {h: max(len(h), *(len(c) for c in cells)) + 3 for h, cells in columns.items()}
    while len(shown) > keep and sum(need[h] for h in shown) + 1 > console.width:
        shown.pop()
    left_out = len(columns) - len(shown)
    table = Table(title=f"sweep {result.path}: {len(result.jobs)} jobs by {result.objective} ({result.direction})" + (f"; {left_out} more columns in sweep.csv" if left_out else ""), title_justify="left")
    for h in shown:
        table.add_column(h, justify="left" if h == "status" or h in [_header(k, result.swept) for k in result.swept] else "right", style="bold" if h == result.objective else None, no_wrap=True)
    for i, j in enumerate(jobs):
        table.add_row(*(f"[{styles.get(j.status, 'dim')}]{j.status}[/]" if h == "status" else columns[h][i] for h in shown))
    console.print(table)
    if len(result.jobs) > limit:
        console.print(f"... {len(result.jobs) - limit} more rows in sweep.csv", highlight=False)
    for j in result.jobs:
        if j.status in ("failed", "pruned") and j.reason:
            console.print(f"job {j.job} {j.status}: {j.reason}", highlight=False)
    best = result.best
    if best is None:
        console.print("[red]no job finished[/]")
    else:
        console.print(f"best: job {best.job}, {result.objective}={best.objective:.4f}: dltrain {' '.join(best.overrides)}", highlight=False)
    console.print(f"sweep.csv, best.yaml, sweep.png, report.html: [bold]{result.path}[/]", highlight=False)


@dataclass
class SummarizeOptions:
    dir: str
    objective: str | None = None  # default: the sweep's own (sweep.objective)
    direction: str | None = None  # minimize or maximize; default: the sweep's own


def summarize_command(argv: list[str]) -> int:
    """`dltrain sweep summarize DIR [objective=METRIC] [direction=minimize|maximize]`."""
    from rich.console import Console

    if not argv or argv[0] != "summarize":
        if argv and "=" not in argv[0]:
            raise unknown_choice("sweep ACTION", argv[0], ["summarize"])
        raise UserError("usage: dltrain sweep summarize DIR [objective=METRIC] [direction=minimize|maximize]")
    opts = ov.parse_options(argv[1:], SummarizeOptions, "sweep summarize", positional=("dir",))
    if opts.direction not in (None, "minimize", "maximize"):
        raise unknown_choice("direction", opts.direction, ["maximize", "minimize"])
    summarize(opts.dir, opts.objective, opts.direction, Console(stderr=True))
    return 0


class SweepSummary(Callback):
    """Hydra callback (configs/config.yaml hydra.callbacks): lock the sweep directory when a
    multirun starts (one sweep per directory), summarise it when it ends."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from dltrain.files import FolderLock

        try:
            FolderLock(Path(str(config.hydra.sweep.dir)), "sweep directory").acquire()  # re-entrant: the CLI may hold it
        except UserError as e:
            sys.stderr.write(f"dltrain: error: {e}\n")
            raise SystemExit(2) from None

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf
        from rich.console import Console

        objective = OmegaConf.select(config, "sweep.objective", default=None)
        if OmegaConf.select(config, "cv.k", default=0) and not str(objective).startswith("cv_"):  # `dltrain cv`: the folds' mean and spread, not a best job
            from dltrain.crossval import summarize_cv

            try:
                summarize_cv(str(config.hydra.sweep.dir), Console(stderr=True))
            except UserError as e:
                log.error("cv summary: %s", e)
                Console(stderr=True).print(f"[red]cv summary:[/] {e}", highlight=False)
            return
        direction = OmegaConf.select(config, "sweep.direction", default=None)
        try:
            summarize(
                str(config.hydra.sweep.dir),
                None if objective in (None, "auto") else objective,
                None if direction in (None, "auto") else direction,
                Console(stderr=True),
            )
        except UserError as e:
            log.error("sweep summary: %s", e)
            Console(stderr=True).print(f"[red]sweep summary:[/] {e}", highlight=False)

"""report.html: one self-contained page per run, sweep and cv directory (images embedded, no
scripts, nothing fetched), and what the pages and `dltrain runs` read from a run directory.

A run's page, written when it ends (finished or interrupted) and rebuilt by `dltrain report RUN`
and after every analysis verb: the command that reproduces it, the keys it set, the test
metrics, the learning curves, the task's pictures (plots/), the analysis verbs' outputs
(analysis/<verb>/), the epochs, and the full config folded. A sweep's and a cv directory's page:
its table, its plots and links to each job's page.
No torch here: `dltrain runs` and `dltrain report` start in a fraction of a second.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dltrain.errors import UserError
from dltrain.files import atomic_write

REPORT = "report.html"
STATUSES = ("finished", "interrupted", "failed", "running", "pruned")  # pruned: a sweep stopped it early

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#1d2330}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #dde1e8;padding-bottom:.2em}
h3{font-size:1em}.meta{color:#5b6475;margin-top:0}
.status{font-size:.6em;padding:.15em .5em;border-radius:.3em;vertical-align:middle;background:#e8ebf0}
.finished,.completed{background:#d9f2df;color:#17602b}.failed{background:#fadcdc;color:#8a1c1c}
.interrupted,.running,.pruned,.incomplete{background:#fbefd2;color:#7a5300}
pre{background:#f5f6f8;padding:.7em 1em;overflow-x:auto;border-radius:.3em}
code{background:#f5f6f8;padding:0 .25em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .8em;border-bottom:1px solid #e6e9ee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f5f6f8}
figure{display:inline-block;margin:.4em 1em .8em 0;vertical-align:top}figure img{max-width:100%;border:1px solid #e6e9ee}
figcaption{color:#5b6475;font-size:.85em}details{margin:.6em 0}summary{cursor:pointer;color:#2b59c3}
"""


# ---- reading a run directory --------------------------------------------------------------------


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_config(run_dir: Path) -> dict:
    import yaml

    try:
        value = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    try:
        with (run_dir / "metrics.csv").open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def read_overrides(run_dir: Path) -> list[str] | None:
    """The command line's overrides (Hydra's .hydra/overrides.yaml; the Python API writes it too)."""
    import yaml

    try:
        value = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def is_locked(run_dir: Path) -> bool:
    """Whether a process holds the run directory's lock (dltrain.files.FolderLock): it is running."""
    import fcntl

    lock = run_dir / ".lock"
    if not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock taken to probe
    return False


def run_status(run_dir: Path, summary: Mapping | None = None) -> str:
    """finished (summary.json written), running (its lock is held), failed or interrupted (as the
    run recorded in job.json when it ended), else interrupted (killed before it could say)."""
    if summary is None:
        summary = read_json(run_dir / "summary.json")
    if summary:
        return "finished"
    if is_locked(run_dir):
        return "running"
    job = read_json(run_dir / "job.json") or {}
    return job["status"] if job.get("status") in ("failed", "pruned") else "interrupted"


def started_at(run_dir: Path) -> float:
    """When the run started: its config.yaml's modification time (written before the first step)."""
    for name in ("config.yaml", ".hydra/config.yaml", "."):
        try:
            return (run_dir / name).stat().st_mtime
        except OSError:
            continue
    return 0.0


def main_metric(summary: Mapping, config: Mapping) -> tuple[str, float] | None:
    """The test metric a run is judged by: its sweep objective's (val_accuracy -> accuracy), else
    the first one other than the loss, else the loss."""
    test = summary.get("test") or {}
    if not test:
        return None
    objective = str((config.get("sweep") or {}).get("objective") or "").removeprefix("val_")
    name = objective if objective in test else next((k for k in test if k != "loss"), next(iter(test)))
    return name, test[name]


def flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'model.hidden': 128, ...}: a nested config as dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def command(overrides: Sequence[str] | None) -> str | None:
    return None if overrides is None else " ".join(["dltrain", *(shlex.quote(o) for o in overrides)])


# ---- HTML pieces ----------------------------------------------------------------------------------


PRESETS = ("recipe", "trainer", "hparams_search")  # groups whose choice sets keys of other groups
CHOICE_GROUPS = ("model", "data", "loss", "optim", "sched", "optim_d", "sched_d", "init")
_DEFAULTS: dict[tuple[str, ...], dict] = {}  # composed defaults per set of choices (a sweep's jobs share them)


def differing_keys(config: Mapping, overrides: Sequence[str]) -> list[tuple[str, Any, Any]] | None:
    """For a run whose command chose a preset (a recipe, trainer=debug, ...): its keys whose value
    differs from the defaults of the same group choices, as (key, value, default), composing those
    defaults with Hydra. None for any other run: its command's overrides are those keys, and
    composing would cost the end of every run a tenth of a second."""
    if not any(ov.split("=", 1)[0].lstrip("+~") in PRESETS for ov in overrides if "=" in ov):
        return None
    choices = [f"{g}={config[g]['name']}" for g in CHOICE_GROUPS if isinstance(config.get(g), Mapping) and config[g].get("name")]
    choices += [f"{g}=[{','.join(map(str, config[g]))}]" for g in ("reg", "logger") if isinstance(config.get(g), Mapping) and config[g]]
    key = tuple(choices)
    if key not in _DEFAULTS:
        try:
            from omegaconf import OmegaConf

            from dltrain.composition import compose

            _DEFAULTS[key] = flatten(OmegaConf.to_container(compose(choices), resolve=True))
        except Exception:  # noqa: BLE001  (a run of another version or config folder: the page shows the overrides instead)
            return None
    defaults = _DEFAULTS[key]
    missing = object()
    return [(k, v, defaults.get(k, "(absent)")) for k, v in flatten(config).items() if defaults.get(k, missing) != v and not k.startswith("hydra.")]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        try:
            return fmt(float(value)) if value.strip() and not value.strip().isdigit() else value
        except ValueError:
            return value
    return str(value)


def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], raw: Sequence[int] = ()) -> str:
    """An HTML table; numbers right-aligned; cells of the columns in `raw` are HTML already."""
    rows = [list(r) for r in rows]
    numeric = [bool(rows) and all(_numeric(r[i]) or r[i] in ("", None) for r in rows) for i in range(len(header))]
    head = "".join(f'<th{" class=n" if numeric[i] else ""}>{esc(h)}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=n" if numeric[i] else ""}>{c if i in raw else esc(fmt(c))}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(path: Path, caption: str | None = None) -> str:
    """A PNG embedded as a data URI: the page stays whole when it is copied or mailed."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption or path.stem)}"><figcaption>{esc(caption or path.name)}</figcaption></figure>'


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


def page(title: str, body: Iterable[str]) -> str:
    return f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>{esc(title)}</title><style>{STYLE}</style></head><body>\n' + "\n".join(body) + "\n</body></html>\n"


def section(ident: str, heading: str, *parts: str) -> str:
    return f'<section id="{ident}"><h2>{esc(heading)}</h2>' + "".join(parts) + "</section>"


def write_page(path: Path, title: str, body: Iterable[str]) -> Path:
    atomic_write(path, page(title, body).encode())
    return path


# ---- a run's page -------------------------------------------------------------------------------


def _pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if p.is_file() and not p.is_symlink()) if folder.is_dir() else []


def curve_names(metrics: Sequence[Mapping[str, str]]) -> set[str]:
    """The file names plot_history gives a run's curves (loss.png, one per validation metric)."""
    columns = list(metrics[0]) if metrics else []
    return {"loss.png", "grad_norms.png", *(f"{c.removeprefix('val_')}.png" for c in columns if c.startswith("val_"))}


def final_pictures(pngs: Sequence[Path]) -> tuple[list[Path], int]:
    """The pictures a page shows, and how many it leaves out: of the grids drawn every epoch
    (samples_e001.png, ...) only the final one (samples.png, or the last epoch's if the run
    stopped before it was named)."""
    import re

    epoch = re.compile(r"(.+)_e(\d+)\.png$")
    finals = {p.name for p in pngs if not epoch.match(p.name)}
    last: dict[str, Path] = {}
    for p in pngs:
        m = epoch.match(p.name)
        if m and f"{m.group(1)}.png" not in finals:
            last[m.group(1)] = max(last.get(m.group(1), p), p, key=lambda q: int(epoch.match(q.name).group(2)))
    shown = sorted([p for p in pngs if p.name in finals] + list(last.values()))
    return shown, len(pngs) - len(shown)


def csv_table(path: Path, open_: bool = False) -> str:
    """A CSV file as a folded table (its first 50 rows); "" if it is empty or too large to read."""
    if path.stat().st_size >= 200_000:
        return ""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return details(f"{path.name} ({len(rows) - 1} rows)", table(rows[0], rows[1:51]), open_) if rows else ""


def _analysis(run_dir: Path) -> list[str]:
    root = run_dir / "analysis"
    parts = []
    for verb in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        items = []
        for f in sorted(verb.iterdir()):
            if f.suffix == ".json" and (value := read_json(f)) is not None:
                flat = flatten(value)
                items.append(details(f.name, table(["key", "value"], list(flat.items())[:200]), open_=len(flat) <= 12))
            elif f.suffix == ".csv" and (shown := csv_table(f)):
                items.append(shown)
        items += [image(p) for p in _pngs(verb)]
        others = sorted(f.name for f in verb.iterdir() if f.is_file() and f.suffix not in (".json", ".csv", ".png"))
        if others:
            items.append(f"<p>files: {', '.join(f'<code>{esc(n)}</code>' for n in others)}</p>")
        parts.append(f"<h3>dltrain {esc(verb.name)}</h3>" + "".join(items))
    return parts


def run_report(run_dir: str | Path, status: str | None = None, reason: str | None = None) -> Path:
    """Write (or rewrite) RUN/report.html from what the run directory holds; return its path.
    `status` and `reason`: how the run ended, from the run itself (else read from the folder)."""
    import yaml

    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{str(path)!r} is not a dltrain run directory: it has no config.yaml")
    config, summary, metrics = read_config(path), read_json(path / "summary.json") or {}, read_metrics(path)
    status = status or run_status(path, summary)
    model, data = (config.get("model") or {}).get("name", "?"), (config.get("data") or {}).get("name", "?")
    job = read_json(path / "job.json") or {}
    if reason:
        job["reason"] = reason
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started_at(path)))
    epochs = summary.get("epochs", sum(1 for r in metrics if _numeric(r.get("epoch")) and float(r["epoch"]).is_integer()))  # not the validations inside epochs
    facts = [f"started {when}", f"{epochs} epoch{'s' if epochs != 1 else ''}"]
    if summary:
        facts += [f"{summary.get('train_seconds', 0):.1f} s of training", f"on {summary.get('device', '?')}", f"{summary.get('parameters', 0):,} parameters"]
    body = [f'<h1>{esc(model)} on {esc(data)} <span class="status {status}">{status}</span></h1>', f'<p class="meta">{esc(" · ".join(facts))}<br><code>{esc(path.resolve())}</code></p>']
    if job.get("reason") and status != "finished":
        body.append(f"<p><b>{esc(status)}:</b> {esc(job['reason'])}</p>")

    overrides = read_overrides(path)
    cmd = command(overrides)
    body.append(section("command", "Reproduce", f"<pre>{esc(cmd)}</pre>" if cmd else "<p>The overrides of this run were not recorded; its config.yaml below is the whole of it.</p>"))

    if summary.get("test"):
        rows = [(f"test {k}", v) for k, v in summary["test"].items()]
        rows += [(f"best {k}", v) for k, v in (summary.get("best") or {}).items()]
        rows += [(k.replace("_", " "), summary[k]) for k in ("epochs", "steps", "train_seconds", "stopped_early", "seed", "precision") if k in summary]
        body.append(section("metrics", f"Test metrics ({summary.get('test_ckpt', 'best')} checkpoint)", table(["metric", "value"], rows)))
    else:
        body.append(section("metrics", "Test metrics", "<p>The run has not reached its final test.</p>"))

    flat = flatten(config)
    keys = [o for o in overrides or [] if "=" in o and not o.lstrip("+~").startswith("hydra.")]
    config_parts = []
    differing = differing_keys(config, overrides or [])
    if differing:
        config_parts.append(table(["key", "this run", "default"], [(k, fmt(v), fmt(d)) for k, v, d in differing]))
    elif differing is None and keys:
        config_parts.append(table(["override", "value in this run"], [(o.split("=", 1)[0], fmt(flat.get(o.split("=", 1)[0].lstrip("+~"), o.split("=", 1)[1]))) for o in keys]))
    choices = [(g, (config.get(g) or {}).get("name")) for g in ("model", "data", "loss", "optim", "sched", "init") if isinstance(config.get(g), Mapping)]
    choices += [(g, "[" + ",".join(map(str, config[g])) + "]") for g in ("reg", "logger") if isinstance(config.get(g), Mapping) and config[g]]
    config_parts.append("<p>choices: " + " ".join(f"<code>{esc(g)}={esc(n)}</code>" for g, n in choices if n) + "</p>")
    config_parts.append(details("full config (config.yaml)", f"<pre>{esc(yaml.safe_dump(config, sort_keys=False))}</pre>"))
    body.append(section("config", "Config: what this run set", *config_parts))

    curves = curve_names(metrics)
    plots = _pngs(path / "plots")
    body.append(section("curves", "Learning curves", *([image(p) for p in plots if p.name in curves] or ["<p>No curves yet: they are drawn when the run ends.</p>"])))
    pictures, per_epoch = final_pictures([p for p in plots if p.name not in curves])
    tables = [t for f in sorted((path / "plots").glob("*.csv")) if f.is_file() and (t := csv_table(f, open_=True))] if pictures else []  # a classifier's mistakes.csv
    if pictures:
        note = f"<p>{per_epoch} earlier epochs' grids are in <code>plots/</code> (<code>NAME_eNNN.png</code>).</p>" if per_epoch else ""
        body.append(section("pictures", "Pictures", *(image(p) for p in pictures), *tables, note))
    analysis = _analysis(path)
    if analysis:
        body.append(section("analysis", "Analysis", *analysis))
    if metrics:
        body.append(section("epochs", "Epochs", details(f"metrics.csv ({len(metrics)} rows)", table(list(metrics[0]), [list(r.values()) for r in metrics]), open_=len(metrics) <= 20)))
    return write_page(path / REPORT, f"dltrain: {model} on {data} ({status})", body)


def record_ending(run_dir: Path, status: str, reason: str) -> None:
    """A run that stopped before its summary: job.json says how (a sweep's job writes its own)."""
    job = read_json(run_dir / "job.json")
    if job is None or "job" not in job:
        atomic_write(run_dir / "job.json", (json.dumps({"status": status, "reason": reason}, indent=2) + "\n").encode())


def try_run_report(run_dir: str | Path, warn=None, status: str | None = None, reason: str | None = None) -> Path | None:
    """run_report, where a report that cannot be written must not fail what asked for it: a
    failure is one warning (through `warn`, if given) and None."""
    try:
        return run_report(run_dir, status, reason)
    except (OSError, UserError, ValueError) as e:
        if warn is not None:
            warn(f"report.html not written: {e}")
        return None


# ---- sweep and cv pages -------------------------------------------------------------------------


def _link(target: Path, base: Path, label: str) -> str:
    rel = os.path.relpath(target, base)
    return f'<a href="{esc(rel)}">{esc(label)}</a>'


def folder_report(folder: Path, title: str, csv_name: str, intro: str = "", first: Sequence[str] = ()) -> Path:
    """A sweep's or cv directory's page: its CSV as a table (each job linked to its own page), its
    plots, and the files beside them (best.yaml, cv.json)."""
    folder = Path(folder)
    rows: list[dict[str, str]] = []
    if (folder / csv_name).is_file():
        with (folder / csv_name).open(newline="") as f:
            rows = list(csv.DictReader(f))
    body = [f"<h1>{esc(title)}</h1>", f'<p class="meta"><code>{esc(folder.resolve())}</code></p>']
    if intro:
        body.append(intro)
    for name in first:
        if (folder / name).is_file():
            body.append(details(name, f"<pre>{esc((folder / name).read_text())}</pre>", open_=True))
    for p in _pngs(folder):
        body.append(image(p))
    if rows:
        header = list(rows[0])
        raw = []
        cells = []
        for r in rows:
            line = list(r.values())
            job = Path(r.get("run_dir") or "")
            if not (job / REPORT).is_file():
                job = folder / job.name  # a path relative to where the sweep ran
            if "run_dir" in r and r["run_dir"] and (job / REPORT).is_file():
                raw = [header.index("run_dir")]
                line[raw[0]] = _link(job / REPORT, folder, job.name)
            cells.append(line)
        body.append(section("jobs", f"{csv_name} ({len(rows)} rows)", table(header, cells, raw=raw)))
    return write_page(folder / REPORT, title, body)

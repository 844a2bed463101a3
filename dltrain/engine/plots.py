"""Loss and metric curves as PNG files in the run directory's plots/ folder.

Importing matplotlib and drawing the first figure takes about 0.9 s on 2 cores, as long as the
whole training of the default model. The `dltrain` command therefore starts a plot process as it
begins (`start_plot_process`): it imports matplotlib on another core while this process imports
torch and checks the config, then waits. At the end of the run `draw_history` hands it the
history; the run's last steps (the weights, the final test) go on meanwhile, and `.wait()` collects
the result, or the error, before summary.json marks the run finished. Without a plot process (the
Python API, a sweep's jobs, or if it could not start) the curves are drawn here.
No torch in this module: the plot process imports it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

# How long the run waits for its curves before drawing them itself (the plot process is stuck).
WAIT_S = 60.0


def save_figure(fig, path: Path) -> None:
    """Write a figure as PNG atomically (a symbolic link at `path` is replaced, never followed);
    a failed write is one line (UserError)."""
    from dltrain.files import writing

    with writing(path):
        _save_png(fig, path)


def _save_png(fig, path: Path) -> None:
    import io

    from dltrain.files import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


def plot_history(history: Sequence[dict], folder: Path) -> list[Path]:
    """Write loss.png (training losses and val_loss) and one PNG per other validation metric."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # not pyplot: no figure manager, nothing to close

    if not history:
        return []
    epochs = [row["epoch"] for row in history]
    written = []
    losses = [k for k in history[0] if (k.startswith("train_") and k.endswith("loss")) or k == "val_loss"]
    metrics = [k for k in history[0] if k.startswith("val_") and k != "val_loss"]
    for name, series in [("loss", losses)] + [(m.removeprefix("val_"), [m]) for m in metrics]:
        fig = Figure(figsize=(5, 3.4), dpi=110)
        ax = fig.add_subplot()
        for key in series:
            ax.plot(epochs, [row[key] for row in history], marker="o" if len(epochs) < 30 else None, ms=3, label=key)
        ax.set_title("training and validation loss" if name == "loss" else f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = folder / f"{name}.png"
        _save_png(fig, path)
        written.append(path)
    if any(k.startswith("grad_norm/") for k in history[0]):
        written.append(plot_grad_norms(history, folder / "grad_norms.png"))
    return written


def plot_grad_norms(history: Sequence[dict], path: Path) -> Path:
    """trainer.log_grad_norms: each layer's mean gradient norm and its weight norm per epoch, on
    log axes, the first layer darkest (a vanishing gradient: the dark lines far below the light)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    names = [k.removeprefix("grad_norm/") for k in history[0] if k.startswith("grad_norm/")]
    colours = colormaps["viridis"]
    fig = Figure(figsize=(9, 3.6), dpi=110)
    for i, (prefix, title) in enumerate((("grad_norm/", "gradient norm (mean over the epoch's steps)"), ("weight_norm/", "weight norm (end of epoch)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, name in enumerate(names):
            values = [row.get(prefix + name) for row in history]
            ax.plot(epochs, [v if v and v > 0 else float("nan") for v in values], color=colours(j / max(1, len(names) - 1) * 0.9), label=name, marker="o" if len(epochs) < 30 else None, ms=2)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        if i == 1:
            ax.legend(fontsize=6, ncol=1 + len(names) // 12, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    _save_png(fig, path)
    return path


class Drawing:
    """Curves being drawn by the plot process, or (without one) to be drawn here when waited for;
    `wait()` returns their paths or raises what writing them raised (an OSError: a full disk, a
    read-only folder)."""

    def __init__(self, history: Sequence[dict], folder: Path, process: PlotProcess | None = None) -> None:
        self.history, self.folder, self.process = history, folder, process
        self.written: list[Path] | None = None

    def wait(self) -> list[Path]:
        if self.written is None:
            reply = self.process.receive() if self.process else None
            if reply is not None and "oserror" in reply:
                e = reply["oserror"]
                raise OSError(e["errno"], e["strerror"], e["filename"])
            if reply is not None and "written" in reply:
                self.written = [Path(p) for p in reply["written"]]
            else:  # no plot process, or it died, is stuck or failed: here it works, or fails with its own traceback (a bug)
                self.written = plot_history(self.history, self.folder)
        return self.written


class PlotProcess:
    """`python -m dltrain.engine.plot_process` (started without the working directory on its path):
    one JSON line per request on its stdin ({"history": [...], "folder": "..."}), one JSON reply
    line on its stdout ({"written": [...]}, {"oserror": {...}} or {"failed": "..."})."""

    def __init__(self) -> None:
        from dltrain.child import python_command
        from dltrain.engine import cpus

        self.proc = subprocess.Popen(python_command("dltrain.engine.plot_process"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        cpus.HELPERS.add(self.proc.pid)  # its CPU time is this run's own, not another process's load

    def send(self, history: Sequence[dict], folder: Path) -> bool:
        try:
            self.proc.stdin.write(json.dumps({"history": list(history), "folder": str(folder)}) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError, TypeError):  # it has exited, or the history is not JSON
            return False

    def receive(self) -> dict | None:
        """The reply to the last request, or None if none comes within WAIT_S."""
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(WAIT_S):
                self.close()
                return None
        try:
            line = self.proc.stdout.readline()
            return json.loads(line) if line else None
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        from dltrain.engine import cpus

        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        cpus.HELPERS.discard(self.proc.pid)


_process: PlotProcess | None = None


def start_plot_process() -> None:
    """Start the plot process now (the `dltrain` command, for one run), if it is not running."""
    global _process
    if _process is None or _process.proc.poll() is not None:
        try:
            _process = PlotProcess()
        except OSError:
            _process = None


def stop_plot_process() -> None:
    global _process
    if _process is not None:
        _process.close()
        _process = None


def draw_history(history: Sequence[dict], folder: Path) -> Drawing:
    """Start drawing the run's curves (in the plot process, if one is running); `.wait()` for them."""
    if _process is not None and _process.proc.poll() is None and _process.send(history, folder):
        return Drawing(history, folder, _process)
    return Drawing(history, folder)

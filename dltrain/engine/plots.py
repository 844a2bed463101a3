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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def plot_pictures(pictures: Mapping[str, Any], folder: Path) -> list[Path]:
    """A final test's pictures (the tasks' test_pictures). A classifier's: confusion_matrix.png, the
    most confident mistakes as mistakes.csv and, for images, mistakes.png (about 0.1 s for 10
    classes); a regression's and forecaster's: regression_pngs."""
    import csv
    import io

    from dltrain.files import atomic_write

    if pictures.get("kind") in ("regression", "forecasting"):
        return regression_pngs(pictures, folder)
    written = [confusion_png(pictures["classes"], pictures["confusion"], pictures["wrong"], folder / "confusion_matrix.png")]
    buf = io.StringIO()
    out = csv.DictWriter(buf, ["index", "true", "pred", "confidence"], lineterminator="\n")
    out.writeheader()
    out.writerows(pictures["mistakes"])
    atomic_write(folder / "mistakes.csv", buf.getvalue().encode())
    written.append(folder / "mistakes.csv")
    if pictures.get("images"):
        written.append(mistakes_png(pictures["images"], pictures["mistakes"], pictures["wrong"], folder / "mistakes.png"))
    return written


def regression_pngs(pictures: Mapping[str, Any], folder: Path) -> list[Path]:
    """pred_vs_true.png (every output against its truth, the identity line, RMSE and R2 in the
    title) and, for a forecaster, forecast.png: the one-step-ahead forecast over the test steps."""
    import numpy as np
    from matplotlib.figure import Figure

    pred, true = np.asarray(pictures["pred"], dtype=np.float64), np.asarray(pictures["true"], dtype=np.float64)
    rmse = float(np.sqrt(np.mean((pred - true) ** 2)))
    r2 = float(np.mean(1 - ((pred - true) ** 2).sum(0) / np.maximum(((true - true.mean(0)) ** 2).sum(0), 1e-12)))  # averaged over outputs, like the metrics
    fig = Figure(figsize=(4.4, 4.2), dpi=110)
    ax = fig.add_axes((0.17, 0.13, 0.78, 0.75))
    ax.scatter(true.ravel(), pred.ravel(), s=8, alpha=0.5)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = true")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"test predictions: RMSE {rmse:.4g}, R2 {r2:.3f}\n({len(true)} examples)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    written = [folder / "pred_vs_true.png"]
    _save_png(fig, written[0])
    if pictures["kind"] == "forecasting":
        fig = Figure(figsize=(6, 3.2), dpi=110)
        ax = fig.add_axes((0.12, 0.15, 0.85, 0.72))
        ax.plot(true[:, 0], lw=1.2, label="true")
        ax.plot(pred[:, 0], lw=1.2, label="forecast, 1 step ahead")
        ax.set_xlabel("test step")
        ax.set_ylabel("value")
        ax.set_title("test forecast", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        written.append(folder / "forecast.png")
        _save_png(fig, written[-1])
    return written


def confusion_png(names: Sequence[str], matrix: Sequence[Sequence[int]], wrong: int, path: Path) -> Path:
    """Counts of (true, predicted) classes, shaded, the counts written in for up to 30 classes."""
    from matplotlib.figure import Figure

    k, total = len(names), sum(map(sum, matrix))
    side = min(2.2 + 0.34 * k, 14.0)
    fig = Figure(figsize=(side + 0.4, side), dpi=110)
    ax = fig.add_axes((1.0 / (side + 0.4), 0.9 / side, 1 - 1.4 / (side + 0.4), 1 - 1.6 / side))  # fixed margins: tight_layout costs as much as the drawing
    ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    top = max(max(map(max, matrix)), 1)
    if k <= 30:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=8 if k <= 12 else 6, color="white" if count > top / 2 else "black")
    ticks = list(range(0, k, max(1, k // 30)))
    long = k > 10 or max(map(len, names)) > 3
    ax.set_xticks(ticks, [names[i][:12] for i in ticks], rotation=45 if long else 0, ha="right" if long else "center", fontsize=7)
    ax.set_yticks(ticks, [names[i][:12] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(f"test confusion matrix: accuracy {(total - wrong) / max(total, 1):.4f}\n{wrong} of {total} wrong", fontsize=9)
    _save_png(fig, path)
    return path


def mistakes_png(images: Sequence, rows: Sequence[Mapping[str, Any]], wrong: int, path: Path) -> Path:
    """The most confident mistakes, 8 a row, each captioned "#index true T / pred P (confidence)"
    (Pillow: a tenth of the time of a figure of subplots)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from dltrain.files import atomic_write

    tiles = np.asarray(images, dtype=np.uint8)  # (N, H, W, C)
    n, h, w, c = tiles.shape
    scale = max(1, 56 // max(h, w))
    cell_w, caption, head = max(w * scale, 84) + 8, 28, 22
    cols = min(8, n)
    canvas = Image.new("RGB", (cols * cell_w, head + -(-n // cols) * (h * scale + caption + 8)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(10)
    draw.text((4, 4), f"most confident test mistakes ({wrong} in all)", fill="black", font=ImageFont.load_default(12))
    for i, (tile, row) in enumerate(zip(tiles, rows, strict=False)):
        r, col = divmod(i, cols)
        x0, y0 = col * cell_w + 4, head + r * (h * scale + caption + 8)
        img = Image.fromarray(tile[..., 0] if c == 1 else tile[..., :3]).convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(img, (x0 + (cell_w - 8 - w * scale) // 2, y0))
        draw.text((x0, y0 + h * scale + 2), f"#{row['index']} true {str(row['true'])[:10]}", fill="black", font=font)
        draw.text((x0, y0 + h * scale + 14), f"pred {str(row['pred'])[:10]} ({float(row['confidence']):.2f})", fill=(170, 0, 0), font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())
    return path


def plot_request(request: Mapping[str, Any]) -> list[Path]:
    """What the plot process is asked to draw: a run's curves or its final test's pictures."""
    folder = Path(request["folder"])
    return plot_pictures(request["pictures"], folder) if "pictures" in request else plot_history(request["history"], folder)


class Drawing:
    """Curves or pictures being drawn by the plot process, or (without one) to be drawn here when
    waited for; `wait()` returns their paths or raises what writing them raised (an OSError: a
    full disk, a read-only folder)."""

    def __init__(self, request: dict, process: PlotProcess | None = None) -> None:
        self.request, self.process = request, process
        self.written: list[Path] | None = None
        self.reply: dict | None = None  # the plot process's, once read (perhaps by a later Drawing's wait)
        if process is not None:
            process.pending.append(self)

    def wait(self) -> list[Path]:
        if self.written is None:
            reply = self.process.reply_to(self) if self.process else None
            if reply is not None and "oserror" in reply:
                e = reply["oserror"]
                raise OSError(e["errno"], e["strerror"], e["filename"])
            if reply is not None and "written" in reply:
                self.written = [Path(p) for p in reply["written"]]
            else:  # no plot process, or it died, is stuck or failed: here it works, or fails with its own traceback (a bug)
                self.written = plot_request(self.request)
        return self.written


class PlotProcess:
    """`python -m dltrain.engine.plot_process` (started without the working directory on its path):
    one JSON line per request on its stdin ({"history": [...], "folder": "..."} or {"pictures":
    {...}, "folder": "..."}), one JSON reply line on its stdout, in order ({"written": [...]},
    {"oserror": {...}} or {"failed": "..."})."""

    def __init__(self) -> None:
        from dltrain.child import python_command
        from dltrain.engine import cpus

        self.proc = subprocess.Popen(python_command("dltrain.engine.plot_process"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        cpus.HELPERS.add(self.proc.pid)  # its CPU time is this run's own, not another process's load
        self.pending: list[Drawing] = []  # sent, their replies not yet read: they come in this order

    def reply_to(self, drawing: Drawing) -> dict | None:
        """`drawing`'s reply, reading (and handing to their drawings) the replies before it."""
        while drawing in self.pending:
            first = self.pending.pop(0)
            first.reply = self.receive()
            if first.reply is None:  # none came: neither will the later ones
                for later in self.pending:
                    later.reply = None
                self.pending.clear()
        return drawing.reply

    def send(self, request: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
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
    return _draw({"history": list(history), "folder": str(folder)})


def draw_pictures(pictures: Mapping[str, Any], folder: Path) -> Drawing:
    """Start drawing a final test's pictures (plot_pictures); `.wait()` for them, after any
    Drawing started before (the plot process replies in order)."""
    return _draw({"pictures": dict(pictures), "folder": str(folder)})


def _draw(request: dict) -> Drawing:
    if _process is not None and _process.proc.poll() is None and _process.send(request):
        return Drawing(request, _process)
    return Drawing(request)

"""Loss and metric curves as PNG files in the run directory's plots/ folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def save_figure(fig, path: Path) -> None:
    """Write a figure as PNG atomically (a symbolic link at `path` is replaced, never followed)."""
    import io

    from dltrain.engine.rundir import writing
    from dltrain.files import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with writing(path):
        atomic_write(path, buf.getvalue())


def plot_history(history: Sequence[dict], folder: Path) -> list[Path]:
    """Write loss.png (training losses and val_loss) and one PNG per other validation metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return []
    epochs = [row["epoch"] for row in history]
    written = []
    losses = [k for k in history[0] if (k.startswith("train_") and k.endswith("loss")) or k == "val_loss"]
    metrics = [k for k in history[0] if k.startswith("val_") and k != "val_loss"]
    for name, series in [("loss", losses)] + [(m.removeprefix("val_"), [m]) for m in metrics]:
        fig, ax = plt.subplots(figsize=(5, 3.4), dpi=110)
        for key in series:
            ax.plot(epochs, [row[key] for row in history], marker="o" if len(epochs) < 30 else None, ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = folder / f"{name}.png"
        save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written

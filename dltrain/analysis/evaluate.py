"""`dltrain eval RUN_DIR`: the task's metrics on a split, with plots (scikit-learn metrics).

Classification: accuracy, macro precision/recall/F1, per-class table, confusion matrix, the most
confident mistakes. Regression: RMSE, MAE, R2 in the data's units and a predicted-vs-true plot.
Forecasting: the same plus the forecast over the test period.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dltrain.analysis import plots
from dltrain.analysis.common import (
    RunOptions,
    display_images,
    open_run,
    output_dir,
    predict_outputs,
    print_table,
    print_written,
    split_of,
    to_target_units,
    write_csv,
    write_json,
)
from dltrain.data.base import DataBundle, Split
from dltrain.schema import NonNegativeInt


@dataclass
class EvalOptions(RunOptions):
    split: Literal["test", "val"] = "test"
    mistakes: NonNegativeInt = 16  # how many of the most confident mistakes to show
    input: str | None = None  # your own data's run: a labelled file (table, texts) or folder of class folders (images) instead of a split


def run_eval(opts: EvalOptions) -> int:
    """Evaluate the run's checkpoint on a split; write analysis/eval/ and print the metrics."""
    loaded = open_run(opts, "eval")
    built = loaded.built
    data = built.data
    split = labelled_input(data, Path(opts.input)) if opts.input else split_of(data, opts.split)
    where = f"{opts.input} ({len(split)} examples)" if opts.input else f"{opts.split} split"
    out = output_dir(loaded, "eval")
    outputs = predict_outputs(built.model, split.x, built.spec.trainer.eval_batch_size)
    title = f"{built.spec.model['name']} on {data.name}: {where}, {opts.ckpt} checkpoint"
    if built.spec.task == "classification":
        metrics, files = classification_report(data, split, outputs, out, opts.mistakes, title)
    else:
        metrics, files = regression_report(data, split, outputs, out, title, forecast=built.spec.task == "forecasting", split_name=opts.split)
    record = {"task": built.spec.task, "split": None if opts.input else opts.split, **({"input": opts.input} if opts.input else {}), "ckpt": opts.ckpt, "n": len(split), "metrics": metrics}
    files.insert(0, write_json(out / "metrics.json", record))
    print_written(out, files)
    return 0


def labelled_input(data: DataBundle, source: Path) -> Split:
    """`input=` of a run on your own data: new labelled examples of the kind it was trained on,
    prepared with what was fitted on its training split (a table or text file with the target
    column; a folder of class folders for images)."""
    from dltrain.errors import UserError

    prep = data.prep
    if prep is None or prep.get("kind", "table") not in ("table", "text", "image"):
        raise UserError(f"input={source}: eval reads new labelled files for runs on data=table, data=text or data=image_folder; this run ({data.name}) is evaluated on its splits (split=test or val)")
    if not source.exists():
        raise UserError(f"input={str(source)!r} does not exist")
    if prep.get("kind", "table") == "image":
        from dltrain.analysis.predict import read_image
        from dltrain.data.folder import class_files

        if not source.is_dir():
            raise UserError(f"input={source}: give a folder with one subfolder of images per class ({', '.join(data.class_names or [])})")
        files = class_files(source)
        unknown = sorted(set(files) - set(data.class_names or []))
        if unknown:
            raise UserError(f"input={source}: class folder {unknown[0]!r} is not a class of this run; its classes: {', '.join(data.class_names or [])}")
        index = {c: i for i, c in enumerate(data.class_names or [])}
        raw = np.stack([read_image(p, data) for c in files for p in files[c]])
        y = np.array([index[c] for c in files for _ in files[c]])
        x = (raw - data.x_mean[0]) / data.x_std[0]
        return Split(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y))
    from dltrain.data.table import SUFFIXES, apply_prep, read_table

    if source.is_dir() or source.suffix.lower() not in SUFFIXES:
        raise UserError(f"input={source}: give a .csv, .tsv, .parquet or .jsonl file with the column {prep['target']!r}")
    frame = read_table(source)
    frame.columns = [str(c) for c in frame.columns]
    if prep["target"] not in frame.columns:
        raise UserError(f"input={source} has no column {prep['target']!r}, the labels eval compares with; add it, or use dltrain predict")
    frame = frame[frame[prep["target"]].notna()].reset_index(drop=True)
    if prep.get("kind", "table") == "text":
        from dltrain.data.text import encode

        if prep["text"] not in frame.columns:
            raise UserError(f"input={source} has no column {prep['text']!r}; the run classifies the texts of column {prep['text']!r}")
        x = torch.from_numpy(encode(frame[prep["text"]].tolist(), prep["vocab"], prep["max_len"], prep["lowercase"]))
    else:
        x = torch.from_numpy(apply_prep(prep, frame, str(source)))
    target = frame[prep["target"]]
    if data.task == "classification":
        index = {c: i for i, c in enumerate(prep["classes"])}
        labels = target.astype(str).tolist()
        unknown = sorted({v for v in labels if v not in index})
        if unknown:
            raise UserError(f"input={source}: {prep['target']}={unknown[0]!r} is not a class of this run; its classes: {', '.join(prep['classes'])}")
        return Split(x, torch.tensor([index[v] for v in labels], dtype=torch.int64))
    values = target.astype("float64").to_numpy()[:, None]
    return Split(x, torch.from_numpy(((values - np.asarray(data.y_mean)) / np.asarray(data.y_std)).astype(np.float32)))


def classification_report(data: DataBundle, split: Split, logits: torch.Tensor, out: Path, n_mistakes: int, title: str) -> tuple[dict[str, Any], list[Path]]:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    y_true = split.y.numpy()
    probs = logits.softmax(-1).numpy()
    y_pred = probs.argmax(-1)
    confidence = probs.max(-1)
    names = data.class_names or [str(i) for i in range(probs.shape[1])]
    labels = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(macro[2]),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
    }
    per_class = [
        {"class": names[k], "precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]), "support": int(support[k])}
        for k in labels
    ]
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    files = [
        write_csv(out / "per_class.csv", per_class),
        write_csv(out / "confusion_matrix.csv", [{"true": names[i], **{names[j]: int(cm[i, j]) for j in labels}} for i in labels]),
        plots.confusion_matrix_png(cm, names, out / "confusion_matrix.png", f"{title}\naccuracy {metrics['accuracy']:.4f}"),
        write_csv(
            out / "predictions.csv",
            [{"index": i, "true": names[t], "pred": names[p], "confidence": float(c)} for i, (t, p, c) in enumerate(zip(y_true, y_pred, confidence, strict=True))],
        ),
    ]
    wrong = np.flatnonzero(y_pred != y_true)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:n_mistakes]
    files.append(
        write_csv(
            out / "mistakes.csv",
            [{"index": int(i), "true": names[y_true[i]], "pred": names[y_pred[i]], "confidence": float(confidence[i])} for i in worst],
            columns=["index", "true", "pred", "confidence"],
        )
    )
    if data.kind == "image" and len(worst):
        images = display_images(data, split.x[torch.from_numpy(worst)]).numpy()
        titles = [f"#{i} true {names[y_true[i]]}\npred {names[y_pred[i]]} ({confidence[i]:.2f})" for i in worst]
        files.append(plots.image_grid(images, titles, out / "mistakes.png", suptitle=f"most confident mistakes ({len(wrong)} in all)"))

    print_table(title, ["metric", "value"], [*metrics.items(), ("examples", len(y_true)), ("mistakes", len(wrong))])
    print_table("per class", ["class", "precision", "recall", "f1", "support"], [list(r.values()) for r in per_class])
    return metrics, files


def regression_report(
    data: DataBundle, split: Split, outputs: torch.Tensor, out: Path, title: str, forecast: bool, split_name: str = "test"
) -> tuple[dict[str, Any], list[Path]]:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    pred = to_target_units(data, outputs).numpy()
    true = to_target_units(data, split.y).numpy()
    metrics = {
        "rmse": float(np.sqrt(mean_squared_error(true, pred))),
        "mae": float(mean_absolute_error(true, pred)),
        "r2": float(r2_score(true, pred)),  # averaged over outputs, like the training metrics
    }
    dim = true.shape[1]
    columns = ["index"] + [f"{kind}{'' if dim == 1 else f'_{j}'}" for kind in ("true", "pred") for j in range(dim)]
    rows = [dict(zip(columns, [i, *map(float, t), *map(float, p)], strict=True)) for i, (t, p) in enumerate(zip(true, pred, strict=True))]
    files = [
        write_csv(out / "predictions.csv", rows, columns),
        plots.scatter_png(true, pred, out / "pred_vs_true.png", f"{title}\nRMSE {metrics['rmse']:.4g}, R2 {metrics['r2']:.3f}"),
    ]
    if forecast:  # consecutive windows: the first step of each target traces the series
        steps = np.arange(len(true))
        files.append(
            plots.curves_png(steps, {"true": true[:, 0], "forecast (1 step ahead)": pred[:, 0]}, out / "forecast.png", f"{split_name} step", "value", title)
        )
    print_table(title, ["metric", "value"], [*metrics.items(), ("examples", len(true))])
    return metrics, files

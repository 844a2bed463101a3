"""`dltrain predict RUN_DIR input=FILE`: inference on new data with the training normalisation.

Inputs are raw values, as in the original dataset: a CSV (one example per row, optional header),
an NPZ/NPY array, an image file or a folder of images. Images are converted to the run's channel
count and size and rescaled from 8-bit to the data's pixel range (digits 0..16, MNIST 0..1).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dltrain.analysis.common import SUPERVISED, RunOptions, open_run, output_dir, predict_outputs, print_table, to_target_units, write_csv
from dltrain.data.base import DataBundle
from dltrain.errors import UserError
from dltrain.schema import PositiveInt

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class PredictOptions(RunOptions):
    input: str = ""
    output: str | None = None  # default: <run>/analysis/predict/predictions.csv
    batch_size: PositiveInt = 1024


def run_predict(opts: PredictOptions) -> int:
    """Predict every example of `opts.input`; write a CSV of classes and probabilities (or values)."""
    if not opts.input:
        raise UserError("dltrain predict needs input=FILE (a .csv, .npz, .npy, an image or a folder of images)")
    source = Path(opts.input)
    if not source.exists():
        raise UserError(f"input={opts.input!r} does not exist")
    if opts.output and Path(opts.output).is_dir():
        raise UserError(f"output={opts.output!r} is a folder; give a file name, e.g. output={Path(opts.output) / 'predictions.csv'}")
    loaded = open_run(opts, "predict", (*SUPERVISED, "seq2seq"))
    built = loaded.built
    data = built.data
    raw, names = read_inputs(source, data)
    check_finite(raw, names, source)
    x = tokens_of(raw, data, source) if data.kind == "tokens" else torch.from_numpy(raw) if data.kind == "text" else normalize(data, raw)
    outputs = predict_outputs(built.model, x, opts.batch_size)
    rows = prediction_rows(data, built.spec.task, outputs, names, x)
    target = Path(opts.output) if opts.output else output_dir(loaded, "predict") / "predictions.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_csv(target, rows)
    shown = [k for k in rows[0] if not k.startswith("prob_")]
    print_table(f"{built.spec.model['name']} on {data.name}: {len(rows)} predictions ({opts.ckpt} checkpoint)", shown, [[r[k] for k in shown] for r in rows[:20]])
    print(f"wrote {len(rows)} predictions to {target}")
    return 0


def read_inputs(source: Path, data: DataBundle) -> tuple[np.ndarray, list[str]]:
    """Raw inputs shaped (N, *in_shape) and a name per example (file name or row number)."""
    in_shape = data.in_shape
    suffix = source.suffix.lower()
    if data.prep is not None and data.prep.get("kind", "table") == "table":  # data=table: raw rows with the training file's columns
        return read_own_table(source, data)
    if data.prep is not None and data.prep["kind"] == "text":  # data=text: raw texts, tokenised with the run's vocabulary
        return read_own_texts(source, data)
    if data.prep is not None and data.prep["kind"] == "series":  # data=series: a forecast after every window of the file's steps
        return read_own_series(source, data)
    if source.is_dir() or suffix in IMAGE_SUFFIXES:
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if source.is_dir() else [source]
        if not files:
            raise UserError(f"input={str(source)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        if data.kind != "image" or len(in_shape) != 3:
            raise UserError(f"input={str(source)!r} holds images, but this run was trained on {data.kind} data of shape {in_shape}; give a CSV or NPZ")
        return np.stack([read_image(p, data) for p in files]), [p.name for p in files]
    if suffix == ".csv":
        array = read_csv(source)
    elif suffix in (".npz", ".npy"):
        array = read_array(source)
    else:
        raise UserError(f"input={str(source)!r}: unknown file type {suffix or '(none)'!r}; give a .csv, .npz, .npy, an image or a folder of images")
    x = fit_shape(array, in_shape, source, data.name)
    return x, [str(i) for i in range(len(x))]


def read_own_table(source: Path, data: DataBundle) -> tuple[np.ndarray, list[str]]:
    """A table run's input: a file of the kind it was trained on (any column order; the target
    and other extra columns are ignored), through the preprocessing fitted on its training split."""
    from dltrain.data.table import ALLOWED, SUFFIXES, apply_prep, read_table

    if source.is_dir() or source.suffix.lower() not in SUFFIXES:
        raise UserError(f"input={str(source)!r}: this run was trained on a table ({data.prep['source']}); give {ALLOWED} with its columns")
    frame = read_table(source)
    frame.columns = [str(c) for c in frame.columns]
    return apply_prep(data.prep, frame, str(source)), [str(i) for i in range(len(frame))]


def read_own_texts(source: Path, data: DataBundle) -> tuple[np.ndarray, list[str]]:
    """A text run's input: a .txt file (one text per line) or a table file with the training
    file's text column; word ids from the run's vocabulary, each text named by its start."""
    from dltrain.data.table import ALLOWED, SUFFIXES, read_table
    from dltrain.data.text import encode

    prep = data.prep
    if source.suffix.lower() == ".txt":
        texts = [line for line in source.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    elif source.suffix.lower() in SUFFIXES and not source.is_dir():
        frame = read_table(source)
        if prep["text"] not in frame.columns:
            raise UserError(f"{source} has no column {prep['text']!r}; the run classifies the texts of column {prep['text']!r}")
        texts = frame[prep["text"]].tolist()
    else:
        raise UserError(f"input={str(source)!r}: this run reads texts; give a .txt file (one text per line) or {ALLOWED} with a column {prep['text']!r}")
    if not texts:
        raise UserError(f"{source} holds no text")
    names = [str(t)[:40] + ("..." if len(str(t)) > 40 else "") for t in texts]
    return encode(texts, prep["vocab"], prep["max_len"], prep["lowercase"]), names


def read_own_series(source: Path, data: DataBundle) -> tuple[np.ndarray, list[str]]:
    """A series run's input: a table file with the training file's columns, one row per step; one
    forecast after each `window` consecutive rows, named by the row it follows."""
    from dltrain.data.table import ALLOWED, SUFFIXES, read_table

    prep = data.prep
    if source.is_dir() or source.suffix.lower() not in SUFFIXES:
        raise UserError(f"input={str(source)!r}: this run forecasts a series ({prep['source']}); give {ALLOWED} with columns {', '.join(prep['columns'])}")
    frame = read_table(source)
    frame.columns = [str(c) for c in frame.columns]
    missing = [c for c in prep["columns"] if c not in frame.columns]
    if missing:
        raise UserError(f"{source} has no column {missing[0]!r}; the run forecasts from columns: {', '.join(prep['columns'])}")
    if prep.get("time"):
        import pandas as pd

        frame = frame.assign(**{prep["time"]: pd.to_datetime(frame[prep["time"]], errors="coerce", format="mixed")}).sort_values(prep["time"], kind="stable")
    values = frame[prep["columns"]].astype("float64").interpolate(limit_direction="both").to_numpy()
    window = prep["window"]
    if len(values) < window:
        raise UserError(f"{source} has {len(values)} rows; the run forecasts from windows of {window}")
    x = np.lib.stride_tricks.sliding_window_view(values, window, axis=0).transpose(0, 2, 1).astype(np.float32)
    return x, [f"after row {i + window}" for i in range(len(x))]


def check_finite(raw: np.ndarray, names: list[str], source: Path) -> None:
    """A NaN or inf in the input is named (example and value position), never predicted."""
    bad = ~np.isfinite(raw.reshape(len(raw), -1))
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        where = f"row {row + 1}, column {column + 1}" if source.suffix.lower() == ".csv" else f"example {names[row]}, value {column}"
        raise UserError(f"{source}: {where} is {raw.reshape(len(raw), -1)[row, column]} (not a finite number); fix or drop it")


# Pillow refuses images above this many pixels (a decompression bomb expands a small file into gigabytes).
MAX_IMAGE_PIXELS = 50_000_000


def read_image(path: Path, data: DataBundle) -> np.ndarray:
    """An image file -> (C, H, W) raw values in the data's pixel range."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    c, h, w = data.in_shape
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
                unit = np.asarray(img, dtype=np.float32) / 255.0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{path} is larger than {MAX_IMAGE_PIXELS:,} pixels (a decompression bomb?); refused") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable image ({str(e).splitlines()[0]})") from None
    unit = unit[None] if c == 1 else np.moveaxis(unit, -1, 0)
    if unit.shape[0] != c:
        raise UserError(f"{path}: this run expects {c}-channel images")
    lo, hi = getattr(data, "pixel_range", None) or raw_range(data)
    return lo + unit * (hi - lo)


def raw_range(data: DataBundle) -> tuple[float, float]:
    """The raw value range of the training images (for runs written before pixel_range existed)."""
    raw = data.train.x * data.x_std[0] + data.x_mean[0]
    return float(raw.min()), float(raw.max())


def read_csv(path: Path) -> np.ndarray:
    """Numeric rows of a CSV; a first row that is not numeric is taken as a header."""
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    try:
        array = np.array([[float(v) for v in r] for r in rows], dtype=np.float32)
    except ValueError as e:
        raise UserError(f"{path}: every row must hold numbers only ({e})") from None
    if array.ndim != 2:  # rows of different lengths
        raise UserError(f"{path}: rows have different numbers of columns")
    if len(array) == 0:
        raise UserError(f"{path} holds no rows")
    return array


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
        return True
    except ValueError:
        return False


def read_array(path: Path) -> np.ndarray:
    """The array of an .npy file, or of an .npz file's `x` (or only) entry; nothing is unpickled."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"{path} is not a readable NumPy file ({str(e).splitlines()[0]})") from None
    if isinstance(loaded, np.ndarray):
        return _numbers(loaded, path)
    with loaded:
        keys = list(loaded.keys())
        if "x" in keys:
            key = "x"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise UserError(f"{path} holds arrays {', '.join(keys) or '(none)'}; put the inputs under the name 'x'")
        try:
            array = loaded[key]
        except ValueError as e:  # an object array: it would need unpickling
            raise UserError(f"{path}: array {key!r} is not numeric ({str(e).splitlines()[0]}); nothing is unpickled") from None
        return _numbers(array, path, key)


def _numbers(array: np.ndarray, path: Path, key: str = "") -> np.ndarray:
    """A numeric array as float32; strings, objects and empty arrays are refused."""
    name = f"{path}" + (f" (array {key!r})" if key else "")
    if array.dtype.kind not in "biuf":
        raise UserError(f"{name} holds {array.dtype} values; give numbers")
    if array.size == 0:
        raise UserError(f"{name} is empty")
    return array.astype(np.float32)


def fit_shape(array: np.ndarray, in_shape: tuple[int, ...], path: Path, data_name: str) -> np.ndarray:
    """(N, *in_shape), (N, prod(in_shape)), grey (N, H, W) or one example -> (N, *in_shape)."""
    size = math.prod(in_shape)
    grey = len(in_shape) == 3 and in_shape[0] == 1
    if array.shape == in_shape or (grey and array.shape == in_shape[1:]):
        return array.reshape(1, *in_shape)
    if array.ndim >= 1 and array.shape[1:] == in_shape:
        return array
    if grey and array.shape[1:] == in_shape[1:]:
        return array[:, None]
    if array.ndim == 2 and array.shape[1] == size:
        return array.reshape(len(array), *in_shape)
    shapes = [in_shape] + ([in_shape[1:]] if grey else []) + ([(size,)] if len(in_shape) > 1 else [])
    allowed = [f"(N, {', '.join(map(str, s))})" for s in shapes]
    allowed = ", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else allowed[0]
    raise UserError(f"{path} holds shape {tuple(array.shape)}; this run ({data_name}) expects {allowed}")


def normalize(data: DataBundle, raw: np.ndarray) -> torch.Tensor:
    """Apply the normalisation fitted on the training split (per feature for tables, scalar for images)."""
    mean = np.asarray(data.x_mean, dtype=np.float64)
    std = np.asarray(data.x_std, dtype=np.float64)
    if len(mean) > 1 and raw.ndim > 2:  # per-feature statistics of sequences: the last axis
        mean, std = mean.reshape(1, 1, -1), std.reshape(1, 1, -1)
    return torch.from_numpy(((raw - mean) / std).astype(np.float32))


def tokens_of(raw: np.ndarray, data: DataBundle, source: Path) -> torch.Tensor:
    """Token sequences as the model reads them: whole numbers from 0 to the vocabulary's size - 1."""
    bad = (raw != np.round(raw)) | (raw < 0) | (raw >= data.num_classes)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"input={source}: row {row}, column {col} holds {raw[row, col]:g}, not a token; allowed: whole numbers 0 to {data.num_classes - 1}")
    return torch.from_numpy(raw.astype(np.int64))


def prediction_rows(data: DataBundle, task: str, outputs: torch.Tensor, names: list[str], inputs: torch.Tensor | None = None) -> list[dict]:
    """Classification: class, index, confidence and a probability per class; a sequence-to-sequence
    run: the input and the greedily decoded tokens (and their mean probability); else the values."""
    if task == "seq2seq":
        probs = outputs.softmax(-1)
        conf, tokens = probs.max(-1)
        vocab = data.class_names or [str(i) for i in range(probs.shape[-1])]
        return [
            {"input": name, "input_tokens": " ".join(vocab[int(t)] for t in x), "pred_tokens": " ".join(vocab[int(t)] for t in tok), "confidence": float(c.mean())}
            for name, x, tok, c in zip(names, inputs, tokens, conf, strict=True)
        ]
    if task == "classification":
        probs = outputs.softmax(-1)
        classes = data.class_names or [str(i) for i in range(probs.shape[1])]
        rows = []
        for name, p in zip(names, probs.tolist(), strict=True):
            k = int(np.argmax(p))
            rows.append({"input": name, "pred": classes[k], "pred_index": k, "confidence": p[k], **{f"prob_{c}": v for c, v in zip(classes, p, strict=True)}})
        return rows
    values = to_target_units(data, outputs).tolist()
    dim = len(values[0]) if values else 1
    return [{"input": name, **{f"pred{'' if dim == 1 else f'_{j}'}": v for j, v in enumerate(row)}} for name, row in zip(names, values, strict=True)]

"""`data=series`: forecasting from a user's own time series, one time step per row of a table file.

`data.columns` are the series read as inputs (all numeric columns by default), `data.target` the
one forecast (the first of them by default); `data.time` sorts the rows by a date or time column
first. As for `data=sine`, each example is the last `data.window` steps of every column and its
target the next `data.horizon` values of the target column, and the split is by time: the first
rows train, the next validate, the last test, so no future value reaches training. Each column is
standardised by its training part's mean and std; gaps are filled by linear interpolation (and
counted in the note).
"""

from __future__ import annotations

import numpy as np
import torch

from dltrain.data.base import DATASETS, DataBundle, Split
from dltrain.data.cache import cached, file_digest
from dltrain.data.table import check_column, columns_of, read_table, table_path
from dltrain.errors import ConfigError, UserError
from dltrain.schema import Fraction, PositiveInt


def windows(values: np.ndarray, target: np.ndarray, start: int, stop: int, window: int, horizon: int) -> Split:
    """(window steps of every column -> the next horizon target values) whose targets lie in [start, stop)."""
    first = max(start, window)
    idx = np.arange(first, stop - horizon + 1)
    if len(idx) == 0:
        return Split(torch.zeros((0, window, values.shape[1])), torch.zeros((0, horizon)))
    steps = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # (T - window + 1, F, window)
    x = np.ascontiguousarray(steps[idx - window].transpose(0, 2, 1), dtype=np.float32)
    y = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(target, horizon)[idx], dtype=np.float32)
    return Split(torch.from_numpy(x), torch.from_numpy(y))


def series_frame(path: str | None, columns: list[str] | None, target: str | None, time: str | None):
    """(the file, the columns read as inputs, the target column, the frame sorted by time)."""
    import pandas as pd

    file = table_path(path)
    names = columns_of(file)
    for key, name in [("data.target", target), ("data.time", time), *(("data.columns", c) for c in columns or [])]:
        if name is not None:
            check_column(file, names, key, name)
    frame = read_table(file)
    frame.columns = [str(c) for c in frame.columns]
    if time is not None:
        frame = frame.assign(**{time: pd.to_datetime(frame[time], errors="coerce", format="mixed")}).sort_values(time, kind="stable").reset_index(drop=True)
    numeric = [c for c in names if c != time and pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    chosen = list(columns) if columns is not None else numeric
    text = [c for c in chosen if c not in numeric]
    if text:
        raise ConfigError("data.columns", chosen, f"column {text[0]!r} of {file} holds no numbers; allowed: numeric columns ({', '.join(numeric) or 'none'})")
    if not chosen:
        raise ConfigError("data.columns", columns, f"{file} has no numeric column to forecast")
    target = target or chosen[0]
    if target not in chosen:
        chosen = [target, *chosen]
    if not pd.api.types.is_numeric_dtype(frame[target]):
        raise ConfigError("data.target", target, f"holds no numbers; allowed: a numeric column ({', '.join(numeric)})")
    return file, chosen, target, frame


@DATASETS.register("series", kind="sequence", task="forecasting")
@cached("pandas", content=lambda a: file_digest(table_path(a["path"])))
def series(
    path: str | None = None,
    columns: list[str] | None = None,
    target: str | None = None,
    time: str | None = None,
    window: PositiveInt = 32,
    horizon: PositiveInt = 1,
    val_fraction: Fraction = 0.15,
    test_fraction: Fraction = 0.15,
) -> DataBundle:
    """Your own time series (a CSV, TSV, Parquet or JSON Lines file, a row per step): data.path=FILE."""
    file, chosen, target, frame = series_frame(path, columns, target, time)
    values = frame[chosen].astype("float64")
    gaps = int(values.isna().to_numpy().sum())
    if gaps:
        values = values.interpolate(limit_direction="both")
        if values.isna().to_numpy().any():
            empty = next(c for c in chosen if values[c].isna().all())
            raise ConfigError("data.columns", chosen, f"column {empty!r} of {file} holds no value; allowed: columns with numbers")
    values = values.to_numpy()
    n = len(values)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    n_train = n - n_val - n_test
    if n_train < window + horizon + 1:
        raise UserError(f"{file} has {n} rows, leaving {n_train} to train on: too few for data.window={window} and data.horizon={horizon}; allowed: a shorter window or smaller fractions")
    mean, std = values[:n_train].mean(0), values[:n_train].std(0)
    std = np.where(std > 1e-12, std, 1.0)
    scaled = (values - mean) / std
    j = chosen.index(target)
    splits = [windows(scaled, scaled[:, j], a, b, window, horizon) for a, b in ((0, n_train), (n_train, n_train + n_val), (n_train + n_val, n))]
    note = f"{file.name}: {n:,} steps of {len(chosen)} series ({', '.join(chosen)}), forecasting {target} {horizon} step(s) ahead from {window}" + (f"; {gaps} gaps interpolated" if gaps else "")
    return DataBundle(
        name="series", kind="sequence", task="forecasting", train=splits[0], val=splits[1], test=splits[2],
        x_mean=mean.tolist(), x_std=std.tolist(), y_mean=[float(mean[j])] * horizon, y_std=[float(std[j])] * horizon, note=note,
        prep={"kind": "series", "source": str(file), "columns": chosen, "target": target, "time": time, "window": window, "horizon": horizon},
    )

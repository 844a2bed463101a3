"""`data=table`: a user's own CSV, TSV, Parquet or JSON Lines file, one example per row.

The file is read by pandas (the pyarrow engine). The target column decides the task: strings,
booleans or at most `MAX_CLASS_INTEGERS` distinct integers are classes, anything else real values
to regress (`task=` chooses). The other columns are the features, or those `data.features` names,
less `data.drop`. Columns that cannot be features are left out with a note: an id (a string or an
ascending integer with one distinct value per row), a date or time, a column holding one value.

Preprocessing is fitted on the training split only, with scikit-learn's transformers: missing
values imputed (median; most frequent for strings), numeric columns standardised, string and
boolean columns one-hot encoded (at most `data.max_categories` columns each, the rarest
grouped). What was fitted is kept as JSON (`DataBundle.prep`, `preprocessing.json` in the run
directory) and applied by `apply_prep`, which `predict` uses on raw files with the original
columns in any order; a test checks it against scikit-learn's own `transform`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

from dltrain.data.base import DATASETS, DataBundle, Split, standardize, stratified_split
from dltrain.data.cache import cached, file_digest
from dltrain.errors import ConfigError, UserError, did_you_mean
from dltrain.schema import Fraction, NonNegativeInt, Range

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
MAX_CLASS_INTEGERS = 20  # an integer target with at most this many distinct values is a class label
ALLOWED = "a .csv, .tsv, .parquet or .jsonl file"


def table_path(path: str | None, key: str = "data.path") -> Path:
    """The file `data.path` names, checked: given, present, and of a kind we read."""
    if path is None:
        raise ConfigError(key, None, f"give the file to train on, e.g. {key}=train.csv ({ALLOWED})")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(key, path, "no such file" if not file.exists() else f"it is a folder; allowed: {ALLOWED}")
    if file.suffix.lower() not in SUFFIXES:
        raise ConfigError(key, path, f"unknown file type {file.suffix or '(none)'!r}; allowed: {ALLOWED}")
    return file


def columns_of(file: Path) -> list[str]:
    """The file's column names, from its header (or schema) alone."""
    fmt = SUFFIXES[file.suffix.lower()]
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(file).names)
        if fmt == "jsonl":
            with open(file, encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            record = json.loads(first) if first else {}
            if not isinstance(record, dict):
                raise ValueError("its first line is not a JSON object")
            return list(record)
        import pandas as pd

        return [str(c) for c in pd.read_csv(file, nrows=0, sep="\t" if fmt == "tsv" else ",").columns]
    except Exception as e:  # noqa: BLE001  (a file pandas or pyarrow cannot parse: one line)
        raise UserError(f"{file}: cannot read it as {fmt.upper()} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def read_table(file: Path, columns: list[str] | None = None):
    """The file as a pandas DataFrame (only `columns`, when given)."""
    import pandas as pd

    fmt = SUFFIXES[file.suffix.lower()]
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(file, columns=columns)
        elif fmt == "jsonl":
            frame = pd.read_json(file, lines=True, dtype=False)
            frame.columns = [str(c) for c in frame.columns]
            frame = frame[columns] if columns is not None else frame
        else:
            frame = pd.read_csv(file, engine="pyarrow", sep="\t" if fmt == "tsv" else ",", usecols=columns)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{file}: cannot read it as {fmt.upper()} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if len(frame) == 0:
        raise UserError(f"{file} holds no rows")
    return frame


def check_column(file: Path, columns: list[str], key: str, name: str) -> None:
    if name not in columns:
        hint = did_you_mean(name, columns)
        shown = ", ".join(columns[:12]) + (f" and {len(columns) - 12} more" if len(columns) > 12 else "")
        raise ConfigError(key, name, f"{file} has no such column; its columns: {shown}" + (f" ({hint})" if hint else ""))


def target_task(values) -> Literal["classification", "regression"]:
    """Strings, booleans or few distinct integers: classes; other numbers: values to regress."""
    import pandas as pd

    values = values.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    if pd.api.types.is_integer_dtype(values) and values.nunique() <= MAX_CLASS_INTEGERS:
        return "classification"
    return "regression"


def table_task(params: dict) -> str:
    """What `data=table` trains by default: read from the target column alone."""
    file = table_path(params.get("path"))
    target = params.get("target")
    columns = columns_of(file)
    if target is None:
        raise ConfigError("data.target", None, f"name the column to predict; {file}'s columns: {', '.join(columns[:12])}")
    check_column(file, columns, "data.target", target)
    return target_task(read_table(file, [target])[target])


def _kind_of(column) -> str:
    """numeric, category (strings, booleans), or time (dates: not a feature)."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_timedelta64_dtype(column):
        return "time"
    if pd.api.types.is_bool_dtype(column):
        return "category"
    if not pd.api.types.is_numeric_dtype(column):
        return "time" if _dates(column) else "category"
    return "numeric"


def _dates(column) -> bool:
    """Do the first non-missing values read as dates or times (ISO 8601, or date objects)?"""
    import datetime

    import pandas as pd

    head = column.dropna().head(100)
    if len(head) == 0:
        return False
    if all(isinstance(v, (datetime.date, datetime.time)) for v in head):
        return True
    if not all(isinstance(v, str) and v[:1].isdigit() for v in head):
        return False
    return bool(pd.to_datetime(head, format="ISO8601", errors="coerce").notna().all())


def choose_features(frame, target: str, features: list[str] | None, drop: list[str] | None, file: Path) -> tuple[list[str], list[str], list[str]]:
    """(numeric columns, categorical columns, notes on the columns left out)."""
    columns = [str(c) for c in frame.columns]
    for key, names in (("data.features", features or []), ("data.drop", drop or [])):
        for name in names:
            check_column(file, columns, key, name)
    if features is not None and target in features:
        raise ConfigError("data.features", features, f"it holds the target column {target!r}; allowed: the other columns")
    chosen = [c for c in (features if features is not None else columns) if c != target and c not in (drop or [])]
    numeric, categorical, notes = [], [], []
    n = len(frame)
    for name in chosen:
        column = frame[name]
        kind = _kind_of(column)
        distinct = column.nunique(dropna=True)
        if kind == "time":
            notes.append(f"{name} (dates or times)")
        elif distinct <= 1:
            notes.append(f"{name} (one value)")
        elif features is None and distinct == n and n > 20 and (kind == "category" or (_integers(column) and column.is_monotonic_increasing)):
            notes.append(f"{name} (an id: one distinct value per row)")
        else:
            (numeric if kind == "numeric" else categorical).append(name)
    if not numeric and not categorical:
        raise ConfigError("data.features" if features is not None else "data.drop", features if features is not None else drop, f"no column of {file} is left to learn from (left out: {', '.join(notes) or 'none'})")
    return numeric, categorical, notes


def _integers(column) -> bool:
    import pandas as pd

    return pd.api.types.is_integer_dtype(column)


def _as_numbers(frame, columns: list[str]) -> np.ndarray:
    return frame[columns].to_numpy(dtype=np.float64, na_value=np.nan) if columns else np.zeros((len(frame), 0))


def _codes(column) -> tuple[np.ndarray, np.ndarray]:
    """A categorical column as (codes, labels): `labels` its distinct values as strings ("True",
    "3" for booleans and numbers), sorted; `codes` each row's index into them, -1 where missing.
    pandas factorises in C, so a million rows take milliseconds, not a Python loop."""
    import pandas as pd

    raw, uniques = pd.factorize(column, use_na_sentinel=True)
    if len(uniques) == 0:
        return raw.astype(np.int64), np.array([], dtype=object)
    labels, inverse = np.unique(np.array([str(u) for u in uniques], dtype=object), return_inverse=True)
    return np.where(raw >= 0, inverse.reshape(-1)[raw], -1).astype(np.int64), labels


def fit_prep(frame, numeric: list[str], categorical: list[str], max_categories: int) -> dict:
    """Fit imputation, scaling and one-hot encoding on the training rows; return what was fitted
    as JSON-able values. scikit-learn's StandardScaler, most-frequent SimpleImputer and
    OneHotEncoder fit the columns, the categorical ones as their sorted codes (scikit-learn's own
    order, and its numeric path: about 10x faster than on Python strings); the medians are numpy's
    `nanmedian`, what SimpleImputer(strategy="median") computes. tests/test_own_data.py checks
    the result against a ColumnTransformer of those transformers on the raw strings."""
    import warnings

    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    prep: dict[str, Any] = {"numeric": [], "categorical": []}
    if numeric:
        values = _as_numbers(frame, numeric)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a column missing on every training row: its median is 0, as SimpleImputer's keep_empty_features
            median = np.nan_to_num(np.nanmedian(values, axis=0), nan=0.0)
        scaler = StandardScaler().fit(np.where(np.isnan(values), median, values))
        prep["numeric"] = [
            {"column": name, "median": float(m), "mean": float(mu), "scale": float(sd)}
            for name, m, mu, sd in zip(numeric, median, scaler.mean_, scaler.scale_, strict=True)
        ]
    if categorical:
        coded = [_codes(frame[name]) for name in categorical]
        for name, (_, labels) in zip(categorical, coded, strict=True):
            if len(labels) == 0:
                raise ConfigError("data.drop", None, f"column {name!r} holds no value in the training split; allowed: a list that leaves it out, e.g. data.drop=[{name}]")
        values = np.stack([np.where(codes >= 0, codes, np.nan) for codes, _ in coded], axis=1)
        imputer = SimpleImputer(strategy="most_frequent").fit(values)
        encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=max_categories, sparse_output=False).fit(imputer.transform(values))
        infrequent = getattr(encoder, "infrequent_categories_", [None] * len(categorical))
        for j, (name, (_, labels)) in enumerate(zip(categorical, coded, strict=True)):
            rare = [str(labels[int(v)]) for v in infrequent[j]] if infrequent[j] is not None else []
            kept = [str(labels[int(v)]) for v in encoder.categories_[j] if str(labels[int(v)]) not in set(rare)]
            prep["categorical"].append({"column": name, "most_frequent": str(labels[int(imputer.statistics_[j])]), "categories": kept, "infrequent": rare})
    return prep


def prep_features(prep: dict) -> list[str]:
    """The model's input features, in order: the numeric columns, then one per category."""
    names = [c["column"] for c in prep["numeric"]]
    for c in prep["categorical"]:
        names += [f"{c['column']}={v}" for v in c["categories"]] + ([f"{c['column']}=(other)"] if c["infrequent"] else [])
    return names


def apply_prep(prep: dict, frame, source: str = "the file") -> np.ndarray:
    """Raw rows -> the model's float32 inputs, with exactly what was fitted on the training split
    (scikit-learn's imputer, scaler and encoder, written out)."""
    columns = [str(c) for c in frame.columns]
    needed = [c["column"] for c in prep["numeric"]] + [c["column"] for c in prep["categorical"]]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(f"{source} has no column {missing[0]!r}" + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "") + f"; the run was trained on columns: {', '.join(needed)}")
    parts = []
    if prep["numeric"]:
        names = [c["column"] for c in prep["numeric"]]
        try:
            values = _as_numbers(frame, names)
        except (TypeError, ValueError) as e:
            raise UserError(f"{source}: a numeric column holds text ({str(e).splitlines()[0]}); the run was trained on numbers in {', '.join(names)}") from None
        values = values if values.flags.writeable else values.copy()  # pandas may hand out a read-only view
        median = np.array([c["median"] for c in prep["numeric"]])
        np.copyto(values, np.broadcast_to(median, values.shape), where=np.isnan(values))
        values -= np.array([c["mean"] for c in prep["numeric"]])
        values /= np.array([c["scale"] for c in prep["numeric"]])
        parts.append(values.astype(np.float32))
    import pandas as pd

    for c in prep["categorical"]:
        raw, uniques = pd.factorize(frame[c["column"]], use_na_sentinel=True)
        kept = pd.Index(c["categories"], dtype=object)
        # each distinct value's column (-1: none kept), and last the imputed value's, for missing rows (raw code -1)
        lookup = np.append(kept.get_indexer(np.array([str(u) for u in uniques], dtype=object)), kept.get_indexer([c["most_frequent"]]))
        codes = lookup[raw]
        width = len(c["categories"]) + bool(c["infrequent"])
        if c["infrequent"]:
            codes = np.where(codes < 0, width - 1, codes)  # a rare or unseen category: the infrequent column, as scikit-learn's encoder
        onehot = np.zeros((len(frame), width), dtype=np.float32)
        rows = np.flatnonzero(codes >= 0)
        onehot[rows, codes[rows]] = 1.0
        parts.append(onehot)
    return np.concatenate(parts, axis=1).astype(np.float32)


@DATASETS.register("table", kind="table", task=table_task, tasks=("classification", "regression"))
@cached("scikit-learn", content=lambda a: file_digest(table_path(a["path"])))
def table(
    path: str | None = None,
    target: str | None = None,
    features: list[str] | None = None,
    drop: list[str] | None = None,
    missing: Literal["impute", "drop", "error"] = "impute",
    max_categories: Annotated[int, Range(2)] = 50,
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.2,
    split_seed: NonNegativeInt = 0,
    task: str | None = None,
) -> DataBundle:
    """Your own table (CSV, TSV, Parquet, JSON Lines): data.path=FILE data.target=COLUMN."""
    file = table_path(path)
    task = task if task in ("classification", "regression") else table_task({"path": path, "target": target})
    frame = read_table(file)
    frame.columns = [str(c) for c in frame.columns]
    numeric, categorical, notes = choose_features(frame, target, features, drop, file)
    used = numeric + categorical
    y_raw = frame[target]
    notes_text = [f"{file.name}: {len(frame):,} rows"]
    unlabelled = y_raw.isna().to_numpy()
    if unlabelled.any():
        notes_text.append(f"{int(unlabelled.sum())} rows without a {target} dropped")
    gaps = frame[used].isna().to_numpy()
    holes = gaps.any(1) & ~unlabelled
    if holes.any():
        first_row = int(np.argmax(holes))
        first_col = used[int(np.argmax(gaps[first_row]))]
        if missing == "error":
            raise ConfigError("data.missing", "error", f"{file} row {first_row + 1} has no {first_col} ({int(holes.sum())} rows miss a value); allowed: impute or drop")
        notes_text.append(f"{int(holes.sum())} rows with missing values " + ("dropped" if missing == "drop" else f"imputed ({int(gaps[~unlabelled].sum())} values)"))
    keep = ~unlabelled & ~(holes if missing == "drop" else np.zeros_like(holes))
    frame = frame[keep].reset_index(drop=True)
    y_raw = y_raw[keep].reset_index(drop=True)
    if notes:
        notes_text.append("left out: " + ", ".join(notes))

    if task == "classification":
        if _integers(y_raw):
            class_values, y = np.unique(y_raw.to_numpy(), return_inverse=True)
        else:
            y, class_values = _codes(y_raw)  # labels as strings, sorted (no row is missing one here)
        if len(class_values) < 2:
            raise ConfigError("data.target", target, f"every labelled row of {file} is of one class ({class_values[0]!s}); allowed: a column with 2 or more classes")
        by = "class"
    else:
        try:
            y = y_raw.astype("float64").to_numpy()[:, None]
        except (TypeError, ValueError):
            raise ConfigError("task", "regression", f"data.target={target!r} holds text, not numbers; allowed: classification") from None
        by = "quantile"
    rows = np.arange(len(frame))
    (itr, ytr), (iva, yva), (ite, yte) = stratified_split(rows, y, val_fraction, test_fraction, split_seed, by=by)
    prep = fit_prep(frame.iloc[itr], numeric, categorical, max_categories)
    prep.update(format=1, source=str(file), target=target, task=task, features=prep_features(prep))
    inputs = apply_prep(prep, frame, str(file))  # one pass over every row, then split
    xs = [inputs[i] for i in (itr, iva, ite)]
    width = xs[0].shape[1]
    common = dict(name="table", kind="table", task=task, x_mean=[0.0] * width, x_std=[1.0] * width, note="; ".join(notes_text), prep=prep)
    if task == "classification":
        as_split = lambda a, b: Split(torch.from_numpy(a), torch.from_numpy(b.astype(np.int64)))  # noqa: E731
        names = [str(v) for v in class_values]
        prep["classes"] = names
        return DataBundle(train=as_split(xs[0], ytr), val=as_split(xs[1], yva), test=as_split(xs[2], yte), num_classes=len(names), class_names=names, **common)
    (ytr, yva, yte), y_mean, y_std = standardize(ytr.astype(np.float32), yva.astype(np.float32), yte.astype(np.float32), per_feature=True)
    as_split = lambda a, b: Split(torch.from_numpy(a), torch.from_numpy(b))  # noqa: E731
    return DataBundle(train=as_split(xs[0], ytr), val=as_split(xs[1], yva), test=as_split(xs[2], yte), y_mean=y_mean, y_std=y_std, **common)

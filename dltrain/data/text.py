"""`data=text`: classify (or regress) a user's own texts, one per row of a table file.

`data.text` names the column of texts and `data.target` the column to predict (the task follows
from it as for `data=table`). Texts become lowercase word tokens (`\\w+`, Unicode-aware); the
vocabulary is the `data.vocab_size - 2` most frequent tokens of the training split (ties broken
alphabetically), with id 0 for padding and 1 for a word outside it. Each text is cut to its
first `data.max_len` tokens and padded at the front, so a recurrent model's last step is the
text's last word. The vocabulary is kept with the run (`preprocessing.json`), and `predict`
tokenises raw texts with it. Models read the ids through an embedding: `model=embedding_bag`
(the mean of the words' vectors) and `rnn`, `lstm`, `gru` (`model.embedding_dim`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated

import numpy as np
import torch

from dltrain.data.base import DATASETS, DataBundle, Split, standardize, stratified_split
from dltrain.data.cache import cached, file_digest
from dltrain.data.table import _codes, _integers, check_column, columns_of, read_table, table_path, target_task
from dltrain.errors import ConfigError
from dltrain.schema import Fraction, NonNegativeInt, Range

PAD, UNKNOWN = 0, 1
WORD = re.compile(r"\w+")


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    return WORD.findall(text.lower() if lowercase else text)


def encode(texts, vocab: list[str], max_len: int, lowercase: bool = True) -> np.ndarray:
    """Texts -> (N, max_len) int64 ids, padded at the front with 0; unknown words are 1."""
    index = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for row, text in enumerate(texts):
        ids = [index.get(w, UNKNOWN) for w in tokenize(str(text) if text == text and text is not None else "", lowercase)[:max_len]]
        if ids:
            out[row, max_len - len(ids) :] = ids
    return out


def text_task(params: dict) -> str:
    file = table_path(params.get("path"))
    columns = columns_of(file)
    for key in ("text", "target"):
        if params.get(key) is None:
            raise ConfigError(f"data.{key}", None, f"name the column {'of texts' if key == 'text' else 'to predict'}; {file}'s columns: {', '.join(columns[:12])}")
        check_column(file, columns, f"data.{key}", params[key])
    return target_task(read_table(file, [params["target"]])[params["target"]])


@DATASETS.register("text", kind="text", task=text_task, tasks=("classification", "regression"))
@cached("scikit-learn", content=lambda a: file_digest(table_path(a["path"])))
def text(
    path: str | None = None,
    text: str | None = None,
    target: str | None = None,
    vocab_size: Annotated[int, Range(3)] = 20000,
    max_len: Annotated[int, Range(1)] = 200,
    lowercase: bool = True,
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.2,
    split_seed: NonNegativeInt = 0,
    task: str | None = None,
) -> DataBundle:
    """Your own texts (a table file with a text column and a target column): data.path=FILE data.text=COL data.target=COL."""
    file = table_path(path)
    task = task if task in ("classification", "regression") else text_task({"path": path, "text": text, "target": target})
    frame = read_table(file, [text, target] if text != target else [text])
    frame = frame[frame[target].notna()].reset_index(drop=True)
    texts = frame[text].to_numpy(dtype=object)
    y_raw = frame[target]
    if task == "classification":
        if _integers(y_raw):
            class_values, y = np.unique(y_raw.to_numpy(), return_inverse=True)
        else:
            y, class_values = _codes(y_raw)
        if len(class_values) < 2:
            raise ConfigError("data.target", target, f"every labelled row of {file} is of one class ({class_values[0]!s}); allowed: a column with 2 or more classes")
        by = "class"
    else:
        try:
            y = y_raw.astype("float64").to_numpy()[:, None]
        except (TypeError, ValueError):
            raise ConfigError("task", "regression", f"data.target={target!r} holds text, not numbers; allowed: classification") from None
        by = "quantile"
    (itr, ytr), (iva, yva), (ite, yte) = stratified_split(np.arange(len(frame)), y, val_fraction, test_fraction, split_seed, by=by)
    counts = Counter(w for t in texts[itr] for w in tokenize(str(t) if t == t and t is not None else "", lowercase))
    vocab = ["<pad>", "<unk>"] + [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 2]]
    longest = max((len(tokenize(str(t), lowercase)) for t in texts[itr] if t == t and t is not None), default=1)
    length = max(1, min(max_len, longest))
    ids = encode(texts, vocab, length, lowercase)
    prep = {"kind": "text", "source": str(file), "text": text, "target": target, "task": task, "vocab": vocab, "max_len": length, "lowercase": lowercase}
    note = f"{file.name}: {len(frame):,} texts, a vocabulary of {len(vocab):,} words from {len(counts):,} in the training split, {length} tokens at most"
    common = dict(name="text", kind="text", task=task, x_mean=[], x_std=[], note=note, prep=prep)
    split = lambda i, t: Split(torch.from_numpy(np.ascontiguousarray(ids[i])), torch.from_numpy(np.ascontiguousarray(t)))  # noqa: E731
    if task == "classification":
        names = [str(v) for v in class_values]
        prep["classes"] = names
        return DataBundle(train=split(itr, ytr.astype(np.int64)), val=split(iva, yva.astype(np.int64)), test=split(ite, yte.astype(np.int64)), num_classes=len(names), class_names=names, **common)
    (ytr, yva, yte), y_mean, y_std = standardize(ytr.astype(np.float32), yva.astype(np.float32), yte.astype(np.float32), per_feature=True)
    return DataBundle(train=split(itr, ytr), val=split(iva, yva), test=split(ite, yte), y_mean=y_mean, y_std=y_std, **common)

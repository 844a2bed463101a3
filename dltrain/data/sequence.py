"""Generated sequences: series for forecasting (a noisy sum of sines, the Mackey-Glass system), the adding problem, and token sequences to reverse."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from dltrain.data.base import DATASETS, DataBundle, Split, standardize
from dltrain.errors import UserError
from dltrain.schema import Fraction, NonNegative, NonNegativeInt, PositiveInt, Range

SeriesLength = Annotated[int, Range(200)]


def mackey_glass_series(length: int, tau: int = 17, beta: float = 0.2, gamma: float = 0.1, n: float = 10.0, dt: float = 1.0, seed: int = 0) -> np.ndarray:
    """Mackey-Glass delay differential equation, Euler-integrated (chaotic for tau >= 17)."""
    rng = np.random.default_rng(seed)
    history = int(tau / dt)
    warmup = 500
    x = np.empty(length + warmup + history)
    x[: history + 1] = 1.2 + 0.01 * rng.standard_normal(history + 1)
    for t in range(history, len(x) - 1):
        delayed = x[t - history]
        x[t + 1] = x[t] + dt * (beta * delayed / (1 + delayed**n) - gamma * x[t])
    return x[history + warmup :].astype(np.float32)


def sine_series(length: int, noise: float, seed: int) -> np.ndarray:
    """Two incommensurate sines plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    x = np.sin(2 * np.pi * t / 25) + 0.5 * np.sin(2 * np.pi * t / 63 + 1.0) + noise * rng.standard_normal(length)
    return x.astype(np.float32)


def forecasting_bundle(name: str, series: np.ndarray, window: int, horizon: int, val_fraction: float, test_fraction: float) -> DataBundle:
    """Cut a series into (window -> next horizon values) pairs, split chronologically.

    The split is by time (train, then val, then test) so no future value leaks into training;
    normalisation is fitted on the training part of the series.
    """
    n = len(series)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    n_train = n - n_val - n_test
    if n_train < window + horizon + 1:
        raise UserError(
            f"data.length={n} leaves {n_train} training values, too few for data.window={window} "
            f"and data.horizon={horizon}; use a longer series or a shorter window"
        )
    (scaled,), mean, std = standardize(series[:n_train], per_feature=False)
    series = ((series - mean[0]) / std[0]).astype(np.float32)

    def windows(start: int, stop: int) -> Split:
        # a target value at index i belongs to the part that contains i
        first = max(start, window)
        idx = np.arange(first, stop - horizon + 1)
        x = np.stack([series[i - window : i] for i in idx])[:, :, None] if len(idx) else np.zeros((0, window, 1), np.float32)
        y = np.stack([series[i : i + horizon] for i in idx]) if len(idx) else np.zeros((0, horizon), np.float32)
        return Split(torch.from_numpy(x), torch.from_numpy(y))

    return DataBundle(
        name=name,
        kind="sequence",
        task="forecasting",
        train=windows(0, n_train),
        val=windows(n_train, n_train + n_val),
        test=windows(n_train + n_val, n),
        x_mean=mean,
        x_std=std,
        y_mean=mean * horizon,
        y_std=std * horizon,
    )


@DATASETS.register("sine", kind="sequence", task="forecasting")
def sine(
    length: SeriesLength = 2000,
    window: PositiveInt = 32,
    horizon: PositiveInt = 1,
    noise: NonNegative = 0.1,
    val_fraction: Fraction = 0.15,
    test_fraction: Fraction = 0.15,
    seed: NonNegativeInt = 0,
) -> DataBundle:
    """Noisy sum of two sines; forecast the next `horizon` values from the last `window`."""
    return forecasting_bundle("sine", sine_series(length, noise, seed), window, horizon, val_fraction, test_fraction)


@DATASETS.register("mackey_glass", kind="sequence", task="forecasting")
def mackey_glass(
    length: SeriesLength = 2000,
    window: PositiveInt = 32,
    horizon: PositiveInt = 1,
    tau: PositiveInt = 17,
    val_fraction: Fraction = 0.15,
    test_fraction: Fraction = 0.15,
    seed: NonNegativeInt = 0,
) -> DataBundle:
    """Mackey-Glass chaotic series (tau=17), the classic benchmark for recurrent forecasters."""
    return forecasting_bundle("mackey_glass", mackey_glass_series(length, tau=tau, seed=seed), window, horizon, val_fraction, test_fraction)


def split_sizes(size: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes of `size` generated examples; as every dataset's, val is a fraction
    of what the test split leaves. An empty split is one line naming the keys."""
    n_test = int(size * test_fraction)
    n_val = int((size - n_test) * val_fraction)
    n_train = size - n_val - n_test
    if n_train < 1 or n_val < 1 or n_test < 1:
        raise UserError(f"data.size={size} with data.val_fraction={val_fraction} and data.test_fraction={test_fraction} leaves an empty split; use a larger data.size")
    return n_train, n_val, n_test


def adding_problem(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` sequences of `length` steps with two features, a value drawn from U(0, 1) and a marker,
    1 at two steps (one in each half) and 0 elsewhere; the target is the sum of the two marked
    values (Hochreiter & Schmidhuber 1997, in the form of Le, Jaitly & Hinton 2015)."""
    values = rng.uniform(0.0, 1.0, (n, length))
    half = length // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = markers[rows, second] = 1.0
    x = np.stack([values, markers], -1).astype(np.float32)
    y = (values[rows, first] + values[rows, second]).astype(np.float32)[:, None]
    return x, y


@DATASETS.register("adding", kind="sequence", task="regression")
def adding(
    length: Annotated[int, Range(2)] = 100,
    size: Annotated[int, Range(10)] = 10000,
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.1,
    seed: NonNegativeInt = 0,
) -> DataBundle:
    """The adding problem: sum the two marked values of a long sequence (a long-range memory test; answering 1 scores MSE 1/6)."""
    rng = np.random.default_rng(seed)
    x, y = adding_problem(size, length, rng)
    n_train, n_val, n_test = split_sizes(size, val_fraction, test_fraction)
    # each feature (value, marker) standardised over the training sequences' steps; the target too, its metrics in its own units
    x_mean, x_std = x[:n_train].mean((0, 1), dtype=np.float64), x[:n_train].std((0, 1), dtype=np.float64)
    y_mean, y_std = float(y[:n_train].mean()), float(y[:n_train].std()) or 1.0
    scaled = torch.from_numpy((y - y_mean) / y_std)
    xs = torch.from_numpy(((x - x_mean) / x_std).astype(np.float32))

    def part(a: int, b: int) -> Split:
        return Split(xs[a:b], scaled[a:b])

    return DataBundle(
        name="adding",
        kind="sequence",
        task="regression",
        train=part(0, n_train),
        val=part(n_train, n_train + n_val),
        test=part(n_train + n_val, size),
        x_mean=x_mean.tolist(),
        x_std=x_std.tolist(),
        y_mean=[y_mean],
        y_std=[y_std],
        note=f"adding problem: {size} sequences of {length} steps (values, markers); answering the mean scores test MSE {1 / 6:.3f}",
    )


@DATASETS.register("reverse", kind="tokens", task="seq2seq")
def reverse(
    length: PositiveInt = 10,
    vocab: Annotated[int, Range(2)] = 10,
    size: Annotated[int, Range(10)] = 10000,
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.1,
    seed: NonNegativeInt = 0,
) -> DataBundle:
    """Reverse a sequence of tokens: the classic sequence-to-sequence toy task (Sutskever et al. 2014)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, vocab, (size, length)))
    y = x.flip(1).contiguous()
    n_train, n_val, n_test = split_sizes(size, val_fraction, test_fraction)
    return DataBundle(
        name="reverse",
        kind="tokens",
        task="seq2seq",
        train=Split(x[:n_train], y[:n_train]),
        val=Split(x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
        test=Split(x[n_train + n_val :], y[n_train + n_val :]),
        num_classes=vocab,
        class_names=[str(i) for i in range(vocab)],
        note=f"reverse: {size} sequences of {length} tokens from a vocabulary of {vocab}",
    )

"""Generated time series for forecasting: a noisy sum of sines and the Mackey-Glass system."""

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

"""Supervised tasks: classification, regression and forecasting."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dltrain.data.base import DataBundle, Split
from dltrain.registry import Entry
from dltrain.tasks.base import TASKS, Task


class SupervisedTask(Task):
    """Common shape of a supervised task: ``loss(model(x), y)`` and on-device metric sums."""

    name = "supervised"
    kept: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # the final test's per-batch results test_pictures draws

    def keep_predictions(self, keep: bool) -> None:
        self.kept = [] if keep else None

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output.float(), y)

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        return self.loss(model(x), y)

    def update(self, state: torch.Tensor, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.accumulate(state, model(x), y)


@TASKS.register("classification", help="predict one of K classes; metrics: loss, accuracy")
class ClassificationTask(SupervisedTask):
    name = "classification"
    metrics = ("loss", "accuracy")
    higher_is_better = frozenset({"accuracy"})

    mistakes = 16  # how many of the final test's most confident mistakes plots/mistakes.png shows

    def __init__(self, data: DataBundle, loss_entry: Entry, loss_fn: nn.Module) -> None:
        super().__init__(data, loss_entry, loss_fn)
        self.num_classes = data.num_classes
        self.dense = loss_entry.meta["target"] == "dense"
        self.probs = loss_entry.meta.get("input") == "probs"

    @staticmethod
    def out_features(data: DataBundle) -> int:
        return data.num_classes

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        output = output.float()
        if not self.dense:
            return self.loss_fn(output, y)
        target = F.one_hot(y, self.num_classes).float()
        return self.loss_fn(output.softmax(-1) if self.probs else output, target)

    def new_state(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count

    def accumulate(self, state: torch.Tensor, output: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        state[0] += self.loss(output, y).double() * n
        state[1] += (output.argmax(-1) == y).sum()
        state[2] += n
        if self.kept is not None:  # (confidence, prediction), on the device, no sync: read once the test is done
            self.kept.append(output.detach().float().softmax(-1).max(-1))

    def test_pictures(self, split: Split) -> dict[str, Any] | None:
        """The final test's confusion matrix and its most confident mistakes (with their images
        for image data), from the predictions kept in order while testing."""
        if not self.kept:
            return None
        confidence, pred = (torch.cat(t).cpu() for t in zip(*self.kept, strict=True))
        y = split.y[: len(pred)].cpu()  # the test loader runs in order (perhaps limited to its first batches)
        k = self.num_classes
        matrix = torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)
        wrong = (pred != y).nonzero().flatten()
        worst = wrong[confidence[wrong].argsort(descending=True, stable=True)][: self.mistakes]
        names = self.data.class_names or [str(i) for i in range(k)]
        pictures: dict[str, Any] = {
            "kind": "classification",
            "classes": names,
            "confusion": matrix.tolist(),
            "mistakes": [{"index": int(i), "true": names[y[i]], "pred": names[pred[i]], "confidence": round(float(confidence[i]), 4)} for i in worst],
            "wrong": len(wrong),
        }
        if self.data.kind == "image" and len(worst):
            x = split.x[worst.to(split.x.device)].float().cpu()
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            pictures["images"] = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).tolist()  # (N, H, W, C)
        return pictures

    def compute(self, state: torch.Tensor) -> dict[str, float]:
        loss_sum, correct, count = state.tolist()
        return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}


@TASKS.register("regression", help="predict real values; metrics: loss, rmse, mae, r2 (original units)")
class RegressionTask(SupervisedTask):
    name = "regression"
    metrics = ("loss", "rmse", "mae", "r2")
    higher_is_better = frozenset({"r2"})

    def __init__(self, data: DataBundle, loss_entry: Entry, loss_fn: nn.Module) -> None:
        super().__init__(data, loss_entry, loss_fn)
        dim = data.target_dim
        # Targets are standardised for training; metrics undo it so they read in data units.
        self.y_mean = torch.tensor(data.y_mean or [0.0] * dim, dtype=torch.float64)
        self.y_std = torch.tensor(data.y_std or [1.0] * dim, dtype=torch.float64)
        self.dim = dim

    def new_state(self, device: torch.device) -> torch.Tensor:
        # [loss sum, count, then per output: sse, sae, sum y, sum y^2]
        self.y_mean, self.y_std = self.y_mean.to(device), self.y_std.to(device)
        return torch.zeros(2 + 4 * self.dim, dtype=torch.float64, device=device)

    def accumulate(self, state: torch.Tensor, output: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        out = output.double().reshape(n, -1) * self.y_std + self.y_mean
        true = y.double().reshape(n, -1) * self.y_std + self.y_mean
        err = out - true
        state[0] += self.loss(output, y).double() * n
        state[1] += n
        sums = state[2:].view(4, self.dim)
        sums[0] += err.pow(2).sum(0)
        sums[1] += err.abs().sum(0)
        sums[2] += true.sum(0)
        sums[3] += true.pow(2).sum(0)
        if self.kept is not None:  # (predicted, true) in data units
            self.kept.append((out.detach().float(), true.float()))

    points = 2000  # the most test examples plots/pred_vs_true.png and forecast.png show

    def test_pictures(self, split: Split) -> dict[str, Any] | None:
        """The final test's predictions against the truth, in the data's units (a forecaster's
        first step ahead traces the series over the test period)."""
        if not self.kept:
            return None
        pred, true = (torch.cat(t)[: self.points].cpu() for t in zip(*self.kept, strict=True))
        return {"kind": self.name, "pred": pred.tolist(), "true": true.tolist()}

    def compute(self, state: torch.Tensor) -> dict[str, float]:
        count = max(state[1].item(), 1.0)
        sse, sae, sy, sy2 = state[2:].view(4, self.dim)
        sst = (sy2 - sy.pow(2) / count).clamp_min(1e-12)
        return {
            "loss": state[0].item() / count,
            "rmse": (sse.sum() / (count * self.dim)).sqrt().item(),
            "mae": (sae.sum() / (count * self.dim)).item(),
            "r2": (1 - sse / sst).mean().item(),  # averaged over outputs, as scikit-learn does
        }


@TASKS.register("forecasting", help="predict the next values of a series from a window; metrics as regression")
class ForecastingTask(RegressionTask):
    name = "forecasting"

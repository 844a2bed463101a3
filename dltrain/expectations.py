"""What a recipe promises: its `expected:` bounds on the metrics a run writes to summary.json.

    expected:
      test.accuracy: {min: 0.97}
      best.val_loss: {max: 0.1}

`check_expected` validates the section against what the run's task produces (part of validating
a config); `check_results` compares a finished run's summary with it (`dltrain verify`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dltrain.errors import UserError, did_you_mean
from dltrain.schema import check_value

BOUNDS = ("min", "max")


def describe_bounds(bounds: Mapping[str, float]) -> str:
    parts = []
    if "min" in bounds:
        parts.append(f">= {bounds['min']:g}")
    if "max" in bounds:
        parts.append(f"<= {bounds['max']:g}")
    return " and ".join(parts)


def flatten_expected(node: Mapping, prefix: str = "") -> dict[str, dict[str, Any]]:
    """{test: {accuracy: {min: 0.9}}} or {"test.accuracy": {min: 0.9}} -> {"test.accuracy": {"min": 0.9}}."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and set(v) <= set(BOUNDS):
            out[key] = {**out.get(key, {}), **v}
        elif isinstance(v, Mapping) and v:
            for k2, bounds in flatten_expected(v, key + ".").items():
                out[k2] = {**out.get(k2, {}), **bounds}
        else:
            raise UserError(f"expected.{key}={v!r} is not allowed; give bounds, e.g. expected: {{{key}: {{min: 0.9}}}}")
    return out


def producible(task_cls, grad_norms: bool = False, averaged: bool = False, ensemble: bool = False, cv: bool = False) -> list[str]:
    """The summary.json metrics a task writes, as `expected:` keys (with trainer.log_grad_norms,
    also the last epoch's first-to-last layer gradient-norm ratio; with trainer.ema or
    trainer.swa, the test metrics of the last trained, unaveraged weights; with cv.k=K, the
    folds' mean validation metrics, best.cv_val_*, which `verify` checks with the mean test.*)."""
    metrics = list(task_cls.metrics)
    extra = ["grad_norms.first_to_last"] if grad_norms else []
    extra += [f"test_unaveraged.{m}" for m in metrics] if averaged else []
    extra += [f"{s}.{m}" for s in ("test_member_mean", "test_member_best") for m in metrics] if ensemble else []
    extra += [f"best.cv_val_{m}" for m in metrics] if cv else []
    return [*(f"test.{m}" for m in metrics), *(f"best.val_{m}" for m in metrics), *(f"final.val_{m}" for m in metrics), "final.train_loss", *extra]


def check_expected(node: Any, task_cls, grad_norms: bool = False, averaged: bool = False, ensemble: bool = False, cv: bool = False) -> dict[str, dict[str, float]]:
    """Validate a recipe's `expected:` section against what the task produces."""
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise UserError(f"expected={node!r} is not allowed; give metric bounds, e.g. expected: {{test.accuracy: {{min: 0.9}}}}")
    allowed = producible(task_cls, grad_norms, averaged, ensemble, cv)
    out = {}
    for key, bounds in flatten_expected(node).items():
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise UserError(f"expected.{key}: task {task_cls.name} never produces {key}; it produces: {', '.join(allowed)}" + (f" ({hint})" if hint else ""))
        out[key] = {b: check_value(f"expected.{key}.{b}", v, float) for b, v in bounds.items()}
        if "min" in out[key] and "max" in out[key] and out[key]["min"] > out[key]["max"]:
            raise UserError(f"expected.{key}: min {out[key]['min']:g} is above max {out[key]['max']:g}")
    return out


def metric_value(summary: Mapping[str, Any], key: str) -> float | None:
    node: Any = summary
    section, _, name = key.partition(".")
    node = (node.get(section) or {}) if isinstance(node, Mapping) else {}
    value = node.get(name) if isinstance(node, Mapping) else None
    return value if isinstance(value, (int, float)) else None


@dataclass
class Check:
    metric: str
    bounds: dict[str, float]
    value: float | None

    @property
    def ok(self) -> bool:
        v = self.value
        if v is None or v != v:
            return False
        return v >= self.bounds.get("min", -float("inf")) and v <= self.bounds.get("max", float("inf"))


def check_results(expected: Mapping[str, Mapping[str, float]], summary: Mapping[str, Any]) -> list[Check]:
    return [Check(k, dict(b), metric_value(summary, k)) for k, b in expected.items()]

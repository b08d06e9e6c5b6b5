"""``Metric``: the evaluation figure that judges a pruned model, and how evaluation figures are computed.

Evaluation results follow the transformers convention: a dict of ``eval_<name>`` floats. Without a
user's ``compute_metrics`` the figures come from torchmetrics on the model's logits and labels; with one,
it is called with a transformers ``EvalPrediction`` and its keys are prefixed, as ``Trainer.evaluate`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
from torch import Tensor
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
from torchmetrics.functional.classification import (
    binary_f1_score,
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_matthews_corrcoef,
)

if TYPE_CHECKING:
    from transformers import EvalPrediction

ComputeMetrics = Callable[["EvalPrediction"], dict[str, Any]]

#: Names that evaluation computes without a ``compute_metrics``: loss, classification and regression figures.
BUILTIN_METRICS: tuple[str, ...] = (
    "eval_loss",
    "eval_accuracy",
    "eval_f1",
    "eval_matthews_correlation",
    "eval_pearson",
    "eval_spearmanr",
)


@dataclass
class Metric:
    """Which evaluation figure judges the pruned model, and how much loss of it is tolerated.

    Args:
        name: an evaluation key, e.g. ``eval_accuracy``; see ``BUILTIN_METRICS`` for the ones computed
            without a ``compute_metrics``.
        greater_is_better: False for figures such as ``eval_loss``.
        is_relative: whether ``criterion`` is a fraction of the dense baseline (True) or an absolute amount.
        criterion: the tolerated loss, e.g. 0.01 = 1% of the baseline when relative.
        weight_ratio: the weight of this figure when several metrics are combined into one score.
    """

    name: str
    greater_is_better: bool = True
    is_relative: bool = True
    criterion: float = 0.01
    weight_ratio: Optional[float] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.startswith("eval_") or self.name == "eval_":
            raise ValueError(
                f"Metric.name={self.name!r} is not an evaluation key: use 'eval_<name>', e.g. one of "
                f"{', '.join(BUILTIN_METRICS)} or 'eval_<key>' for a key your compute_metrics returns"
            )
        if not _is_number(self.criterion) or not math.isfinite(self.criterion) or self.criterion < 0:
            raise ValueError(f"Metric.criterion must be a finite number >= 0, got {self.criterion!r}")
        if self.weight_ratio is not None and (not _is_number(self.weight_ratio) or not 0 < self.weight_ratio <= 1):
            raise ValueError(f"Metric.weight_ratio must be a number in (0, 1] or None, got {self.weight_ratio!r}")


def as_metric_list(metrics: Union[Metric, Sequence[Metric], None]) -> list[Metric]:
    """The metrics as a list, checked to combine into one score (same criterion and direction; weights for
    all or none, equal weights when none are given)."""
    if metrics is None:
        return []
    metric_list = [metrics] if isinstance(metrics, Metric) else list(metrics)
    for index, metric in enumerate(metric_list):
        if not isinstance(metric, Metric):
            raise ValueError(f"PruningConfig.metrics[{index}] must be a Metric, got {type(metric).__name__}")
    if len(metric_list) > 1:
        first = metric_list[0]
        for field in ("greater_is_better", "is_relative", "criterion"):
            if any(getattr(m, field) != getattr(first, field) for m in metric_list):
                raise ValueError(f"PruningConfig.metrics must share one {field}: they are combined into one score")
        weights = [m.weight_ratio for m in metric_list]
        if any(w is None for w in weights) and any(w is not None for w in weights):
            raise ValueError("PruningConfig.metrics: give weight_ratio to every metric or to none (equal weights)")
    return metric_list


def combined_score(metrics: Sequence[Metric], results: dict[str, float]) -> float:
    """The weighted sum of the metrics' values in ``results`` (a single metric: its value)."""
    missing = [m.name for m in metrics if m.name not in results]
    if missing:
        raise ValueError(
            f"Metric.name {', '.join(map(repr, missing))} is not among the evaluation results; "
            f"available: {', '.join(sorted(results))}"
        )
    weights = [m.weight_ratio if m.weight_ratio is not None else 1 / len(metrics) for m in metrics]
    return sum(w * float(results[m.name]) for w, m in zip(weights, metrics, strict=True))


@dataclass(frozen=True)
class MetricComparison:
    """The metric score of the dense baseline and of the pruned model, judged by the Metric's criterion."""

    names: list[str]
    baseline: float
    final: float
    relative_change: float
    criterion_met: bool


def compare(metrics: Sequence[Metric], baseline: dict[str, float], final: dict[str, float]) -> MetricComparison:
    """Judges the pruned model's results against the baseline's: its loss of score (relative to the
    baseline when ``is_relative``) must be at most the criterion."""
    first = metrics[0]
    before, after = combined_score(metrics, baseline), combined_score(metrics, final)
    loss = before - after if first.greater_is_better else after - before
    relative_change = (after - before) / abs(before) if before else (0.0 if after == before else math.inf)
    tolerated = first.criterion * abs(before) if first.is_relative else first.criterion
    return MetricComparison(
        names=[m.name for m in metrics],
        baseline=before,
        final=after,
        relative_change=relative_change,
        criterion_met=loss <= tolerated,
    )


def builtin_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """torchmetrics figures: accuracy, F1 (binary, or macro over classes) and Matthews correlation for
    classification logits; Pearson and Spearman correlation for one-column (regression) outputs."""
    if logits.shape[-1] == 1 or labels.is_floating_point():
        predictions, targets = logits.reshape(-1).float(), labels.reshape(-1).float()
        return {
            "pearson": float(pearson_corrcoef(predictions, targets)),
            "spearmanr": float(spearman_corrcoef(predictions, targets)),
        }
    num_classes = logits.shape[-1]
    predictions = logits.argmax(dim=-1)
    if num_classes == 2:
        f1 = binary_f1_score(predictions, labels)
    else:
        f1 = multiclass_f1_score(predictions, labels, num_classes, average="macro")
    return {
        "accuracy": float(multiclass_accuracy(predictions, labels, num_classes, average="micro")),
        "f1": float(f1),
        "matthews_correlation": float(multiclass_matthews_corrcoef(predictions, labels, num_classes)),
    }


def evaluation_results(
    loss: float,
    logits: Tensor,
    labels: Optional[Tensor],
    compute_metrics: Optional[ComputeMetrics] = None,
    prefix: str = "eval_",
) -> dict[str, float]:
    """``{prefix}loss`` plus the user's ``compute_metrics`` figures when given, else the built-in ones.

    Non-numeric values a ``compute_metrics`` returns are left out (Lightning logs numbers only).
    """
    results: dict[str, Any] = {"loss": loss}
    if labels is not None:
        if compute_metrics is not None:
            from transformers import EvalPrediction  # here: importing the package leaves transformers out

            prediction = EvalPrediction(predictions=logits.float().numpy(), label_ids=labels.numpy())
            results.update(compute_metrics(prediction))
        else:
            results.update(builtin_metrics(logits, labels))
    return {
        key if key.startswith(prefix) else prefix + key: float(value)
        for key, value in results.items()
        if _is_number(value) or isinstance(value, np.number)
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

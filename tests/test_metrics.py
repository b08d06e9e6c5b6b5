"""Metric: validation, the torchmetrics mapping, compute_metrics precedence and the criterion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics import Accuracy, F1Score, MatthewsCorrCoef, PearsonCorrCoef, SpearmanCorrCoef

from lightning_sparsity import Metric
from lightning_sparsity.metrics import as_metric_list, builtin_metrics, combined_score, compare, evaluation_results


def classification(num_classes: int, size: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(size, num_classes, generator=generator)
    labels = torch.randint(0, num_classes, (size,), generator=generator)
    labels[: size // 2] = logits[: size // 2].argmax(-1)  # better than chance, so the figures are not ~0
    return logits, labels


def test_binary_classification_matches_torchmetrics():
    logits, labels = classification(2)
    predictions = logits.argmax(-1)
    results = builtin_metrics(logits, labels)
    assert results["accuracy"] == pytest.approx(float((predictions == labels).float().mean()))
    assert results["accuracy"] == pytest.approx(float(Accuracy(task="binary")(predictions, labels)))
    assert results["f1"] == pytest.approx(float(F1Score(task="binary")(predictions, labels)))
    assert results["matthews_correlation"] == pytest.approx(float(MatthewsCorrCoef(task="binary")(predictions, labels)))
    assert 0 < results["matthews_correlation"] < 1


def test_multiclass_classification_matches_torchmetrics():
    logits, labels = classification(3)
    predictions = logits.argmax(-1)
    results = builtin_metrics(logits, labels)
    assert results["accuracy"] == pytest.approx(float((predictions == labels).float().mean()))
    macro_f1 = F1Score(task="multiclass", num_classes=3, average="macro")(predictions, labels)
    assert results["f1"] == pytest.approx(float(macro_f1))
    mcc = MatthewsCorrCoef(task="multiclass", num_classes=3)(predictions, labels)
    assert results["matthews_correlation"] == pytest.approx(float(mcc))


def test_regression_outputs_give_correlations():
    generator = torch.Generator().manual_seed(0)
    targets = torch.rand(40, generator=generator) * 5
    predictions = targets + torch.randn(40, generator=generator)
    results = builtin_metrics(predictions.unsqueeze(-1), targets)
    assert set(results) == {"pearson", "spearmanr"}
    assert results["pearson"] == pytest.approx(float(PearsonCorrCoef()(predictions, targets)))
    assert results["spearmanr"] == pytest.approx(float(SpearmanCorrCoef()(predictions, targets)))


def test_evaluation_results_prefix_keys_like_transformers():
    logits, labels = classification(2)
    results = evaluation_results(0.5, logits, labels)
    assert results == {"eval_loss": 0.5, **{f"eval_{k}": v for k, v in builtin_metrics(logits, labels).items()}}
    assert set(evaluation_results(0.5, logits, None, prefix="test_")) == {"test_loss"}


def test_compute_metrics_takes_precedence_over_torchmetrics():
    logits, labels = classification(2)
    received = {}

    def compute_metrics(prediction):
        received["predictions"], received["label_ids"] = prediction.predictions, prediction.label_ids
        return {"accuracy": 0.125, "eval_combined": np.float32(0.5), "note": "text is left out"}

    results = evaluation_results(0.25, logits, labels, compute_metrics)
    assert results == {"eval_loss": 0.25, "eval_accuracy": 0.125, "eval_combined": 0.5}
    np.testing.assert_array_equal(received["predictions"], logits.numpy())
    np.testing.assert_array_equal(received["label_ids"], labels.numpy())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "accuracy"}, r"Metric.name='accuracy' is not an evaluation key: use 'eval_<name>'"),
        ({"name": "eval_"}, r"Metric.name='eval_' is not an evaluation key"),
        ({"name": "eval_f1", "criterion": -0.1}, r"Metric.criterion must be a finite number >= 0"),
        ({"name": "eval_f1", "weight_ratio": 1.5}, r"Metric.weight_ratio must be a number in \(0, 1\]"),
    ],
)
def test_bad_metric_fields_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Metric(**kwargs)


def test_relative_and_absolute_criteria():
    baseline, final = {"eval_accuracy": 0.90}, {"eval_accuracy": 0.885}  # 1.67% relative, 0.015 absolute drop
    relative = compare([Metric("eval_accuracy", criterion=0.02)], baseline, final)
    assert relative.criterion_met and relative.relative_change == pytest.approx(-0.015 / 0.90)
    assert not compare([Metric("eval_accuracy", criterion=0.01)], baseline, final).criterion_met
    assert compare([Metric("eval_accuracy", is_relative=False, criterion=0.02)], baseline, final).criterion_met
    assert not compare([Metric("eval_accuracy", is_relative=False, criterion=0.01)], baseline, final).criterion_met


def test_lower_is_better_metric():
    loss = Metric("eval_loss", greater_is_better=False, criterion=0.1)
    assert compare([loss], {"eval_loss": 1.0}, {"eval_loss": 1.05}).criterion_met
    assert not compare([loss], {"eval_loss": 1.0}, {"eval_loss": 1.2}).criterion_met
    assert compare([loss], {"eval_loss": 1.0}, {"eval_loss": 0.5}).criterion_met


def test_several_metrics_combine_by_weight_ratio():
    results = {"eval_accuracy": 0.8, "eval_f1": 0.6}
    weighted = [Metric("eval_accuracy", weight_ratio=0.75), Metric("eval_f1", weight_ratio=0.25)]
    assert combined_score(weighted, results) == pytest.approx(0.75 * 0.8 + 0.25 * 0.6)
    assert combined_score([Metric("eval_accuracy"), Metric("eval_f1")], results) == pytest.approx(0.7)
    with pytest.raises(ValueError, match=r"'eval_mcc' is not among the evaluation results; available: eval_accuracy"):
        combined_score([Metric("eval_mcc")], results)


def test_metric_lists_must_combine():
    with pytest.raises(ValueError, match="give weight_ratio to every metric or to none"):
        as_metric_list([Metric("eval_accuracy", weight_ratio=0.5), Metric("eval_f1")])
    with pytest.raises(ValueError, match="must share one criterion"):
        as_metric_list([Metric("eval_accuracy"), Metric("eval_f1", criterion=0.05)])
    with pytest.raises(ValueError, match=r"metrics\[1\] must be a Metric, got str"):
        as_metric_list([Metric("eval_accuracy"), "eval_f1"])
    assert as_metric_list(None) == [] and as_metric_list(Metric("eval_f1")) == [Metric("eval_f1")]

"""A pruning run's record and its readable outputs: report.md, report.json and PNG plots.

``TrainingHistory`` records sparsity, loss and accuracy over the steps of one or more fits;
``write_report`` turns it, a summary and the per-tensor :class:`SparsityReport` into files.
Plots need matplotlib (the ``demo`` extra) and use its non-interactive Agg backend.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_sparsity.report import SparsityReport


@dataclass
class StepRecord:
    step: int
    loss: float
    accuracy: float
    sparsity: float


class TrainingHistory(Callback):
    """Per-step train loss, accuracy and ``pruning/sparsity``, plus validation accuracy, across fits.

    Steps continue from one fit to the next, so a dense fit followed by a pruning fit reads as one run;
    ``fit_starts`` holds the step where each fit began. Put it after the ``PruningCallback`` in the
    callback list so that it sees the sparsity logged for the same step.
    """

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []
        self.validations: list[tuple[int, float]] = []
        self.fit_starts: list[int] = []
        self._offset = 0

    @property
    def last_step(self) -> int:
        return self.steps[-1].step if self.steps else 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.fit_starts.append(self.last_step)
        self._offset = self.last_step - trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        metrics = trainer.callback_metrics
        self.steps.append(
            StepRecord(
                step=self._offset + trainer.global_step,
                loss=float(metrics.get("train_loss", float("nan"))),
                accuracy=float(metrics.get("train_acc_step", float("nan"))),
                sparsity=float(metrics.get("pruning/sparsity", 0.0)),
            )
        )

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and "val_acc" in trainer.callback_metrics and trainer.state.fn == "fit":
            self.validations.append((self._offset + trainer.global_step, float(trainer.callback_metrics["val_acc"])))


def write_report(
    folder: Path, title: str, summary: dict[str, Any], layers: SparsityReport, history: TrainingHistory
) -> list[Path]:
    """Writes report.md (summary and per-tensor table), report.json (all of it, plain values) and the
    plots ``sparsity_schedule.png`` and ``layer_sparsity.png``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown = folder / "report.md"
    rows = "\n".join(f"| {key} | {_format(value)} |" for key, value in summary.items())
    markdown.write_text(
        f"# {title}\n\n| | |\n| --- | --- |\n{rows}\n\n## Sparsity per tensor\n\n{layers}\n\n"
        "![sparsity schedule](sparsity_schedule.png)\n\n![layer sparsity](layer_sparsity.png)\n"
    )
    data = folder / "report.json"
    record = {
        "summary": summary,
        "layers": layers.to_dicts(),
        "history": {
            "steps": [asdict(s) for s in history.steps],
            "validations": [{"step": step, "accuracy": acc} for step, acc in history.validations],
            "fit_starts": history.fit_starts,
        },
    }
    data.write_text(json.dumps(_without_nan(record), indent=2, allow_nan=False))
    return [markdown, data, plot_schedule(history, folder / "sparsity_schedule.png"), plot_layers(layers, folder)]


def _without_nan(value: Any) -> Any:
    """JSON has no NaN: missing numbers become null."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def plot_schedule(history: TrainingHistory, path: Path) -> Path:
    """Sparsity over the optimizer steps (left axis) with train and validation accuracy (right axis)."""
    plt = _pyplot()
    figure, sparsity_axis = plt.subplots(figsize=(9, 4.5))
    steps = [s.step for s in history.steps]
    sparsity_axis.plot(steps, [100 * s.sparsity for s in history.steps], color="tab:red", label="sparsity")
    sparsity_axis.set_xlabel("optimizer step")
    sparsity_axis.set_ylabel("sparsity of pruned weights (%)", color="tab:red")
    sparsity_axis.set_ylim(0, 100)
    accuracy_axis = sparsity_axis.twinx()
    smoothed = _moving_average([s.accuracy for s in history.steps], 20)
    accuracy_axis.plot(
        steps, [100 * a for a in smoothed], color="tab:blue", alpha=0.5, label="train accuracy (20-step mean)"
    )
    if history.validations:
        val_steps, val_accuracies = zip(*history.validations, strict=True)
        accuracy_axis.plot(
            val_steps, [100 * a for a in val_accuracies], "o-", color="tab:blue", label="validation accuracy"
        )
    accuracy_axis.set_ylabel("accuracy (%)", color="tab:blue")
    accuracy_axis.set_ylim(40, 100)
    for start in history.fit_starts[1:]:
        sparsity_axis.axvline(start, color="grey", linestyle="--", linewidth=1)
    handles = sparsity_axis.get_legend_handles_labels()[0] + accuracy_axis.get_legend_handles_labels()[0]
    sparsity_axis.legend(handles=handles, loc="lower right", fontsize="small")
    sparsity_axis.set_title("Sparsity schedule and accuracy (dashed: pruning fit begins)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_layers(layers: SparsityReport, folder: Path) -> Path:
    """One horizontal bar per pruned tensor: its measured sparsity."""
    plt = _pyplot()
    path = folder / "layer_sparsity.png"
    names = _short_names([row.name for row in layers])
    figure, axis = plt.subplots(figsize=(8, 0.22 * len(layers) + 1.2))
    axis.barh(range(len(layers)), [100 * row.sparsity for row in layers], color="tab:red")
    axis.set_yticks(range(len(layers)), names, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("sparsity (%)")
    axis.axvline(
        100 * layers.sparsity, color="black", linestyle="--", linewidth=1, label=f"overall {layers.sparsity:.1%}"
    )
    axis.legend(loc="lower right", fontsize="small")
    axis.set_title("Sparsity per pruned tensor")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short_names(names: list[str]) -> list[str]:
    """Names without their common dotted prefix but its last part (``layer.0.attention...``)."""
    parts = [name.split(".") for name in names]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return [".".join(p[max(common - 1, 0) :]) for p in parts]


def _moving_average(values: list[float], window: int) -> list[float]:
    averaged, total = [], 0.0
    for index, value in enumerate(values):
        total += value - (values[index - window] if index >= window else 0.0)
        averaged.append(total / min(index + 1, window))
    return averaged


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'lightning-sparsity[demo]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

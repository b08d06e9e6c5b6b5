"""The run report: history across fits, report.md/report.json and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
from fixtures.tiny_text import PAIRS_TSV, save_tiny_model
from helpers import make_trainer

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.reporting import TrainingHistory, write_report
from lightning_sparsity.text import TextClassificationDataModule, TextClassificationModule


def test_history_spans_two_fits_and_the_report_holds_it(tmp_path: Path) -> None:
    module = TextClassificationModule(str(save_tiny_model(tmp_path / "tiny")), learning_rate=1e-3)
    data = TextClassificationDataModule(
        train_file=str(PAIRS_TSV), validation_file=str(PAIRS_TSV), text_column="sentence1", batch_size=8
    )
    history = TrainingHistory()
    make_trainer(max_steps=3, max_epochs=-1, callbacks=[history]).fit(module, data)
    pruning = PruningCallback(pruners=[Pruner(target_sparsity_ratio=0.5, step_range=[0, 4], update_frequency=2)])
    make_trainer(max_steps=8, max_epochs=-1, callbacks=[pruning, history]).fit(module, data)

    assert history.fit_starts == [0, 3]
    assert [record.step for record in history.steps] == list(range(1, 12))
    assert [record.sparsity for record in history.steps[:3]] == [0.0] * 3
    assert history.steps[-1].sparsity == pytest.approx(0.5, abs=1e-3) and 0 < history.steps[4].sparsity < 0.5
    assert all(0 <= record.accuracy <= 1 and record.loss > 0 for record in history.steps)
    assert [step for step, _ in history.validations] == [7, 11]  # epoch ends of fit 2 (fit 1 stops mid-epoch)

    layers = pruning.report()
    summary = {"dense test accuracy": 0.5, "parameters": 1234, "note": "tiny"}
    written = write_report(tmp_path / "out", "Tiny run", summary, layers, history)
    assert [path.name for path in written] == [
        "report.md",
        "report.json",
        "sparsity_schedule.png",
        "layer_sparsity.png",
    ]
    markdown = written[0].read_text()
    assert markdown.startswith("# Tiny run") and "| parameters | 1,234 |" in markdown and str(layers) in markdown
    record = json.loads(written[1].read_text())
    assert record["summary"] == summary
    assert record["layers"] == layers.to_dicts() and len(record["layers"]) == 13  # 2 layers x 6 and the pooler
    assert len(record["history"]["steps"]) == 11 and record["history"]["fit_starts"] == [0, 3]
    for png in written[2:]:
        height, width, _ = matplotlib.image.imread(png).shape
        assert height > 200 and width > 500

"""The main job end to end, shortened: structured pruning of the embedded MiniLM, slimmed export, report."""

import importlib.util
import json
from pathlib import Path

import pytest

from lightning_sparsity import demo


def test_structured_demo_exports_a_slimmed_model_and_a_report(tmp_path):
    out = demo.main(
        [
            "--output-dir",
            str(tmp_path),
            "--dense-steps",
            "2",
            "--prune-steps",
            "2",
            "--recovery-steps",
            "1",
            "--structured",
        ]
    )
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    assert summary["sparsity of pruned weights"] > 0.5
    assert summary["slimmed parameters (model-slim/)"] < summary["parameters"]
    assert (out / "model-slim" / "config.json").exists() and (out / "model" / "model.safetensors").exists()
    assert sorted(p.name for p in out.glob("*.png"))


def test_a_missing_demo_extra_fails_before_any_training(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec

    def without_matplotlib(name, *args):
        return None if name == "matplotlib" else real(name, *args)

    monkeypatch.setattr(demo.importlib.util, "find_spec", without_matplotlib)
    with pytest.raises(SystemExit):
        demo.main(["--output-dir", str(tmp_path / "out")])
    assert "the demo needs matplotlib: pip install 'lightning-sparsity[demo]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_sst2_slice_ships_inside_the_package():
    assert demo.DATA.is_relative_to(Path(demo.__file__).parent)
    assert all((demo.DATA / f"{split}.tsv").is_file() for split in ("train", "validation", "test"))

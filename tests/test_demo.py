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


def test_the_demo_prunes_with_the_studys_recipe_to_its_target_and_says_how_it_compares(tmp_path):
    out = demo.main(
        ["--output-dir", str(tmp_path), "--dense-steps", "2", "--prune-steps", "10", "--recovery-steps", "1"]
    )
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary["sparsity of pruned weights"] == pytest.approx(0.8, abs=1e-4)
    assert summary["the library's SST-2 study"] == demo.STUDY_AT_80
    assert "SST-2 study" in (out / "report.md").read_text()
    pruner = demo._pruners(demo.argparse.Namespace(target_sparsity=0.8, prune_steps=10, prune_type="SnipMomentum",
                                                   structured=False))[0]  # fmt: skip
    assert (pruner.prune_type, pruner.schedule, pruner.update_frequency) == ("SnipMomentum", "exp", 5)

"""The main job end to end, shortened: structured pruning of the embedded MiniLM, slimmed export, report."""

import json

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

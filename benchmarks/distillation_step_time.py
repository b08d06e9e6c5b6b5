"""Training step time with a teacher (``KnowledgeDistillation``) against the same student without one.

The student and the teacher are MiniLM-sized BERTs (hidden 384, 6 layers, random init), batch 16, sequence 64,
AdamW, on random tokens. Variants, interleaved round after round on fresh copies of the same student: the student
alone (cross-entropy on the labels), with the teacher's forward pass each step, and with the teacher's logits
cached once for the fixed dataset (``cache_teacher_logits``, outside the timed steps). Each round's mean step
time is divided by the same round's student-alone step; figures are medians over the rounds, in process CPU
time (one torch thread: what a step costs on an idle core) and wall-clock time. Goal: <= 1.35x with the teacher.

    python -m benchmarks.distillation_step_time [--rounds 9] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertForSequenceClassification
from typing_extensions import override

from benchmarks.common import bert_config, interleaved, median, save, set_threads, table
from benchmarks.step_time import BATCH, SEQ, WARMUP_STEPS, StepClock
from lightning_sparsity.distillation import KnowledgeDistillation

GOAL = 1.35
VARIANTS = ("student alone", "teacher", "cached teacher logits")
STEP_HEADER = ["variant", "CPU s/step", "CPU ratio (median)", "wall s/step", "wall ratio (median)"]


def step_time_rows(result: dict[str, Any]) -> list[list[Any]]:
    """One table row per variant, in ``STEP_HEADER``'s order."""
    return [[r["variant"], r["cpu_step_s"], r["cpu_ratio"], r["wall_step_s"], r["wall_ratio"]] for r in result["rows"]]


class Student(pl.LightningModule):
    """The student, trained on the labels alone or on the distillation loss (live or cached teacher logits)."""

    def __init__(self, model: torch.nn.Module, teacher: Optional[torch.nn.Module], cached: Optional[torch.Tensor]):
        super().__init__()
        self.model = model
        self.distillation = None if teacher is None else KnowledgeDistillation(teacher).attach(model)
        self.cached = cached

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids, labels, index = batch
        logits = self.model(input_ids=input_ids).logits
        if self.distillation is None:
            return torch.nn.functional.cross_entropy(logits, labels)
        cached = None if self.cached is None else self.cached[index]
        return self.distillation.loss(logits, labels, {"input_ids": input_ids}, teacher_logits=cached)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


def run_fit(module: Student, loader: DataLoader, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of one short fit, the warm-up steps left out."""
    step_clock = StepClock("cpu")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=WARMUP_STEPS + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[step_clock],
    )
    trainer.fit(module, loader)
    return step_clock.mean_step(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (medians over them)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per fit")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    set_threads(args.threads)

    torch.manual_seed(0)
    initial = BertForSequenceClassification(bert_config("minilm", num_labels=2))
    teacher = BertForSequenceClassification(bert_config("minilm", num_labels=2))
    size = (WARMUP_STEPS + args.steps) * BATCH
    tokens = torch.randint(0, initial.config.vocab_size, (size, SEQ))
    data = TensorDataset(tokens, torch.randint(0, 2, (size,)), torch.arange(size))
    loader = DataLoader(data, batch_size=BATCH)
    cached = (
        KnowledgeDistillation(teacher)
        .attach(initial)
        .cache_teacher_logits({"input_ids": input_ids} for input_ids, _, _ in loader)
    )

    def fit(variant: str) -> tuple[float, float]:
        module = Student(
            copy.deepcopy(initial),
            None if variant == VARIANTS[0] else teacher,
            cached if variant == VARIANTS[2] else None,
        )
        return run_fit(module, loader, args.steps)

    figures = interleaved({variant: lambda v=variant: fit(v) for variant in VARIANTS}, args.rounds)
    alone = figures[VARIANTS[0]]
    rows = []
    for variant in VARIANTS:
        row: dict[str, Any] = {"variant": variant}
        for index, kind in enumerate(("wall", "cpu")):
            row[f"{kind}_step_s"] = median([t[index] for t in figures[variant]])
            row[f"{kind}_ratio"] = median([t[index] / a[index] for t, a in zip(figures[variant], alone, strict=True)])
        rows.append(row)
    teacher_row = rows[1]
    result = {
        "setup": f"MiniLM-sized BERT student and teacher, batch {BATCH}, seq {SEQ}, AdamW, CPU",
        "threads": args.threads,
        "rounds": args.rounds,
        "steps_per_fit": args.steps,
        "goal": GOAL,
        "goal_met": teacher_row["cpu_ratio"] <= GOAL,
        "rows": rows,
        "raw": figures,
    }
    print(table(STEP_HEADER, step_time_rows(result)))
    print(f"teacher / student alone (CPU): {teacher_row['cpu_ratio']:.3f}x, goal <= {GOAL}x")
    save("distillation_step_time", result)


if __name__ == "__main__":
    main()

"""Training step time with the PruningCallback / without, by how often masks are updated.

A MiniLM-sized BERT (hidden 384, 6 layers, random init), batch 16, sequence 64, AdamW, on random tokens.
Every variant trains the same fresh model copy for the same steps; variants run interleaved, round after
round, and each round's mean step time (update steps included) is divided by the same round's dense run.

    python -m benchmarks.step_time [--rounds 15] [--steps 10] [--frequencies 1 10 100] [--threads 1] [--device cpu]
                                   [--prune-type BasicMagnitude]

Ratios are given in process CPU time (one torch thread: what the step costs on an idle core) and in
wall-clock time (which on a shared machine also counts the time other processes held the cores). On a GPU
(``--device cuda``, results in ``step_time_cuda.json``) the wall-clock ratio is the one that counts: the
clock waits for the GPU only where timing starts and ends, so steps overlap as they do in training.
Another ``--prune-type`` (scores kept from gradients, or OBS's Fisher) goes to ``step_time_<prune type>``.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertForSequenceClassification
from typing_extensions import override

from benchmarks.common import (
    ENCODER_LINEAR,
    bert_config,
    clock,
    interleaved,
    median,
    results_name,
    save,
    set_threads,
    synchronize,
    table,
)
from lightning_sparsity import Pruner, PruningCallback

WARMUP_STEPS = 2
BATCH, SEQ = 16, 64
PRUNE_TYPES = ["BasicMagnitude", "SnipMomentum", "OBS"]  # |w|; scores kept from gradients; a Fisher kept per block


def step_time_name(prune_type: str, threads: int = 1) -> str:
    """Results of the default prune type on one thread are ``step_time``; of another, ``step_time_<prune type>``;
    on more threads, ``..._<threads>threads``."""
    name = "step_time" if prune_type == PRUNE_TYPES[0] else f"step_time_{prune_type.lower()}"
    return name if threads == 1 else f"{name}_{threads}threads"


class Classifier(pl.LightningModule):
    """A BertForSequenceClassification trained with AdamW."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids, labels = batch
        return torch.nn.functional.cross_entropy(self.model(input_ids=input_ids).logits, labels)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-4)


class StepClock(Callback):
    """Seconds from the start of the first step after the warm-up to the end of the fit: everything the
    training steps cost, callbacks included."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.marks: list[tuple[float, float]] = []

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if trainer.global_step == WARMUP_STEPS:
            self._mark()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark()

    def _mark(self) -> None:
        synchronize(self.device)
        self.marks.append(clock())

    def mean_step(self, steps: int) -> tuple[float, float]:
        """(wall-clock, CPU) seconds per step over the ``steps`` timed steps."""
        (wall, cpu), (wall_end, cpu_end) = self.marks
        return (wall_end - wall) / steps, (cpu_end - cpu) / steps


class TimedPruning(PruningCallback):
    """The PruningCallback with the CPU seconds spent in its per-step hooks (its optimizer step post-hook included)
    counted: its own cost, measured directly, which load on a shared machine disturbs far less than the difference
    of two step times."""

    def __init__(self, pruners: list[Pruner]) -> None:
        super().__init__(pruners)
        self.hook_cpu_s = 0.0

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._timed(super().on_before_optimizer_step, trainer, pl_module, optimizer)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._timed(super().on_train_batch_end, trainer, pl_module, *args)

    @override
    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._timed(super()._after_optimizer_step, optimizer, args, kwargs)  # where masks are updated and applied

    def _timed(self, hook: Any, *args: Any) -> None:
        start = clock()[1]
        hook(*args)
        if self.sparsifiers[0].steps > WARMUP_STEPS:  # the optimizer steps taken, this one included
            self.hook_cpu_s += clock()[1] - start


def pruning(frequency: int, prune_type: str) -> TimedPruning:
    """Masks of every encoder Linear updated each ``frequency`` optimizer steps, mid-ramp (50% -> 90%)."""
    pruner = Pruner(
        prune_type=prune_type,
        target_sparsity_ratio=0.9,
        initial_sparsity_ratio=0.5,
        step_range=[0, 1000],
        update_frequency=frequency,
        names=[ENCODER_LINEAR],
    )
    return TimedPruning([pruner])


def run_fit(
    initial: torch.nn.Module, loader: DataLoader, steps: int, frequency: int | None, device: str, prune_type: str
) -> tuple[float, float, float]:
    """(wall, CPU) seconds per step of one short fit from a fresh copy of ``initial``, and the CPU seconds per
    step spent in the PruningCallback's hooks (0 without it)."""
    step_clock = StepClock(device)
    callbacks: list[Callback] = [step_clock] if frequency is None else [pruning(frequency, prune_type), step_clock]
    trainer = pl.Trainer(
        accelerator=device,
        devices=1,
        max_steps=WARMUP_STEPS + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(Classifier(copy.deepcopy(initial)), loader)
    hook_cpu_s = callbacks[0].hook_cpu_s / steps if frequency is not None else 0.0
    return (*step_clock.mean_step(steps), hook_cpu_s)


def step_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per update frequency: CPU s per step, CPU and wall ratios, the callback's own cost."""
    return [
        [r["update_frequency"], r["cpu_step_s"], r["cpu_ratio"], r["wall_ratio"], r["hook_cpu_s"], r["hook_ratio"]]
        for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=15, help="interleaved rounds (medians over them; fewer leave a 1%% cost in noise)"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per fit")
    parser.add_argument("--frequencies", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--prune-type", choices=PRUNE_TYPES, default=PRUNE_TYPES[0], help="how weights are scored")
    args = parser.parse_args()
    set_threads(args.threads)

    torch.manual_seed(0)
    initial = BertForSequenceClassification(bert_config("minilm", num_labels=2))
    tokens = torch.randint(0, initial.config.vocab_size, ((WARMUP_STEPS + args.steps) * BATCH, SEQ))
    loader = DataLoader(TensorDataset(tokens, torch.randint(0, 2, (len(tokens),))), batch_size=BATCH)

    def fit(frequency: int | None) -> tuple[float, float, float]:
        return run_fit(initial, loader, args.steps, frequency, args.device, args.prune_type)

    variants = {"dense": lambda: fit(None)}
    for frequency in args.frequencies:
        variants[f"every {frequency}"] = lambda f=frequency: fit(f)
    figures = interleaved(variants, args.rounds)

    dense = figures["dense"]
    rows = []
    for frequency in args.frequencies:
        times = figures[f"every {frequency}"]
        row: dict[str, float] = {"update_frequency": frequency}
        for index, kind in enumerate(("wall", "cpu")):
            row[f"{kind}_step_s"] = median([t[index] for t in times])
            row[f"{kind}_ratio"] = median([t[index] / d[index] for t, d in zip(times, dense, strict=True)])
        row["hook_cpu_s"] = median([t[2] for t in times])
        row["hook_ratio"] = median([1 + t[2] / d[1] for t, d in zip(times, dense, strict=True)])
        rows.append(row)
    result = {
        "setup": f"MiniLM-sized BERT, batch {BATCH}, seq {SEQ}, AdamW, encoder Linear weights pruned 50% -> 90% "
        f"({args.prune_type})",
        "prune_type": args.prune_type,
        "device": args.device,
        "threads": args.threads,
        "rounds": args.rounds,
        "steps_per_fit": args.steps,
        "dense_cpu_step_s": median([d[1] for d in dense]),
        "dense_wall_step_s": median([d[0] for d in dense]),
        "rows": rows,
        "raw": figures,
    }
    print(f"dense step: {result['dense_cpu_step_s']:.3f} CPU s, {result['dense_wall_step_s']:.3f} wall s")
    print(
        table(
            ["update every", "CPU s/step", "CPU ratio", "wall ratio", "callback CPU s/step", "1 + callback/dense"],
            step_rows(rows),
        )
    )
    save(results_name(step_time_name(args.prune_type, args.threads), args.device), result)


if __name__ == "__main__":
    main()

"""Host time per training step that the PruningCallback adds, in microseconds, on a model whose kernels cost nothing.

On a GPU a MiniLM step is short enough (about 15 ms) that the callback's Python work per step shows in the step
time. This measures that work alone: 36 Linear layers of 16 x 16 (as many prunable weights as MiniLM's encoder,
each too small for its arithmetic to count), batch 4, SGD, on the CPU. Every optimizer step is timed from one
``on_train_batch_start`` to the next (everything the step costs: data, forward, backward, optimizer, every
callback); the first steps of each fit are dropped as warm-up. The variants (no callback; masks of every layer
updated every 1, 10 or 100 steps, mid-ramp from 50% to 90%) run interleaved, round after round; per round, each
variant's median and mean step time, minus the dense run's of the same round, is the callback's cost; the
figures are medians over the rounds, with the quartiles of the rounds' costs (how much load blurred them).
The CPU time inside the callback's Lightning hooks (each hook it overrides, timed on the instance) is given
beside it (its optimizer step post-hook included): far less blurred by load.
With updates every 10 or 100 steps the median step is one without a mask update: the cost of the callback's
hot path. The callback is driven through its public API only.

    python -m benchmarks.host_time [--rounds 15] [--steps 100] [--frequencies 1 10 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from benchmarks.common import clock, interleaved, median, save, set_threads, table
from lightning_sparsity import Pruner, PruningCallback

LAYERS, WIDTH, BATCH = 36, 16, 4
WARMUP_STEPS = 10
#: Goal of issue 27: callback host time per step without a mask update.
GOAL_US = 100.0


class Stack(pl.LightningModule):
    """``LAYERS`` Linear layers of ``WIDTH`` x ``WIDTH``, trained with SGD on the mean square of the output (the
    cheapest optimizer: the less the dense step costs, the less load on the machine blurs the difference)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)))

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layers(batch[0]).square().mean()

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class HookClock:
    """CPU seconds spent inside a callback's Lightning hooks: every hook it overrides is wrapped on the instance
    (Lightning looks hooks up on the instance), so no hook name of the callback is assumed."""

    def __init__(self, callback: Callback) -> None:
        self.cpu_s = 0.0
        for name in dir(Callback):
            if name.startswith("on_") and getattr(type(callback), name) is not getattr(Callback, name):
                setattr(callback, name, self._timed(getattr(callback, name)))
        if hasattr(callback, "_after_optimizer_step"):  # PruningCallback's optimizer step post-hook
            callback._after_optimizer_step = self._timed(callback._after_optimizer_step)  # type: ignore[attr-defined]

    def _timed(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return hook(*args, **kwargs)
            finally:
                self.cpu_s += time.process_time() - start

        return timed


class StepTimer(Callback):
    """(wall-clock, CPU, CPU inside the pruning callback's hooks) seconds of every optimizer step, from one
    ``on_train_batch_start`` to the next."""

    def __init__(self, hooks: HookClock | None) -> None:
        self.hooks = hooks
        self.marks: list[tuple[float, float, float]] = []

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._mark()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark()

    def _mark(self) -> None:
        self.marks.append((*clock(), self.hooks.cpu_s if self.hooks else 0.0))

    def steps(self) -> list[tuple[float, ...]]:
        pairs = zip(self.marks[WARMUP_STEPS:-1], self.marks[WARMUP_STEPS + 1 :], strict=True)
        return [tuple(end - start for start, end in zip(*pair, strict=True)) for pair in pairs]


def pruning(frequency: int) -> PruningCallback:
    """Masks of every layer updated every ``frequency`` optimizer steps, mid-ramp (50% -> 90% over 100k steps)."""
    pruner = Pruner(
        target_sparsity_ratio=0.9,
        initial_sparsity_ratio=0.5,
        step_range=[0, 100_000],
        update_frequency=frequency,
        names=[r"layers\.\d+\.weight"],
    )
    return PruningCallback([pruner])


def run_fit(initial: Stack, loader: DataLoader, frequency: int | None) -> dict[str, float]:
    """Median and mean microseconds per step of one fit from a fresh copy of ``initial``: wall-clock, CPU, and CPU
    inside the pruning callback's hooks."""
    callbacks: list[Callback] = [] if frequency is None else [pruning(frequency)]
    timer = StepTimer(HookClock(callbacks[0]) if callbacks else None)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, timer],
    )
    trainer.fit(copy.deepcopy(initial), loader)
    steps = timer.steps()
    figures = {}
    for index, kind in enumerate(("wall", "cpu", "hooks")):
        times = [1e6 * step[index] for step in steps]
        figures[f"{kind}_median_us"] = median(times)
        figures[f"{kind}_mean_us"] = statistics.fmean(times)
    return figures


def _quartiles(values: list[float]) -> list[float]:
    """First and third quartiles (the values themselves below 2)."""
    if len(values) < 2:
        return [values[0], values[0]]
    first, _, third = statistics.quantiles(values, n=4)
    return [first, third]


def host_rows(result: dict[str, Any]) -> list[list[Any]]:
    """One table row per variant: CPU microseconds per step (median, mean), the callback's share of each (the step
    minus the dense step; the time inside its hooks), the quartiles of the rounds' figures in brackets."""
    dense = result["dense"]
    rows = [["no callback", f"{dense['cpu_median_us']:.0f}", "", "", f"{dense['cpu_mean_us']:.0f}", "", ""]]
    for row in result["rows"]:
        cells = []
        for stat in ("median", "mean"):
            cells += [f"{row[f'cpu_{stat}_us']:.0f}", _with_quartiles(row, f"callback_{stat}")]
            cells.append(_with_quartiles(row, f"hooks_{stat}"))
        rows.append([f"every {row['update_frequency']}", *cells])
    return rows


def _with_quartiles(row: dict[str, Any], key: str) -> str:
    first, third = row[f"{key}_quartiles_us"]
    return f"{row[f'{key}_us']:.0f} ({first:.0f}-{third:.0f})"


HOST_HEADERS = [
    "masks updated every (steps)",
    "median step (CPU us)",
    "callback, median step (us)",
    "in its hooks, median step (us)",
    "mean step (CPU us)",
    "callback, mean step (us)",
    "in its hooks, mean step (us)",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (medians over them)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per fit, warm-up included")
    parser.add_argument("--frequencies", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS + 1:
        parser.error(f"--steps must be above {WARMUP_STEPS + 1} (the first {WARMUP_STEPS} are warm-up)")
    set_threads(args.threads)

    torch.manual_seed(0)
    initial = Stack()
    loader = DataLoader(TensorDataset(torch.randn(args.steps * BATCH, WIDTH)), batch_size=BATCH)
    variants = {"dense": lambda: run_fit(initial, loader, None)}
    for frequency in args.frequencies:
        variants[f"every {frequency}"] = lambda f=frequency: run_fit(initial, loader, f)
    figures = interleaved(variants, args.rounds)

    dense = figures["dense"]
    rows = []
    for frequency in args.frequencies:
        runs = figures[f"every {frequency}"]
        row: dict[str, float] = {"update_frequency": frequency}
        for stat in ("median", "mean"):
            hooks = [run[f"hooks_{stat}_us"] for run in runs]
            row[f"hooks_{stat}_us"], row[f"hooks_{stat}_quartiles_us"] = median(hooks), _quartiles(hooks)
        for kind in ("wall", "cpu"):
            for stat in ("median", "mean"):
                key = f"{kind}_{stat}_us"
                row[key] = median([run[key] for run in runs])
                prefix = "callback" if kind == "cpu" else "callback_wall"
                costs = [run[key] - d[key] for run, d in zip(runs, dense, strict=True)]
                row[f"{prefix}_{stat}_us"] = median(costs)
                row[f"{prefix}_{stat}_quartiles_us"] = _quartiles(costs)
        rows.append(row)
    result = {
        "setup": f"{LAYERS} Linear layers of {WIDTH} x {WIDTH}, batch {BATCH}, SGD, CPU; every layer's weight pruned "
        "50% -> 90%",
        "threads": args.threads,
        "rounds": args.rounds,
        "steps_per_fit": args.steps,
        "warmup_steps": WARMUP_STEPS,
        "dense": {key: median([d[key] for d in dense]) for key in dense[0]},
        "rows": rows,
        "raw": figures,
    }
    print(table(HOST_HEADERS, host_rows(result)))
    save("host_time", result)


if __name__ == "__main__":
    main()

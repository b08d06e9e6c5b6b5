"""Pruning inside a training loop the user wrote (a ``train_func(model)``), with no Lightning Trainer.

The old toolkit's ``train_func`` trains the model in its own loop, so no epoch boundary is seen: the pruners
follow the optimizer steps instead. Global ``torch.optim`` step hooks, active only while ``train_func`` runs,
count each step of an optimizer holding a pruned weight, let the prune type read its gradients before it,
update the masks when the ramp says so and re-apply them after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from lightning_sparsity.callback import PruningCallback
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import SparsityReport
from lightning_sparsity.sparsifier import Sparsifier

logger = logging.getLogger(__name__)


def check_step_ramps(pruners: Sequence[Pruner], caller: str) -> None:
    """Epoch ramps cannot be followed in a loop whose epochs are not seen: a clear error before training."""
    for index, pruner in enumerate(pruners):
        if pruner.step_range is None and pruner.prune_type != "PatternLock":
            raise ValueError(
                f"{caller} prunes inside your train_func, whose epochs it cannot see: pruners[{index}] ramps over "
                f"epoch_range={pruner.epoch_range}; give it step_range=[first, last] in optimizer steps instead "
                "(the steps your train_func takes)"
            )


class OwnLoopPruning:
    """The pruners bound to ``model``'s weights, driven by the optimizer steps of ``train_func(model)``."""

    def __init__(self, model: nn.Module, pruners: Sequence[Pruner], caller: str) -> None:
        check_step_ramps(pruners, caller)
        self.model = model
        self.sparsifiers: list[Sparsifier] = PruningCallback(pruners=list(pruners))._bind(model)
        self._holds: dict[int, list[Sparsifier]] = {}  # by optimizer id: the sparsifiers whose weights it holds

    def run(self, train_func: Callable[[nn.Module], Any]) -> Any:
        """Calls ``train_func(model)`` with the masks kept on every optimizer step; returns what it returns."""
        for sparsifier in self.sparsifiers:
            if not sparsifier.criterion.follows_schedule:
                sparsifier.lock_existing_zeros()
            else:
                sparsifier.step(0)
            sparsifier.apply_masks()
            sparsifier.criterion.attach()
        hooks = [register_optimizer_step_pre_hook(self._before_step), register_optimizer_step_post_hook(self._after)]
        try:
            return train_func(self.model)
        finally:
            for hook in hooks:
                hook.remove()
            for sparsifier in self.sparsifiers:
                sparsifier.criterion.detach()
            self._warn_if_short()

    def report(self) -> SparsityReport:
        """One row per pruned weight, measured on the weights."""
        return SparsityReport(row for sparsifier in self.sparsifiers for row in sparsifier.report_rows())

    def _held_by(self, optimizer: Optimizer) -> list[Sparsifier]:
        if id(optimizer) not in self._holds:
            params = {id(p) for group in optimizer.param_groups for p in group["params"]}
            self._holds[id(optimizer)] = [
                s for s in self.sparsifiers if any(id(w) in params for w in s.weights.values())
            ]
        return self._holds[id(optimizer)]

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for sparsifier in self._held_by(optimizer):
            sparsifier.steps += 1
            sparsifier.before_optimizer_step(skip_non_finite=False)

    def _after(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for sparsifier in self._held_by(optimizer):
            if not (sparsifier.counts_steps and sparsifier.step(sparsifier.steps)):
                sparsifier.apply_masks()

    def _warn_if_short(self) -> None:
        for index, sparsifier in enumerate(self.sparsifiers):
            if sparsifier.criterion.follows_schedule and not sparsifier.target_reached:
                logger.warning(
                    "pruners[%d] is at %.4f of its target %.4f: train_func took %d optimizer steps and its "
                    "step_range is %s; lower step_range or train longer",
                    index,
                    sparsifier.current_target,
                    sparsifier.final_target,
                    sparsifier.steps,
                    sparsifier.pruner.step_range,
                )

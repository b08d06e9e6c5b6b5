"""``NoTrainerOptimizer``: the old toolkit's pruning with the user's own ``train_func`` / ``eval_func``, no Trainer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Optional

from torch import nn

from lightning_sparsity.compat.classic import check_provider, with_classic_answers
from lightning_sparsity.compat.own_loop import OwnLoopPruning
from lightning_sparsity.config import PruningConfig
from lightning_sparsity.metrics import Metric, compare
from lightning_sparsity.trainer import PruningReport

logger = logging.getLogger(__name__)
_NAME = "eval_func"


class NoTrainerOptimizer:
    """Prunes ``model`` while ``train_func(model)`` trains it in its own loop; ``eval_func(model) -> float``
    judges it before and after.

    The pruners' ramps are counted in the optimizer steps ``train_func`` takes (``Pruner.step_range``): its
    epochs are not seen, so an epoch ramp is refused before training.

    Args:
        model: the model to prune (any ``nn.Module``).
        output_dir: kept for the old toolkit's signature; nothing is written (save the returned model).
    """

    def __init__(self, model: nn.Module, output_dir: Optional[str] = "saved_results") -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"NoTrainerOptimizer.model must be a torch nn.Module, got {type(model).__name__}")
        self.model = model
        self.output_dir = output_dir
        self.eval_func: Optional[Callable[[nn.Module], float]] = None
        self.train_func: Optional[Callable[[nn.Module], Any]] = None
        self.provider = "inc"
        self.pruning_config: Optional[PruningConfig] = None
        self.pruner: Optional[OwnLoopPruning] = None
        self.pruning_report: Optional[PruningReport] = None

    def init_pruner(self, pruning_config: Optional[PruningConfig] = None, provider: str = "inc") -> OwnLoopPruning:
        """Binds the config's pruners to the model's weights (bad names and epoch ramps fail here)."""
        self.provider = check_provider(provider)
        config = pruning_config if pruning_config is not None else PruningConfig()
        if not isinstance(config, PruningConfig):
            raise ValueError(f"NoTrainerOptimizer.prune takes a PruningConfig, got {type(config).__name__}")
        self.pruning_config = config
        self.pruner = OwnLoopPruning(self.model, config.pruners, "NoTrainerOptimizer.prune")
        return self.pruner

    def prune(
        self,
        pruning_config: Optional[PruningConfig] = None,
        provider: str = "inc",
        eval_func: Optional[Callable[[nn.Module], float]] = None,
        train_func: Optional[Callable[[nn.Module], Any]] = None,
    ) -> nn.Module:
        """Evaluates, trains while pruning, evaluates again; returns the pruned model, which also answers
        ``.report_sparsity()`` and ``.model``. The result is in ``pruning_report`` and logged at INFO."""
        self.eval_func = eval_func if eval_func is not None else self.eval_func
        self.train_func = train_func if train_func is not None else self.train_func
        if self.train_func is None:
            raise ValueError("NoTrainerOptimizer.prune needs train_func(model): the training loop to prune in")
        if self.pruner is None or pruning_config is not None:
            pruner = self.init_pruner(pruning_config, provider)
        else:  # the one init_pruner bound
            self.provider, pruner = check_provider(provider), self.pruner
        metrics = self.pruning_config.metric_list if self.pruning_config is not None else []
        like = metrics[0] if metrics else Metric(name=_NAME)
        judge = [Metric(_NAME, like.greater_is_better, like.is_relative, like.criterion)]
        baseline = {_NAME: float(self.eval_func(self.model))} if self.eval_func is not None else None
        if baseline is not None:
            logger.info("dense baseline: eval_func=%.4f", baseline[_NAME])
        pruner.run(self.train_func)
        comparison = None
        if baseline is not None and self.eval_func is not None:
            comparison = compare(judge, baseline, {_NAME: float(self.eval_func(self.model))})
        self.pruning_report = PruningReport(metric=comparison, layers=pruner.report())
        self.pruner = None  # a further prune() binds afresh
        logger.info("pruning done:\n%s", self.pruning_report)
        return with_classic_answers(self.model, self.pruning_report.layers)


__all__ = ["NoTrainerOptimizer"]

"""Configurations and APIs written for other pruning tools: INC's ``WeightPruningConfig`` turned into ``Pruner`` s,
and the names of the old toolkit's classic API (``OptimizedModel``, ``PruningMode``, ``NoTrainerOptimizer``)."""

from lightning_sparsity.compat.inc import pruners_from_inc

__all__ = ["pruners_from_inc"]

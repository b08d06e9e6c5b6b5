"""Configurations written for other pruning tools, turned into lightning-sparsity ``Pruner`` s."""

from lightning_sparsity.compat.inc import pruners_from_inc

__all__ = ["pruners_from_inc"]

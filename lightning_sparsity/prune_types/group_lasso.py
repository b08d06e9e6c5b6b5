"""``GroupLasso``: a group-lasso penalty on the pattern's blocks, so that weak blocks shrink together before the
schedule cuts them by magnitude."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sparsity.functional.criteria import group_lasso_grad_, magnitude_scores
from lightning_sparsity.functional.patterns import Blocks
from lightning_sparsity.layers import as_out_in
from lightning_sparsity.prune_types.base import PruneType, check_setting, register_prune_type


@register_prune_type
class GroupLasso(PruneType):
    """Adds the gradient of ``alpha * sum(||block||_2)`` to every step's gradients; scores ``|w|``."""

    name = "GroupLasso"
    pattern_kinds = ("unstructured", "blocks")
    reads_gradients = True

    @dataclass(frozen=True)
    class Settings:
        alpha: float = 1e-5

        def __post_init__(self) -> None:
            check_setting("alpha", self.alpha, 0.0)

    @torch.no_grad()
    def before_optimizer_step(self, skip_non_finite: bool) -> None:
        for name, weight in self.weights.items():
            if weight.grad is not None:
                module = self.modules[name]
                matrix = as_out_in(weight, module)
                assert isinstance(self.pattern, Blocks)  # pattern_kinds: unstructured and blocks
                rows, cols = self.pattern.block_shape(matrix.shape)
                group_lasso_grad_(as_out_in(weight.grad, module), matrix, rows, cols, self.settings.alpha)

    def scores(self, name: str, weight: Tensor) -> Tensor:
        return magnitude_scores(weight).float()

"""``Gradient``: ``|grad|`` of the latest optimizer step."""

from __future__ import annotations

from torch import Tensor

from lightning_sparsity.functional.criteria import gradient_scores_
from lightning_sparsity.prune_types.base import register_prune_type
from lightning_sparsity.prune_types.gradient_scores import AccumulatedScores


@register_prune_type
class Gradient(AccumulatedScores):
    """Scores the weights with the smallest latest gradients lowest."""

    name = "Gradient"

    def accumulate(self, stored: Tensor, weight: Tensor, grad: Tensor) -> None:
        gradient_scores_(stored, grad)

"""``Movement``: movement pruning (Sanh et al. 2020), the weights moving towards zero first."""

from __future__ import annotations

from torch import Tensor

from lightning_sparsity.functional.criteria import movement_scores_
from lightning_sparsity.prune_types.base import register_prune_type
from lightning_sparsity.prune_types.gradient_scores import AccumulatedScores


@register_prune_type
class Movement(AccumulatedScores):
    """``score += -w * grad`` at every optimizer step: a signed score, negative for weights that training shrinks.

    This is hard movement pruning (a top-k of the scores on the schedule). Masks only grow sparser here, as for every
    prune type, where the paper's masks may also revive weights.
    """

    name = "Movement"

    def accumulate(self, stored: Tensor, weight: Tensor, grad: Tensor) -> None:
        movement_scores_(stored, weight, grad)

"""``PatternLock``: keeps the zeros a model already has (fine-tuning a pruned model) and adds none."""

from __future__ import annotations

from torch import Tensor

from lightning_sparsity.functional.criteria import magnitude_scores
from lightning_sparsity.prune_types.base import PruneType, register_prune_type


@register_prune_type
class PatternLock(PruneType):
    """Locks the weights' zeros into the masks when training starts; it has no ramp."""

    name = "PatternLock"
    shards = True
    follows_schedule = False

    def scores(self, name: str, weight: Tensor) -> Tensor:
        return magnitude_scores(weight).float()

"""``BasicMagnitude``: gradual magnitude pruning, the smallest ``|w|`` first."""

from __future__ import annotations

from torch import Tensor

from lightning_sparsity.functional.criteria import magnitude_scores
from lightning_sparsity.prune_types.base import PruneType, register_prune_type


@register_prune_type
class BasicMagnitude(PruneType):
    """Scores ``|w|``: small weights matter least."""

    name = "BasicMagnitude"
    shards = True
    one_shot = "BasicMagnitude"

    def scores(self, name: str, weight: Tensor) -> Tensor:
        return magnitude_scores(weight).float()

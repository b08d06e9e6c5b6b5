"""``SnipMomentum``: a momentum of ``|w * grad|`` (INC's default criterion; ``momentum=0`` is plain SNIP)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from lightning_sparsity.functional.criteria import snip_momentum_scores_
from lightning_sparsity.prune_types.base import check_setting, register_prune_type
from lightning_sparsity.prune_types.gradient_scores import AccumulatedScores


@register_prune_type
class SnipMomentum(AccumulatedScores):
    """``score = momentum * score + |w * grad|`` at every optimizer step."""

    name = "SnipMomentum"

    @dataclass(frozen=True)
    class Settings:
        momentum: float = 0.9

        def __post_init__(self) -> None:
            check_setting("momentum", self.momentum, 0.0, 1.0)

    def accumulate(self, stored: Tensor, weight: Tensor, grad: Tensor) -> None:
        snip_momentum_scores_(stored, weight, grad, self.settings.momentum)

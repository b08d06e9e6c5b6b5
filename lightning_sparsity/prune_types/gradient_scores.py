"""Scores kept across optimizer steps from each step's gradients: the shared shape of SnipMomentum, Gradient and
Movement. Until a weight has seen a gradient it is scored by magnitude; a mask update says which weights got no
gradient at the last step (frozen, or unused by the forward pass), whose scores are then stale or by magnitude."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_sparsity.functional.criteria import all_finite, magnitude_scores
from lightning_sparsity.prune_types.base import PruneType


class AccumulatedScores(PruneType):
    """Holds one float32 score tensor per weight, updated in place by :meth:`accumulate` before every step."""

    reads_gradients = True
    shards = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stored: dict[str, Tensor] = {}
        self.without_gradient: list[str] = []  # weights that got no gradient at the latest optimizer step
        self._warned: list[str] = []

    def accumulate(self, stored: Tensor, weight: Tensor, grad: Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def before_optimizer_step(self, skip_non_finite: bool) -> None:
        if skip_non_finite:
            grads = [w.grad for w in self.weights.values() if w.grad is not None]
            if grads and not all_finite(grads):
                return  # an fp16 AMP overflow step, which GradScaler skips: its scores would stay inf or NaN for good
        self.without_gradient = []
        for name, weight in self.weights.items():
            if weight.grad is None:
                self.without_gradient.append(name)
                continue
            stored = self.stored.get(name)
            if stored is None:
                stored = self.stored[name] = torch.zeros_like(weight, dtype=torch.float32)
            self.accumulate(stored, weight, weight.grad)

    def before_mask_update(self, masks: Mapping[str, Tensor]) -> None:
        """Warns (once per set of weights) when weights got no gradient at the latest step: this type cannot score
        them from their gradients, so the masks would follow their magnitude or stale scores in silence."""
        if self.without_gradient and self.without_gradient != self._warned:
            self._warned = self.without_gradient
            rank_zero_warn(
                f"prune_type={self.name!r}: {len(self.without_gradient)} pruned weight(s) got no gradient at the latest"
                f" optimizer step (frozen, or unused by the forward pass), e.g. {self.without_gradient[0]!r}: their "
                "scores no longer follow training (magnitude where they never had a gradient, else their last "
                "gradients). Exclude frozen weights with Pruner.excluded_names, or use prune_type='BasicMagnitude'"
            )

    def scores(self, name: str, weight: Tensor) -> Tensor:
        stored = self.stored.get(name)
        return magnitude_scores(weight).float() if stored is None else stored.clone()

    def state_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.stored)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stored = self.loaded_tensors(state, "scores", lambda name: tuple(self.weights[name].shape))

"""``OBS``: Optimal Brain Surgeon as oBERT applies it, from a block-diagonal empirical Fisher."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_sparsity.functional.criteria import (
    all_finite,
    fisher_blocks_update_,
    magnitude_scores,
    obs_inverse,
    obs_scores,
    obs_update_,
)
from lightning_sparsity.prune_types.base import PruneType, check_setting, register_prune_type


@register_prune_type
class OBS(PruneType):
    """Scores ``w² / (2 [F⁻¹]ᵢᵢ)`` and, at each mask update, moves the kept weights of a block to make up for its
    newly pruned ones. ``F`` is the running mean of ``g gᵀ`` over blocks of ``block_size`` consecutive weights of a
    row, held (``block_size`` floats per weight) until the target is reached; its inverse doubles that during a mask
    update. Unstructured only."""

    name = "OBS"
    pattern_kinds = ("unstructured",)
    reads_gradients = True

    @dataclass(frozen=True)
    class Settings:
        block_size: float = 32
        fisher_decay: float = 0.95
        damping: float = 0.1

        def __post_init__(self) -> None:
            if self.block_size < 1 or not float(self.block_size).is_integer():
                raise ValueError(f"Pruner.parameters['block_size'] must be an integer >= 1, got {self.block_size:g}")
            check_setting("fisher_decay", self.fisher_decay, 0.0, 1.0)
            if not self.damping > 0:
                raise ValueError(f"Pruner.parameters['damping'] must be > 0, got {self.damping:g}")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.fisher: dict[str, Tensor] = {}  # (blocks, size, size) per weight, until the target is reached
        self.inverses: dict[str, Tensor] = {}  # during a mask update only
        self.done = False

    def check_weight(self, name: str, weight: nn.Parameter) -> None:
        size = int(self.settings.block_size)
        if weight[0].numel() % size:
            raise ValueError(
                f"Pruner.parameters['block_size']={size} does not divide the {weight[0].numel()} in_features of "
                f"weight {name!r}; pick a block size that divides every selected weight's rows or exclude the weight "
                "with Pruner.excluded_names"
            )

    @torch.no_grad()
    def before_optimizer_step(self, skip_non_finite: bool) -> None:
        if self.done:
            return  # the Fisher is no longer kept
        if skip_non_finite:
            grads = [w.grad for w in self.weights.values() if w.grad is not None]
            if grads and not all_finite(grads):
                return
        size = int(self.settings.block_size)
        for name, weight in self.weights.items():
            if weight.grad is None:
                continue
            fisher = self.fisher.get(name)
            if fisher is None:
                fisher = self.fisher[name] = weight.new_zeros((weight.numel() // size, size, size), dtype=torch.float32)
            fisher_blocks_update_(fisher, weight.grad, self.settings.fisher_decay)

    def before_mask_update(self, masks: Mapping[str, Tensor]) -> None:
        """Inverts every weight's Fisher blocks over the weights its mask still keeps."""
        for name, fisher in self.fisher.items():
            keep = masks.get(name)
            if keep is None:
                keep = torch.ones_like(self.weights[name], dtype=torch.bool)
            self.inverses[name] = obs_inverse(fisher, keep, self.settings.damping)

    def scores(self, name: str, weight: Tensor) -> Tensor:
        inverse = self.inverses.get(name)
        return magnitude_scores(weight).float() if inverse is None else obs_scores(weight, inverse)

    def after_mask_update(self, previous: Mapping[str, Tensor], masks: Mapping[str, Tensor], done: bool) -> None:
        for name, inverse in self.inverses.items():
            pruned = masks[name].logical_not()
            obs_update_(self.weights[name], inverse, pruned if name not in previous else pruned & previous[name])
        self.inverses = {}
        if done:
            self.fisher, self.done = {}, True  # no later update reads it

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": dict(self.fisher), "done": self.done}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        size = int(self.settings.block_size)
        self.fisher = self.loaded_tensors(
            state, "fisher", lambda name: (self.weights[name].numel() // size, size, size)
        )
        self.done = bool(state.get("done", False))

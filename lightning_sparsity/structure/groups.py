"""Structured groups and the pure functions that score and mask their units.

A *structured group* is a set of units pruned together across several weights. Each weight holds every unit
along one dimension: its output dimension (``rows``: the weights that produce the units' features) or its
input dimension (``columns``: the weights that read them). Along that dimension a weight holds ``segments``
blocks of ``units x size`` features (one segment, except for fused projections such as GPT-2's ``c_attn``,
which holds query, key and value: three segments). Zeroing a unit's columns removes its contribution exactly,
which is what lets ``export.slim`` delete it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sparsity.functional.patterns import Blocks, Scope, pattern_masks


@dataclass(frozen=True)
class StructuredGroup:
    """``units`` units across the output dimension of each ``rows`` weight and the input dimension of each
    ``columns`` weight; ``unit_size`` features of the first rows weight per unit (per segment).

    ``layouts`` lists ``(weight, dim, segments)`` for the weights not laid out the usual way (rows along
    dim 0, columns along dim 1, one segment), e.g. transformers' ``Conv1D``, whose weight is ``(in, out)``.
    """

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    units: int
    unit_size: int
    layouts: tuple[tuple[str, int, int], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return self.rows + self.columns

    def layout(self, name: str) -> tuple[int, int]:
        """``(dim, segments)`` of weight ``name``: the dimension holding the units and its segment count."""
        for weight, dim, segments in self.layouts:
            if weight == name:
                return dim, segments
        return (0 if name in self.rows else 1), 1


def _per_unit(group: StructuredGroup, name: str, tensor: Tensor) -> Tensor:
    """``tensor`` (shaped like weight ``name``) as ``(segments, units, rest)``, its unit dimension first."""
    dim, segments = group.layout(name)
    return tensor.movedim(dim, 0).reshape(segments, group.units, -1)


def unit_scores(group: StructuredGroup, scores: Mapping[str, Tensor]) -> Tensor:
    """One score per unit: the sum of its rows' and columns' element scores."""
    total = torch.zeros(group.units, dtype=torch.float32, device=scores[group.names[0]].device)
    for name in group.names:
        total += _per_unit(group, name, scores[name].float()).sum(dim=(0, 2))
    return total


def unit_masks(group: StructuredGroup, keep: Tensor, shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """Weight keep-masks of the group from one boolean per unit."""
    masks = {}
    for name in group.names:
        shape = shapes[name]
        dim, segments = group.layout(name)
        features = keep[None, :, None].expand(segments, group.units, shape[dim] // (segments * group.units))
        view = [-1 if axis == dim else 1 for axis in range(len(shape))]
        masks[name] = features.reshape(view).expand(shape).clone()
    return masks


def structured_masks(
    groups: Sequence[StructuredGroup], scores: Mapping[str, Tensor], sparsity: float, scope: Scope = "local"
) -> dict[str, Tensor]:
    """Keep-masks pruning a ``sparsity`` fraction of units: of each group (``local``) or of all (``global``).

    A weight in several groups (a conv reads one group's channels and writes another's) keeps what all keep.
    """
    units = [unit_scores(g, scores)[:, None] for g in groups]
    keeps = pattern_masks(units, sparsity, Blocks(), scope=scope)
    shapes = {name: scores[name].shape for name in scores}
    masks: dict[str, Tensor] = {}
    for group, keep in zip(groups, keeps, strict=True):
        for name, mask in unit_masks(group, keep[:, 0], shapes).items():
            masks[name] = mask if name not in masks else masks[name] & mask
    return masks


def live_units(group: StructuredGroup, weights: Mapping[str, Tensor]) -> Tensor:
    """Which units still contribute: those with a non-zero weight in their columns."""
    total = torch.zeros(group.units, dtype=torch.float32, device=weights[group.names[0]].device)
    for name in group.columns:
        total += _per_unit(group, name, (weights[name] != 0).float()).sum(dim=(0, 2))
    return total > 0

"""The one-shot prune types: what each records from the calibration inputs and how it prunes one weight."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Optional, get_args

import torch
from torch import Tensor

from lightning_sparsity.functional.criteria import magnitude_scores, wanda_scores
from lightning_sparsity.functional.patterns import Method, Pattern, pattern_masks
from lightning_sparsity.oneshot.sparsegpt import sparsegpt_prune_
from lightning_sparsity.oneshot.statistics import FeatureNormStatistic, HessianStatistic, StatisticFactory

OneShotType = Literal["SparseGPT", "Wanda", "BasicMagnitude"]
ONE_SHOT_TYPES: tuple[str, ...] = get_args(OneShotType)


@dataclass(frozen=True)
class OneShotMethod:
    """A one-shot prune type: the input statistic it needs (None: no calibration data), its default comparison
    group (``method``), its settings with their defaults, and whether it takes block patterns such as ``"4x1"``."""

    statistic: Optional[StatisticFactory]
    default_method: Method
    defaults: Mapping[str, float]
    takes_blocks: bool


ONE_SHOT_METHODS: dict[str, OneShotMethod] = {
    "SparseGPT": OneShotMethod(HessianStatistic, "per_tensor", {"block_size": 128, "damping": 0.01}, False),
    "Wanda": OneShotMethod(FeatureNormStatistic, "per_channel", {}, True),  # the paper compares within output rows
    "BasicMagnitude": OneShotMethod(None, "per_tensor", {}, True),
}


@torch.no_grad()
def prune_weight_(
    prune_type: str,
    weight: Tensor,
    statistic: Optional[Tensor],
    sparsity: float,
    pattern: Pattern,
    method: Method,
    settings: Mapping[str, float],
) -> Tensor:
    """Prunes one ``out x in`` weight in place from its input ``statistic`` (the Hessian for SparseGPT, squared
    feature norms for Wanda, None for magnitude); returns the keep-mask (True = kept). Pruned weights are +0.0."""
    if prune_type == "BasicMagnitude":
        scores = magnitude_scores(weight)
    elif statistic is None:
        raise ValueError(f"prune_weight_: prune_type={prune_type!r} needs its input statistic, got None")
    elif prune_type == "SparseGPT":
        return sparsegpt_prune_(
            weight, statistic, sparsity, pattern, method, int(settings["block_size"]), float(settings["damping"])
        )
    else:  # Wanda: the statistic holds squared input norms
        scores = wanda_scores(weight, statistic.to(weight.device).sqrt())
    keep = pattern_masks([scores], sparsity, pattern, method)[0]
    weight.masked_fill_(~keep, 0.0)
    return keep

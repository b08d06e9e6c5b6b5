"""One-shot pruning from calibration data: SparseGPT, Wanda and magnitude, layer by layer, with no training.

:func:`prune_one_shot` is the entry point; the functions below it are pure tensor functions (scores, masks, the
SparseGPT update) and the hooks that record calibration statistics, for use on their own.
"""

from lightning_sparsity.oneshot.blocks import BlockInputs, capture_inputs, default_forward, repeated_blocks
from lightning_sparsity.oneshot.methods import ONE_SHOT_METHODS, ONE_SHOT_TYPES, OneShotMethod, prune_weight_
from lightning_sparsity.oneshot.prune import prune_one_shot
from lightning_sparsity.oneshot.sparsegpt import inverse_hessian_factor, sparsegpt_prune_
from lightning_sparsity.oneshot.statistics import (
    FeatureNormStatistic,
    HessianStatistic,
    InputStatistic,
    recording_inputs,
)

__all__ = [
    "ONE_SHOT_METHODS",
    "ONE_SHOT_TYPES",
    "BlockInputs",
    "FeatureNormStatistic",
    "HessianStatistic",
    "InputStatistic",
    "OneShotMethod",
    "capture_inputs",
    "default_forward",
    "inverse_hessian_factor",
    "prune_one_shot",
    "prune_weight_",
    "recording_inputs",
    "repeated_blocks",
    "sparsegpt_prune_",
]

"""Pure functions behind the pruners: scores, pattern masks, exact selection and schedules.

They hold no state and know nothing of Lightning, so they can be called on any tensors.
"""

from lightning_sparsity.functional.criteria import (
    fisher_blocks_update_,
    gradient_scores_,
    group_lasso_grad_,
    magnitude_scores,
    obs_inverse,
    obs_scores,
    obs_update_,
    snip_momentum_scores_,
)
from lightning_sparsity.functional.patterns import Pattern, group_scores, parse_pattern, pattern_masks
from lightning_sparsity.functional.schedules import scheduled_sparsity
from lightning_sparsity.functional.selection import kth_smallest, smallest_k_each, smallest_k_mask

__all__ = [
    "Pattern",
    "fisher_blocks_update_",
    "gradient_scores_",
    "group_lasso_grad_",
    "group_scores",
    "kth_smallest",
    "magnitude_scores",
    "obs_inverse",
    "obs_scores",
    "obs_update_",
    "parse_pattern",
    "pattern_masks",
    "scheduled_sparsity",
    "smallest_k_each",
    "smallest_k_mask",
    "snip_momentum_scores_",
]

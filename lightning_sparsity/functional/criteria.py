"""Importance criteria: how much each weight matters. Low scores are pruned first."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sparsity.functional.patterns import as_matrix, block_reduce, expand_blocks


def magnitude_scores(weight: Tensor) -> Tensor:
    """``|w|``: small weights matter least (BasicMagnitude, GroupLasso)."""
    return weight.detach().abs()


def gradient_scores_(scores: Tensor, grad: Tensor) -> Tensor:
    """``|grad|`` of the latest optimizer step, written into ``scores`` (Gradient)."""
    return scores.copy_(grad.detach().abs())


def snip_momentum_scores_(scores: Tensor, weight: Tensor, grad: Tensor, momentum: float = 0.9) -> Tensor:
    """``scores = momentum * scores + |w * grad|``, updated in place (SnipMomentum, INC's default)."""
    return scores.mul_(momentum).add_((weight.detach() * grad.detach()).abs_())


def group_lasso_grad_(grad: Tensor, weight: Tensor, rows: int, cols: int, alpha: float) -> Tensor:
    """Adds the gradient of ``alpha * sum(||block||_2)`` over ``rows x cols`` blocks to ``grad`` in place.

    It pulls every block towards zero in proportion to ``w / ||block||``, so weak blocks die together.
    """
    w = as_matrix(weight.detach()).float()
    norms = block_reduce(w.square(), rows, cols).sqrt_().clamp_min_(torch.finfo(torch.float32).tiny)
    penalty = w / expand_blocks(norms, rows, cols)
    return grad.add_(penalty.view_as(grad).to(grad.dtype), alpha=alpha)

"""Importance criteria: how much each weight matters. Low scores are pruned first."""

from __future__ import annotations

from collections.abc import Iterable

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


def movement_scores_(scores: Tensor, weight: Tensor, grad: Tensor) -> Tensor:
    """``scores += -w * grad``, in place: negative for weights that gradient descent moves towards zero (Movement)."""
    return scores.addcmul_(weight.detach().float(), grad.detach().float(), value=-1.0)


def wanda_scores(weight: Tensor, feature_norms: Tensor, transposed: bool = False) -> Tensor:
    """``|w_ij| * ||x_j||`` in a fresh float tensor (Wanda): ``feature_norms`` holds one norm per input feature (per
    input channel of a convolution); ``transposed`` for weights stored ``in x out`` (transformers' Conv1D)."""
    norms = feature_norms.float()
    shape = (-1, 1) if transposed else (1, -1, *([1] * (weight.dim() - 2)))
    return weight.detach().abs().float().mul_(norms.view(shape))


def group_lasso_grad_(grad: Tensor, weight: Tensor, rows: int, cols: int, alpha: float) -> Tensor:
    """Adds the gradient of ``alpha * sum(||block||_2)`` over ``rows x cols`` blocks to ``grad`` in place.

    It pulls every block towards zero in proportion to ``w / ||block||``, so weak blocks die together.
    """
    w = as_matrix(weight.detach()).float()
    norms = block_reduce(w.square(), rows, cols).sqrt_().clamp_min_(torch.finfo(torch.float32).tiny)
    penalty = w / expand_blocks(norms, rows, cols)
    return grad.add_(penalty.view_as(grad).to(grad.dtype), alpha=alpha)


def fisher_blocks_update_(fisher: Tensor, grad: Tensor, decay: float) -> Tensor:
    """``fisher = decay * fisher + (1 - decay) * g gᵀ`` for every block of ``fisher.shape[-1]`` consecutive weights
    of a row, in place: the block-diagonal empirical Fisher of the loss that OBS scores with."""
    g = grad.detach().float().reshape(-1, fisher.shape[-1])
    return fisher.mul_(decay).baddbmm_(g.unsqueeze(2), g.unsqueeze(1), alpha=1.0 - decay)


def obs_inverse(fisher: Tensor, keep: Tensor, damping: float) -> Tensor:
    """Inverse of every damped Fisher block over the weights ``keep`` still holds: pruned weights are decoupled, so
    that OBS scores and updates leave them out. ``damping`` is relative to the mean of the diagonal."""
    size = fisher.shape[-1]
    kept = keep.reshape(-1, size).float()
    scale = fisher.diagonal(dim1=1, dim2=2).mean()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # no gradient yet: OBS scores by magnitude
    damped = fisher + (damping * scale) * torch.eye(size, device=fisher.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(_restricted(damped, kept)))


def obs_scores(weight: Tensor, inverse: Tensor) -> Tensor:
    """``w² / (2 [F⁻¹]ᵢᵢ)``: the rise in loss that OBS predicts for pruning each weight alone (OBS, oBERT)."""
    w = weight.detach().float().reshape(inverse.shape[:2])
    return (w.square() / (2.0 * inverse.diagonal(dim1=1, dim2=2))).view(weight.shape)


def obs_update_(weight: Tensor, inverse: Tensor, pruned: Tensor) -> Tensor:
    """Moves the kept weights of every block to make up for its newly ``pruned`` ones, in place (OBS:
    ``δw = -F⁻¹[:, Q] (F⁻¹[Q, Q])⁻¹ w_Q``); the pruned weights land on zero, up to rounding (the masks then
    zero them exactly)."""
    q = pruned.reshape(inverse.shape[:2]).float()
    w = weight.detach().float().reshape(q.shape)
    solved = torch.linalg.solve(_restricted(inverse, q), (w * q).unsqueeze(-1))
    return weight.sub_((inverse @ solved).view(weight.shape).to(weight.dtype))


def _restricted(blocks: Tensor, selected: Tensor) -> Tensor:
    """Every block with the rows and columns of its unselected weights (``selected``: 1 or 0 per weight) replaced
    by the identity's: inverting or solving it acts on the selected weights alone."""
    return blocks * selected[:, :, None] * selected[:, None, :] + torch.diag_embed(1.0 - selected)


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether no tensor holds inf or NaN: one min/max pass per tensor (no temporary the size of the tensor,
    unlike ``isfinite().all()``, which is ten times slower on CPU; unlike a sum, no fp16 overflow) and one
    synchronisation for all."""
    extremes = [torch.stack(torch.aminmax(t.detach())).float() for t in tensors if t.numel()]
    return not extremes or bool(torch.stack(extremes).isfinite().all())

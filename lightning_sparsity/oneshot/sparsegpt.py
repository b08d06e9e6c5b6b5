"""SparseGPT (Frantar & Alistarh, 2023): prune a Linear weight so that its outputs on the calibration inputs
change least, updating the kept weights to make up for the pruned ones.

Columns (input features) are processed left to right in blocks. Inside a block, each column's pruned weights
are zeroed and the error they leave is spread over the block's later columns through the Cholesky factor of
``H⁻¹`` (the Optimal Brain Surgeon update restricted to the columns not yet fixed); the block's accumulated
errors then update all later columns at once (lazy batch updates). Which weights a block prunes is chosen
when the block starts (for N:M, when each group of M columns starts) from ``w² / [H⁻¹]ⱼⱼ²``, the OBS saliency.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sparsity.functional.patterns import Method, NOfM, Pattern, pattern_masks


def inverse_hessian_factor(hessian: Tensor, damping: float) -> Tensor:
    """The upper Cholesky factor of ``(H + λI)⁻¹`` with ``λ = damping x mean(diag H)``; inputs that were
    always zero (a zero diagonal) get a unit diagonal, decoupling them."""
    hessian = hessian.clone()
    diagonal = hessian.diagonal()
    diagonal[diagonal == 0] = 1.0
    diagonal.add_(damping * diagonal.mean())
    try:
        lower = torch.linalg.cholesky(hessian)
        return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError(
            f"SparseGPT: the damped Hessian is not positive definite at damping={damping}; raise damping"
        ) from None


@torch.no_grad()
def sparsegpt_prune_(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float,
    pattern: Pattern,
    method: Method = "per_tensor",
    block_size: int = 128,
    damping: float = 0.01,
) -> Tensor:
    """Prunes ``weight`` (``out x in``) in place to ``sparsity`` under ``pattern`` (``"1x1"`` or ``"N:M"``) and
    returns its keep-mask (True = kept); pruned weights are exactly ``+0.0``.

    ``per_tensor`` prunes ``round(sparsity x weights)`` in all, ``per_channel`` ``round(sparsity x in)`` in every
    row; each block (or N:M group) gets its share of that count, so the totals are exact.
    """
    rows, columns = weight.shape
    factor = inverse_hessian_factor(hessian.to(weight.device, torch.float32), damping)
    w = weight.float().clone()
    keep = torch.ones_like(w, dtype=torch.bool)
    chooser = _Chooser(sparsity, pattern, method, rows, columns)
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block = w[:, start:stop].clone()
        block_factor = factor[start:stop, start:stop]
        errors = torch.zeros_like(block)
        diagonal = block_factor.diagonal()
        if not isinstance(pattern, NOfM):
            keep[:, start:stop] = chooser.choose(block, diagonal, start)
        for column in range(stop - start):
            if isinstance(pattern, NOfM) and column % pattern.m == 0:
                group = slice(column, column + pattern.m)
                keep[:, start + column : start + column + pattern.m] = chooser.choose(
                    block[:, group], diagonal[group], start + column
                )
            values = block[:, column]
            kept = values * keep[:, start + column]
            error = (values - kept) / diagonal[column]
            block[:, column:].sub_(error[:, None] * block_factor[column, column:][None, :])
            block[:, column] = kept
            errors[:, column] = error
        w[:, start:stop] = block
        w[:, stop:].sub_(errors @ factor[start:stop, stop:])
    weight.copy_(w.masked_fill_(~keep, 0.0))
    return keep


class _Chooser:
    """Picks the weights to prune in consecutive column ranges so that the whole weight prunes exactly
    ``round(sparsity x count)``: a range's share is the rounded cumulative target at its end minus that at
    its start (per row for ``per_channel``)."""

    def __init__(self, sparsity: float, pattern: Pattern, method: Method, rows: int, columns: int) -> None:
        self.sparsity = sparsity
        self.pattern = pattern
        self.method = method
        self.per_row = method == "per_channel"
        self.rows = rows

    def _target(self, columns: int) -> int:
        return round(self.sparsity * columns * (1 if self.per_row else self.rows))

    def choose(self, values: Tensor, inverse_diagonal: Tensor, start: int) -> Tensor:
        width = values.shape[1]
        share = self._target(start + width) - self._target(start)
        size = width if self.per_row else width * self.rows
        share = min(share, round(self.pattern.max_sparsity * size))  # N:M: never past the group's N zeros
        saliency = values.square() / inverse_diagonal.square()[None, :]
        return pattern_masks([saliency], share / size, self.pattern, self.method)[0]

"""Wanda (Sun et al., 2024): prune by weight magnitude times input activation norm, with no weight update."""

from __future__ import annotations

from torch import Tensor


def wanda_scores(weight: Tensor, feature_norms_squared: Tensor) -> Tensor:
    """``|W_ij| x ||X_j||₂``: a weight matters as much as it scales the inputs it sees; ``feature_norms_squared``
    holds ``||X_j||²`` per input feature ``j`` over the calibration tokens."""
    return weight.detach().float().abs() * feature_norms_squared.to(weight.device).sqrt()[None, :]

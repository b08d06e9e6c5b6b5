"""Exact selection of the k smallest elements across a list of tensors, without sorting them.

A full sort or ``kthvalue`` over millions of scores at every mask update is the bottleneck of gradual
pruning. Here a strided sample brackets the k-th value in ``(lo, hi]``; one pass per tensor counts the
elements at most ``lo`` and gathers the few inside the bracket, and only those are ranked exactly. The
same counts tell how many elements tie with the threshold, so the masks cost one comparison per element
(plus a tie-breaking pass only when ties straddle the threshold). The result equals what a full sort
gives; ties at the threshold are broken by position, so exactly ``k`` elements are chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_MIN_SAMPLE = 1 << 12
_MAX_SAMPLE = 1 << 16
_SMALL = 1 << 16  # up to this many elements, kthvalue over all of them is cheapest


def kth_smallest(values: Sequence[Tensor], k: int) -> Tensor:
    """The exact ``k``-th smallest element (1-based) of all elements of ``values`` together."""
    flats = [v.reshape(-1) for v in values]
    total = sum(f.numel() for f in flats)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    return _select(flats, total, k)[0]


def smallest_k_mask(values: Sequence[Tensor], k: int) -> list[Tensor]:
    """Boolean keep-masks (False = pruned) choosing exactly the ``k`` smallest elements of ``values``.

    Elements equal to the threshold are pruned in order of position (tensor by tensor, row-major)
    until exactly ``k`` are pruned.
    """
    if k <= 0:
        return [torch.ones_like(v, dtype=torch.bool) for v in values]
    total = sum(v.numel() for v in values)
    if k >= total:
        return [torch.zeros_like(v, dtype=torch.bool) for v in values]
    threshold, at_most = _select([v.reshape(-1) for v in values], total, k)
    keeps = [v > threshold for v in values]
    surplus = at_most - k  # ties at the threshold beyond k
    for value, keep in zip(reversed(values), reversed(keeps)):
        if surplus <= 0:
            break
        tied = (value.reshape(-1) == threshold).nonzero().squeeze(1)
        restore = tied[-surplus:]
        keep.view(-1)[restore] = True
        surplus -= restore.numel()
    return keeps


def _select(flats: Sequence[Tensor], total: int, k: int) -> tuple[Tensor, int]:
    """The k-th smallest value and how many elements are at most it."""
    if total > _SMALL:
        lo, hi = _bracket(flats, total, k)
        at_most_lo = 0
        bands = []
        for flat in flats:
            up_to_lo = flat <= lo
            inside = (flat <= hi).logical_xor_(up_to_lo)  # lo < flat <= hi, as lo <= hi
            at_most_lo += int(torch.count_nonzero(up_to_lo))
            bands.append(flat[inside])
        band = torch.cat(bands)
        if at_most_lo < k <= at_most_lo + band.numel():
            threshold = band.kthvalue(k - at_most_lo).values
            return threshold, at_most_lo + int(torch.count_nonzero(band <= threshold))
    everything = torch.cat(flats)  # small, or the sample missed: rank everything
    threshold = everything.kthvalue(k).values
    return threshold, int(torch.count_nonzero(everything <= threshold))


def _bracket(flats: Sequence[Tensor], total: int, k: int) -> tuple[Tensor, Tensor]:
    """Values ``lo <= hi`` from a strided sample that most likely hold the k-th smallest in ``(lo, hi]``."""
    stride = total // min(max(total >> 7, _MIN_SAMPLE), _MAX_SAMPLE)
    sample = torch.cat([f[stride // 2 :: stride] for f in flats])
    size = sample.numel()
    quantile = k / total
    margin = 4.0 * math.sqrt(quantile * (1.0 - quantile) / size) + 4.0 / size
    lo_rank = math.floor((quantile - margin) * size)  # 1-based ranks in the sample
    hi_rank = math.ceil((quantile + margin) * size) + 1
    infinity = torch.tensor(float("inf"), dtype=sample.dtype, device=sample.device)
    lo = sample.kthvalue(lo_rank).values if lo_rank >= 1 else -infinity
    hi = sample.kthvalue(hi_rank).values if hi_rank <= size else infinity
    return lo, hi

"""Exact selection of the k smallest elements across a list of tensors, without sorting them.

A full sort or ``kthvalue`` over millions of scores at every mask update is the bottleneck of gradual
pruning. Here a strided sample brackets the k-th value, one counting pass fixes how many elements lie
below the bracket, and only the few candidates inside it are ranked exactly. The result equals what a
full sort gives; ties at the threshold are broken by position, so exactly ``k`` elements are chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

_SAMPLE_SIZE = 1 << 16
_SMALL = 4 * _SAMPLE_SIZE


def kth_smallest(values: Sequence[Tensor], k: int) -> Tensor:
    """The exact ``k``-th smallest element (1-based) of all elements of ``values`` together."""
    flats = [v.reshape(-1) for v in values]
    total = sum(f.numel() for f in flats)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    if total <= _SMALL:
        return torch.cat(flats).kthvalue(k).values
    lo, hi = _bracket(flats, total, k)
    below = 0
    candidates = []
    for flat in flats:
        under = flat < lo
        below += int(under.sum())
        candidates.append(flat[(flat <= hi) & ~under])
    band = torch.cat(candidates)
    if not below < k <= below + band.numel():  # the sample missed: rank everything
        return torch.cat(flats).kthvalue(k).values
    return band.kthvalue(k - below).values


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
    threshold = kth_smallest(values, k)
    keeps = [v > threshold for v in values]
    surplus = sum(int((~keep).sum()) for keep in keeps) - k  # ties at the threshold beyond k
    for value, keep in zip(reversed(values), reversed(keeps)):
        if surplus <= 0:
            break
        tied = (value.reshape(-1) == threshold).nonzero().squeeze(1)
        restore = tied[-surplus:]
        keep.view(-1)[restore] = True
        surplus -= restore.numel()
    return keeps


def _bracket(flats: Sequence[Tensor], total: int, k: int) -> tuple[Tensor, Tensor]:
    """Values ``lo <= hi`` from a strided sample that most likely enclose the k-th smallest."""
    stride = max(total // _SAMPLE_SIZE, 1)
    sample = torch.cat([f[stride // 2 :: stride] for f in flats]).sort().values
    size = sample.numel()
    quantile = k / total
    margin = 4.0 * math.sqrt(quantile * (1.0 - quantile) / size) + 4.0 / size
    lo_index = math.floor((quantile - margin) * size)
    hi_index = math.ceil((quantile + margin) * size)
    infinity = torch.tensor(float("inf"), dtype=sample.dtype, device=sample.device)
    lo = sample[lo_index] if lo_index >= 0 else -infinity
    hi = sample[hi_index] if hi_index < size else infinity
    return lo, hi

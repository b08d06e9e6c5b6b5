"""Exact selection of the k smallest elements across a list of tensors, without sorting them.

A full sort or ``kthvalue`` over millions of scores at every mask update is the bottleneck of gradual
pruning. Here a strided sample brackets the k-th value in ``(lo, hi]``; one comparison with ``lo`` per
element gives the masks and the count below the bracket, one with ``hi`` finds the few elements inside
it, and only those are ranked exactly and cleared from the masks. Their counts also tell how many
elements tie with the threshold, so a tie-breaking pass runs only when ties straddle it. The result
equals what a full sort gives; ties at the threshold are broken by position, so exactly ``k`` elements
are chosen.

On a GPU a full (radix) sort is the fastest exact selection: bert-base's 85M scores sort in 4 ms on an H200,
where the bracket took 0.6 s (its ``kthvalue`` and many small synchronising steps are slow there). Selections
tensor by tensor (local scope) sort equal-sized tensors together, as the rows of one sort: each small sort
costs more to launch than to run.
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
    if flats[0].device.type != "cpu":
        return torch.sort(torch.cat(flats)).values[k - 1]
    found = _select_in_bracket(flats, total, k)
    return (found or _select_all(flats, k))[0]


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
    flats = [v.reshape(-1) for v in values]
    if flats[0].device.type != "cpu":
        keeps = _smallest_k_by_sort(flats, k)
        return [keep.view_as(v) for keep, v in zip(keeps, values, strict=True)]
    found = _select_in_bracket(flats, total, k)
    if found is None:
        threshold, at_most = _select_all(flats, k)
        keeps = [flat > threshold for flat in flats]
    else:
        threshold, at_most, keeps = found
    surplus = at_most - k  # ties at the threshold beyond k
    for flat, keep in zip(reversed(flats), reversed(keeps), strict=True):
        if surplus <= 0:
            break
        tied = (flat == threshold).nonzero().squeeze(1)
        restore = tied[-surplus:]
        keep[restore] = True
        surplus -= restore.numel()
    return [keep.view_as(v) for keep, v in zip(keeps, values, strict=True)]


def smallest_k_each(values: Sequence[Tensor], ks: Sequence[int]) -> list[Tensor]:
    """Boolean keep-masks choosing the ``ks[i]`` smallest elements of each ``values[i]`` on its own.

    Ties are broken by position, as ``smallest_k_mask`` breaks them. On a GPU, tensors with as many elements
    and the same k are ranked in one stable sort of their rows.
    """
    if not values or values[0].device.type == "cpu":
        return [smallest_k_mask([v], k)[0] for v, k in zip(values, ks, strict=True)]
    return _smallest_k_each_by_sort(values, ks)


def _smallest_k_each_by_sort(values: Sequence[Tensor], ks: Sequence[int]) -> list[Tensor]:
    """``smallest_k_each`` by stable sorts, one for each set of tensors on one device with as many elements and the
    same k."""
    keeps: list[Tensor] = list(values)
    alike: dict[tuple[torch.device, int, int], list[int]] = {}
    for index, (v, k) in enumerate(zip(values, ks, strict=True)):
        alike.setdefault((v.device, v.numel(), k), []).append(index)
    for (_, _, k), indices in alike.items():
        flats = [values[i].reshape(1, -1) for i in indices]
        rows = flats[0] if len(flats) == 1 else torch.cat(flats)  # one tensor is sorted where it is, not copied
        keep = torch.ones_like(rows, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, torch.sort(rows, dim=1, stable=True).indices[:, :k], False)
        for index, row in zip(indices, keep, strict=True):
            keeps[index] = row.view_as(values[index])
    return keeps


def _smallest_k_by_sort(flats: Sequence[Tensor], k: int) -> list[Tensor]:
    """Keep-masks pruning the first ``k`` elements of one stable sort of all of ``flats``: ties by position."""
    keep = _smallest_k_each_by_sort([torch.cat(flats)], [k])[0]
    return list(keep.split([flat.numel() for flat in flats]))


def _select_in_bracket(flats: Sequence[Tensor], total: int, k: int) -> tuple[Tensor, int, list[Tensor]] | None:
    """The k-th smallest value, how many elements are at most it, and keep-masks pruning all those.

    One comparison with ``lo`` per element gives the masks and the count below the bracket; the elements
    in ``(lo, hi]`` are gathered, ranked, and those at most the k-th are cleared from the masks in place.
    None for few elements (ranking them all is cheaper) or when the sample's bracket missed the k-th value.
    """
    if total <= _SMALL:
        return None
    lo, hi = _bracket(flats, total, k)
    keeps, positions = [], []
    at_most = 0
    for flat in flats:
        keep = flat > lo
        at_most += flat.numel() - int(torch.count_nonzero(keep))
        positions.append((flat <= hi).logical_and_(keep).nonzero().squeeze(1))
        keeps.append(keep)
    bands = [flat.index_select(0, inside) for flat, inside in zip(flats, positions, strict=True)]
    band = torch.cat(bands)
    if not at_most < k <= at_most + band.numel():
        return None
    threshold = band.kthvalue(k - at_most).values
    for keep, inside, values in zip(keeps, positions, bands, strict=True):
        pruned = inside[values <= threshold]
        keep.index_fill_(0, pruned, False)
        at_most += pruned.numel()
    return threshold, at_most, keeps


def _select_all(flats: Sequence[Tensor], k: int) -> tuple[Tensor, int]:
    """The k-th smallest value and how many elements are at most it, ranking everything."""
    everything = torch.cat(flats)
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

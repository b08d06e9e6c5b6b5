"""Exact selection over tensors split across processes by rows (FSDP2's shards): the masks one process would choose
in the whole tensors, bit for bit, without gathering them.

Each process holds, of every tensor, one contiguous range of its rows (possibly empty), known by the position of
its first row (``offsets``); a range that another process also holds (HSDP's replicas) is counted by one of them
only (``primary``). The k-th value is found as :mod:`~lightning_sparsity.functional.selection` finds it in one
process: on CPUs a bracket from a strided sample of every range (gathered), then the few elements inside it
(gathered and ranked); on GPUs, or where the bracket missed, the radix select with its histograms summed across
processes (three all-reduces of 2048 counts for float32 scores, whatever their size).
Ties at the threshold are broken by position, as :func:`~lightning_sparsity.functional.selection.smallest_k_mask`
breaks them: the last tied elements of the whole tensors stay kept, found from one all-gather of each range's tied
count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_sparsity.functional.selection import (
    _SMALL,
    Selection,
    _bracket_of,
    _sample,
    _select_by_radix,
)


class ShardedSelection(Selection):
    """Selections over row ranges of tensors split across the processes of ``group`` (the default group: all).

    Every process must make the same calls in the same order: each one is collective.
    """

    def __init__(self, offsets: Sequence[int], primary: Sequence[bool], group: Optional[Any] = None) -> None:
        self.offsets = list(offsets)
        self.primary = list(primary)
        self.group = group

    def sizes(self, values: Sequence[Tensor]) -> list[int]:
        return self._summed([v.numel() for v in values], values)

    def kept(self, keeps: Sequence[Tensor]) -> list[int]:
        return self._summed([int(torch.count_nonzero(keep)) for keep in keeps], keeps)

    def smallest_k_mask(self, values: Sequence[Tensor], k: int) -> list[Tensor]:
        total = sum(self.sizes(values))
        if k <= 0:
            return [torch.ones_like(v, dtype=torch.bool) for v in values]
        if k >= total:
            return [torch.zeros_like(v, dtype=torch.bool) for v in values]
        flats = [v.reshape(-1) for v in values]
        counted = [flat if primary else flat[:0] for flat, primary in zip(flats, self.primary, strict=True)]
        found = self._select_in_bracket(flats, counted, total, k) if flats[0].device.type == "cpu" else None
        if found is None:
            threshold, at_most = _select_by_radix(counted, k, reduce=self._all_reduce)
            keeps = [flat > threshold for flat in flats]
        else:
            threshold, at_most, keeps = found
        if at_most > k:
            self._keep_last_ties(flats, keeps, threshold, surplus=at_most - k)
        return [keep.view_as(v) for keep, v in zip(keeps, values, strict=True)]

    def smallest_k_each(self, values: Sequence[Tensor], ks: Sequence[int]) -> list[Tensor]:
        return [
            self.subset([index]).smallest_k_mask([value], k)[0]
            for index, (value, k) in enumerate(zip(values, ks, strict=True))
        ]

    def subset(self, indices: Sequence[int]) -> ShardedSelection:
        return ShardedSelection([self.offsets[i] for i in indices], [self.primary[i] for i in indices], self.group)

    def _select_in_bracket(
        self, flats: list[Tensor], counted: list[Tensor], total: int, k: int
    ) -> tuple[Tensor, int, list[Tensor]] | None:
        """The CPU's bracket select across processes: a strided sample of every range, gathered, brackets the k-th
        value in ``(lo, hi]``; one comparison per element with each bound, then the few elements inside the bracket
        are gathered and ranked. None when the bracket missed (the radix select runs instead), as on one process."""
        if total <= _SMALL:
            return None
        lo, hi = _bracket_of(self._all_gathered(_sample(counted, total)), total, k)
        keeps, positions = [], []
        below = 0
        for flat, primary in zip(flats, self.primary, strict=True):
            keep = flat > lo
            below += (flat.numel() - int(torch.count_nonzero(keep))) if primary else 0
            positions.append((flat <= hi).logical_and_(keep).nonzero().squeeze(1))
            keeps.append(keep)
        bands = [flat.index_select(0, inside) for flat, inside in zip(flats, positions, strict=True)]
        counted_band = torch.cat(
            [b for b, primary in zip(bands, self.primary, strict=True) if primary] or [bands[0][:0]]
        )
        band = self._all_gathered(counted_band)
        below = int(self._all_reduce(torch.tensor([below], device=flats[0].device))[0])
        if not below < k <= below + band.numel():
            return None
        threshold = band.kthvalue(k - below).values
        for keep, inside, values in zip(keeps, positions, bands, strict=True):
            keep.index_fill_(0, inside[values <= threshold], False)
        return threshold, below + int(torch.count_nonzero(band <= threshold)), keeps

    def _all_gathered(self, tensor: Tensor) -> Tensor:
        """The 1-D tensors of every process, joined in process order."""
        sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(sizes, torch.tensor([tensor.numel()], device=tensor.device), group=self.group)
        longest = max(int(size) for size in sizes)
        padded = torch.cat([tensor, tensor.new_zeros(longest - tensor.numel())])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([part[: int(size)] for part, size in zip(parts, sizes, strict=True)])

    def _all_reduce(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def _summed(self, counts: list[int], like: Sequence[Tensor]) -> list[int]:
        """Per tensor, the sum over processes of ``counts`` (each range counted once)."""
        mine = [count if primary else 0 for count, primary in zip(counts, self.primary, strict=True)]
        return self._all_reduce(torch.tensor(mine, dtype=torch.long, device=like[0].device)).tolist()

    def _keep_last_ties(self, flats: list[Tensor], keeps: list[Tensor], threshold: Tensor, surplus: int) -> None:
        """Keeps the last ``surplus`` elements equal to ``threshold`` in the order of the whole tensors (tensor by
        tensor, rows in order): ranges are ordered by their first row, so a count per range says which are whose."""
        tied = [int(torch.count_nonzero(flat == threshold)) for flat in flats]
        row = torch.tensor(
            [
                [offset, count, int(primary)]
                for offset, count, primary in zip(self.offsets, tied, self.primary, strict=True)
            ],
            dtype=torch.long,
            device=flats[0].device,
        )
        table = [torch.empty_like(row) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(table, row, group=self.group)
        ranges = torch.stack(table).cpu().tolist()  # process x tensor x (offset, tied, primary)
        restore: dict[tuple[int, int], int] = {}
        for index in reversed(range(len(flats))):
            held = sorted({(r[index][0], r[index][1]) for r in ranges if r[index][2] and r[index][1]}, reverse=True)
            for offset, count in held:
                restore[(index, offset)] = min(surplus, count)
                surplus -= restore[(index, offset)]
                if not surplus:
                    break
            if not surplus:
                break
        for index, (flat, keep) in enumerate(zip(flats, keeps, strict=True)):
            count = restore.get((index, self.offsets[index]), 0)
            if count:
                positions = (flat == threshold).nonzero().squeeze(1)
                keep[positions[-count:]] = True

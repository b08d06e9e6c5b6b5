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
from functools import reduce
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

    def summed(self, counts: list[int], like: Sequence[Tensor]) -> list[int]:
        """Per tensor, the sum over processes of ``counts`` (each range counted once): one all-reduce."""
        mine = [count if primary else 0 for count, primary in zip(counts, self.primary, strict=True)]
        return self._all_reduce(torch.tensor(mine, dtype=torch.long, device=like[0].device)).tolist()

    def sizes(self, values: Sequence[Tensor]) -> list[int]:
        return self.summed([v.numel() for v in values], values)

    def kept(self, keeps: Sequence[Tensor]) -> list[int]:
        return self.summed([int(torch.count_nonzero(keep)) for keep in keeps], keeps)

    def smallest_k_mask(self, values: Sequence[Tensor], k: int) -> list[Tensor]:
        return self._select(values, [list(range(len(values)))], [k])

    def smallest_k_each(self, values: Sequence[Tensor], ks: Sequence[int]) -> list[Tensor]:
        return self._select(values, [[index] for index in range(len(values))], ks)

    def subset(self, indices: Sequence[int]) -> ShardedSelection:
        return ShardedSelection([self.offsets[i] for i in indices], [self.primary[i] for i in indices], self.group)

    def _select(self, values: Sequence[Tensor], groups: list[list[int]], ks: Sequence[int]) -> list[Tensor]:
        """Keep-masks of ``values`` choosing the ``ks[g]`` smallest elements of each group of tensors ``groups[g]``
        (indices into ``values``), all groups at once: a fixed number of collectives, however many groups."""
        sizes = self.sizes(values)
        flats = [v.reshape(-1) for v in values]
        keeps = [torch.ones_like(flat, dtype=torch.bool) for flat in flats]
        pending = []
        for members, k in zip(groups, ks, strict=True):
            if k >= sum(sizes[i] for i in members):
                for i in members:
                    keeps[i] = torch.zeros_like(flats[i], dtype=torch.bool)
            elif k > 0:
                pending.append((members, k))
        on_cpu = bool(flats) and flats[0].device.type == "cpu"
        found = self._select_in_brackets(flats, sizes, pending, keeps) if on_cpu else [None] * len(pending)
        thresholds = []
        for (members, k), result in zip(pending, found, strict=True):
            if result is None:  # the bracket missed, or a GPU: the radix select, for this group alone
                counted = [flats[i] if self.primary[i] else flats[i][:0] for i in members]
                threshold, at_most = _select_by_radix(counted, k, reduce=self._all_reduce)
                for i in members:
                    keeps[i] = flats[i] > threshold
                result = threshold, at_most
            thresholds.append(result)
        self._keep_last_ties(flats, keeps, pending, thresholds)
        return [keep.view_as(v) for keep, v in zip(keeps, values, strict=True)]

    def _select_in_brackets(
        self, flats: list[Tensor], sizes: list[int], pending: list[tuple[list[int], int]], keeps: list[Tensor]
    ) -> list[tuple[Tensor, int] | None]:
        """The CPU's bracket select across processes, for every group at once: a strided sample of every range,
        gathered, brackets each group's k-th value in ``(lo, hi]``; one comparison per element with each bound, then
        the few elements inside the brackets are gathered and ranked. Each group's ``(threshold, elements at most
        it)``, its pruned elements cleared from ``keeps``; None where the bracket missed (or few elements), which
        the radix select then serves, as in one process."""
        bracketed = [g for g, (members, _) in enumerate(pending) if sum(sizes[i] for i in members) > _SMALL]
        found: list[tuple[Tensor, int] | None] = [None] * len(pending)
        if not bracketed:
            return found
        totals = {g: sum(sizes[i] for i in pending[g][0]) for g in bracketed}
        dtypes = {g: reduce(torch.promote_types, (flats[i].dtype for i in pending[g][0])) for g in bracketed}
        counted = {g: [flats[i] for i in pending[g][0] if self.primary[i]] for g in bracketed}
        samples = self._gathered_parts([_sample(counted[g] or [flats[0][:0]], totals[g]) for g in bracketed])
        bounds = {
            g: _bracket_of(sample.to(dtypes[g]), totals[g], pending[g][1])
            for g, sample in zip(bracketed, samples, strict=True)
        }
        positions: dict[int, Tensor] = {}
        below = []
        for g in bracketed:
            lo, hi = bounds[g]
            count = 0
            for i in pending[g][0]:
                keeps[i] = flats[i] > lo
                count += (flats[i].numel() - int(torch.count_nonzero(keeps[i]))) if self.primary[i] else 0
                positions[i] = (flats[i] <= hi).logical_and_(keeps[i]).nonzero().squeeze(1)
            below.append(count)
        bands = {i: flats[i].index_select(0, inside) for i, inside in positions.items()}
        local_bands = [
            torch.cat([bands[i] for i in pending[g][0] if self.primary[i]] or [flats[0][:0]]) for g in bracketed
        ]
        gathered_bands = self._gathered_parts(local_bands)
        below = self._all_reduce(torch.tensor(below, device=flats[0].device)).tolist()
        for g, band, low in zip(bracketed, gathered_bands, below, strict=True):
            members, k = pending[g]
            if not low < k <= low + band.numel():
                continue  # every process finds the same: the radix select serves this group
            band = band.to(dtypes[g])
            threshold = band.kthvalue(k - low).values
            for i in members:
                keeps[i].index_fill_(0, positions[i][bands[i] <= threshold], False)
            found[g] = (threshold, low + int(torch.count_nonzero(band <= threshold)))
        return found

    def _gathered_parts(self, parts: list[Tensor]) -> list[Tensor]:
        """Each process's 1-D ``parts[j]``, joined in process order, for every ``j``: two all-gathers in all (the
        values travel as float64, which holds every score of up to 64 bits exactly)."""
        device = parts[0].device
        sizes = torch.tensor([part.numel() for part in parts], device=device)
        table = [torch.empty_like(sizes) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(table, sizes, group=self.group)
        counts = torch.stack(table).cpu().tolist()  # process x part
        longest = max(1, *(sum(row) for row in counts))  # never an empty all-gather
        mine = torch.cat([part.to(torch.float64) for part in parts])
        padded = torch.cat([mine, mine.new_zeros(longest - mine.numel())])
        everyone = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(everyone, padded, group=self.group)
        pieces = [list(data[: sum(row)].split(row)) for data, row in zip(everyone, counts, strict=True)]
        return [torch.cat([process[j] for process in pieces]) for j in range(len(parts))]

    def _all_reduce(self, tensor: Tensor) -> Tensor:
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def _keep_last_ties(
        self,
        flats: list[Tensor],
        keeps: list[Tensor],
        pending: list[tuple[list[int], int]],
        thresholds: list[tuple[Tensor, int]],
    ) -> None:
        """Keeps, in each group, the elements equal to its threshold beyond its k: the last ones in the order of the
        whole tensors (tensor by tensor, rows in order). Ranges are ordered by their first row, so a count per range,
        from one all-gather for all groups, says which are whose."""
        tied_groups = [
            g for g, ((_, k), (_, at_most)) in enumerate(zip(pending, thresholds, strict=True)) if at_most > k
        ]
        if not tied_groups:
            return
        tied = [0] * len(flats)
        for g in tied_groups:
            for i in pending[g][0]:
                tied[i] = int(torch.count_nonzero(flats[i] == thresholds[g][0]))
        rows = [
            [offset, count, int(primary)]
            for offset, count, primary in zip(self.offsets, tied, self.primary, strict=True)
        ]
        ranges = all_gathered_rows(rows, flats[0].device, self.group)  # process x tensor x (offset, tied, primary)
        for g in tied_groups:
            (members, k), (threshold, at_most) = pending[g], thresholds[g]
            surplus = at_most - k
            for index in reversed(members):
                held = sorted({(r[index][0], r[index][1]) for r in ranges if r[index][2] and r[index][1]}, reverse=True)
                for offset, count in held:
                    restored = min(surplus, count)
                    if offset == self.offsets[index] and restored:
                        positions = (flats[index] == threshold).nonzero().squeeze(1)
                        keeps[index][positions[-restored:]] = True
                    surplus -= restored
                    if not surplus:
                        break
                if not surplus:
                    break


def all_gathered_rows(rows: list[list[int]], device: Any, group: Optional[Any] = None) -> list[list[list[int]]]:
    """Every process's table of integers (the same number of rows and columns on each), by process: one all-gather."""
    mine = torch.tensor(rows, dtype=torch.long, device=device)
    tables = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(tables, mine, group=group)
    return torch.stack(tables).cpu().tolist()

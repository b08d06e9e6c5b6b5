"""Exact selection of the k smallest elements across a list of tensors, without sorting them.

A full sort or ``kthvalue`` over millions of scores at every mask update is the bottleneck of gradual
pruning. Here a strided sample brackets the k-th value in ``(lo, hi]``; one comparison with ``lo`` per
element gives the masks and the count below the bracket, one with ``hi`` finds the few elements inside
it, and only those are ranked exactly and cleared from the masks. Their counts also tell how many
elements tie with the threshold, so a tie-breaking pass runs only when ties straddle it. The result
equals what a full sort gives; ties at the threshold are broken by position, so exactly ``k`` elements
are chosen.

On a GPU the bracket is slow (its ``kthvalue`` and many small synchronising steps took 0.6 s for bert-base's 85M
scores on an H200). There a radix select finds the k-th value across tensors instead: histograms of the values'
order-preserving integer keys, one digit at a time, over chunks of at most ``_CHUNK`` elements, so that it holds
no copy of all scores and does not sort them (a full sort of bert-base's scores held 41 bytes per score).
Selections tensor by tensor (local scope) sort equal-sized tensors together, as the rows of sorts of at most
``_SORT_ROWS`` elements: each small sort costs more to launch than to run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import reduce

import torch
from torch import Tensor

_MIN_SAMPLE = 1 << 12
_MAX_SAMPLE = 1 << 16
_SMALL = 1 << 16  # up to this many elements, kthvalue over all of them is cheapest
_CHUNK = 1 << 22  # elements a GPU radix select copies and counts at once
_SORT_ROWS = 1 << 24  # elements of equal-sized tensors a GPU sorts at once, as rows
_DIGIT_BITS = 11  # a radix select's digit: 2048 bins, whose counts fit a GPU block's shared memory


def kth_smallest(values: Sequence[Tensor], k: int) -> Tensor:
    """The exact ``k``-th smallest element (1-based) of all elements of ``values`` together."""
    flats = [v.reshape(-1) for v in values]
    total = sum(f.numel() for f in flats)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}")
    if flats[0].device.type != "cpu":
        return _select_by_radix(flats, k)[0]
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
    on_cpu = flats[0].device.type == "cpu"
    found = _select_in_bracket(flats, total, k) if on_cpu else None
    if found is None:
        threshold, at_most = (_select_all if on_cpu else _select_by_radix)(flats, k)
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
    and the same k are ranked as the rows of stable sorts.
    """
    if not values or values[0].device.type == "cpu":
        return [smallest_k_mask([v], k)[0] for v, k in zip(values, ks, strict=True)]
    return _smallest_k_each_by_sort(values, ks)


def _smallest_k_each_by_sort(values: Sequence[Tensor], ks: Sequence[int]) -> list[Tensor]:
    """``smallest_k_each`` by stable sorts, one for each set of up to ``_SORT_ROWS`` elements of tensors on one
    device with as many elements and the same k."""
    keeps: list[Tensor] = list(values)
    alike: dict[tuple[torch.device, int, int], list[int]] = {}
    for index, (v, k) in enumerate(zip(values, ks, strict=True)):
        alike.setdefault((v.device, v.numel(), k), []).append(index)
    for (_, numel, k), group in alike.items():
        rows_per_sort = max(_SORT_ROWS // numel, 1)
        for start in range(0, len(group), rows_per_sort):
            indices = group[start : start + rows_per_sort]
            for index, keep in zip(indices, _smallest_k_of_rows([values[i] for i in indices], k), strict=True):
                keeps[index] = keep
    return keeps


def _smallest_k_of_rows(alike: Sequence[Tensor], k: int) -> list[Tensor]:
    """Keep-masks choosing the k smallest elements of each of the equal-sized ``alike``, ranked as the rows of one
    stable sort (ties by position)."""
    flats = [v.reshape(1, -1) for v in alike]
    rows = flats[0] if len(flats) == 1 else torch.cat(flats)  # one tensor is sorted where it is, not copied
    keep = torch.ones_like(rows, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, torch.sort(rows, dim=1, stable=True).indices[:, :k], False)
    return [row.view_as(v) for row, v in zip(keep, alike, strict=True)]


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
    everything = torch.cat(list(flats))
    threshold = everything.kthvalue(k).values
    return threshold, int(torch.count_nonzero(everything <= threshold))


def _select_by_radix(
    flats: Sequence[Tensor], k: int, reduce: Callable[[Tensor], Tensor] = lambda counts: counts
) -> tuple[Tensor, int]:
    """The k-th smallest value and how many elements are at most it, by a radix select on the values' keys.

    A histogram of every key's top digit, one chunk of keys at a time, gives the k-th key's top digit and how many
    keys lie below it; the keys that share that digit (the others are not kept) are refined digit by digit in the
    same way. Two passes over the data, no sort, and a wait for the GPU per chunk and digit. ``reduce`` sums each
    histogram with those of the other processes, for values split across them (``flats`` may then be empty).
    """
    source = _key_source(flats)
    width = source.itemsize * 8
    shifts = [*range(width - _DIGIT_BITS, 0, -_DIGIT_BITS), 0]  # of the digits, from the most significant
    bins = 1 << _DIGIT_BITS
    counts = _summed(
        (torch.bincount((_ordered_keys(c) >> shifts[0]) + bins // 2, minlength=bins) for c in _chunks(flats, source)),
        bins,
        flats[0].device,
    )
    prefix, below, rank, tied = _digit_of_rank(reduce(counts), rank=k, offset=-(bins // 2))
    keys = [key[(key >> shifts[0]) == prefix] for key in map(_ordered_keys, _chunks(flats, source))]
    for high, shift in itertools.pairwise(shifts):
        bins = 1 << (high - shift)
        counts = _summed(
            (torch.bincount((key >> shift) & (bins - 1), minlength=bins) for key in keys), bins, flats[0].device
        )
        digit, before, rank, tied = _digit_of_rank(reduce(counts), rank)
        below, prefix = below + before, (prefix << (high - shift)) + digit
        keys = [key[(key >> shift) == prefix] for key in keys]
    return _value_of_key(prefix, flats, source), below + tied


def _summed(histograms: Iterable[Tensor], bins: int, device: torch.device) -> Tensor:
    """The sum of histograms of ``bins`` bins (zeros when there are none)."""
    iterator = iter(histograms)
    total = next(iterator, None)
    if total is None:
        return torch.zeros(bins, dtype=torch.long, device=device)
    for histogram in iterator:
        total = total + histogram
    return total


def _digit_of_rank(counts: Tensor, rank: int, offset: int = 0) -> tuple[int, int, int, int]:
    """The digit (plus ``offset``) whose bin of a histogram ``counts`` holds the element of 1-based ``rank``, how
    many elements lie in the bins below it, the rank within its bin, and how many its bin holds."""
    cumulative = counts.cpu().cumsum(0)
    digit = int(torch.searchsorted(cumulative, rank))
    below = int(cumulative[digit - 1]) if digit else 0
    return digit + offset, below, rank - below, int(cumulative[digit]) - below


def _key_source(flats: Sequence[Tensor]) -> torch.dtype:
    """The type whose integer keys keep the values' order exactly: float32 for floats of up to 32 bits, float64,
    and int64 for integers."""
    dtype = reduce(torch.promote_types, (flat.dtype for flat in flats))
    if dtype in (torch.float16, torch.bfloat16, torch.float32):
        return torch.float32
    return dtype if dtype == torch.float64 else torch.long


def _chunks(flats: Sequence[Tensor], source: torch.dtype) -> Iterator[Tensor]:
    """``flats`` in order, in chunks of at most ``_CHUNK`` elements (small tensors joined, large ones split) of
    type ``source``; made one at a time."""
    run: list[Tensor] = []
    size = 0
    for piece in (piece for flat in flats if flat.numel() for piece in flat.split(_CHUNK)):
        if size + piece.numel() > _CHUNK:
            yield torch.cat(run) if len(run) > 1 else run[0]
            run, size = [], 0
        run.append(piece.to(source))
        size += piece.numel()
    if run:
        yield torch.cat(run) if len(run) > 1 else run[0]


def _ordered_keys(chunk: Tensor) -> Tensor:
    """Integer keys in the order of the values (-0.0 counts as +0.0, which it equals); integers are their own."""
    if not chunk.is_floating_point():
        return chunk
    return _flip_negatives(chunk.add(0.0).view(_bits_type(chunk.dtype)))


def _value_of_key(key: int, flats: Sequence[Tensor], source: torch.dtype) -> Tensor:
    """The value of ``flats``' type whose key is ``key``, on their device."""
    value = torch.tensor(key, dtype=_bits_type(source) if source.is_floating_point else source)
    if source.is_floating_point:
        value = _flip_negatives(value).view(source)
    return value.to(device=flats[0].device, dtype=flats[0].dtype)


def _bits_type(dtype: torch.dtype) -> torch.dtype:
    return torch.int32 if dtype == torch.float32 else torch.long


def _flip_negatives(bits: Tensor) -> Tensor:
    """A float's bits with all but the sign flipped where the sign is set: the order of the values as integers.
    Its own inverse."""
    return bits ^ ((bits >> (bits.element_size() * 8 - 1)) & torch.iinfo(bits.dtype).max)


def _bracket(flats: Sequence[Tensor], total: int, k: int) -> tuple[Tensor, Tensor]:
    """Values ``lo <= hi`` from a strided sample that most likely hold the k-th smallest in ``(lo, hi]``."""
    return _bracket_of(_sample(flats, total), total, k)


def _sample(flats: Sequence[Tensor], total: int) -> Tensor:
    """A strided sample of ``flats``, dense enough to bracket a rank among ``total`` elements."""
    stride = total // min(max(total >> 7, _MIN_SAMPLE), _MAX_SAMPLE)
    return torch.cat([f[stride // 2 :: stride] for f in flats])


def _bracket_of(sample: Tensor, total: int, k: int) -> tuple[Tensor, Tensor]:
    """Values ``lo <= hi`` of ``sample`` that most likely hold the k-th smallest of all ``total`` in ``(lo, hi]``."""
    size = sample.numel()
    quantile = k / total
    margin = 4.0 * math.sqrt(quantile * (1.0 - quantile) / size) + 4.0 / size
    lo_rank = math.floor((quantile - margin) * size)  # 1-based ranks in the sample
    hi_rank = math.ceil((quantile + margin) * size) + 1
    infinity = torch.tensor(float("inf"), dtype=sample.dtype, device=sample.device)
    lo = sample.kthvalue(lo_rank).values if lo_rank >= 1 else -infinity
    hi = sample.kthvalue(hi_rank).values if hi_rank <= size else infinity
    return lo, hi


class Selection:
    """Selections over tensors held whole by this process: what :func:`~lightning_sparsity.functional.patterns.
    pattern_masks` asks of the tensors it selects in (``ShardedSelection`` answers the same over row ranges of
    tensors split across processes)."""

    def summed(self, counts: list[int], like: Sequence[Tensor]) -> list[int]:
        """Per tensor, ``counts`` of its elements here summed over the processes that hold it: ``counts`` itself."""
        return counts

    def sizes(self, values: Sequence[Tensor]) -> list[int]:
        """Each tensor's number of elements."""
        return [v.numel() for v in values]

    def kept(self, keeps: Sequence[Tensor]) -> list[int]:
        """Each keep-mask's number of kept (True) elements."""
        counts = [torch.count_nonzero(keep) for keep in keeps]  # all counted before one is read: one GPU wait
        return [int(count) for count in counts]

    def smallest_k_mask(self, values: Sequence[Tensor], k: int) -> list[Tensor]:
        return smallest_k_mask(values, k)

    def smallest_k_each(self, values: Sequence[Tensor], ks: Sequence[int]) -> list[Tensor]:
        return smallest_k_each(values, ks)

    def subset(self, indices: Sequence[int]) -> Selection:
        """The selection over ``values[i]`` for ``i`` in ``indices`` of the tensors this one selects in."""
        return self


LOCAL = Selection()

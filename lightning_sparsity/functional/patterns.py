"""Sparsity patterns: which weights are pruned together, and the masks that realise a target ratio.

Weights are viewed as matrices of ``out_features x in_features`` (a convolution's kernel dimensions are
folded into the input dimension). Patterns:

- ``"1x1"``: unstructured, every weight on its own;
- ``"NxM"``: blocks of N rows (output features) by M columns (input features), scored by the sum of
  their elements' scores, e.g. ``"4x1"``; ``channel`` for a side spans the whole dimension, so
  ``"1xchannel"`` prunes whole output rows and ``"channelx1"`` whole input columns (INC's forms);
- ``"N:M"``: N zeros in every M consecutive weights along the input dimension, e.g. ``"2:4"``; a
  target below N/M prunes the lowest-scored of each group's N candidates;
- ``"head"`` / ``"neuron"``: whole attention heads / neurons (FFN neurons, conv channels) across several
  weights, found in the model by :mod:`lightning_sparsity.structure` (the masks are made there);
  ``"channel"`` is the old name of ``"neuron"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_sparsity.functional.selection import LOCAL, Selection

Method = Literal["per_tensor", "per_channel"]
Scope = Literal["local", "global"]
METHODS: tuple[str, ...] = get_args(Method)
SCOPES: tuple[str, ...] = get_args(Scope)
STRUCTURED_PATTERNS = ("head", "neuron", "channel")
PATTERN_FORMS = (
    '"1x1"',
    '"NxM" blocks such as "4x1" (a side may be "channel", as in "1xchannel")',
    '"N:M" such as "2:4"',
    '"head"',
    '"neuron"',
    '"channel"',
)

PATTERN_KINDS = ("unstructured", "blocks", "n_of_m", "structured")
PATTERN_EXAMPLES = {
    "unstructured": 'pattern="1x1"',
    "blocks": 'a block pattern "NxM" ("1x1" included)',
    "n_of_m": 'an "N:M" pattern',
    "structured": '"head" or "neuron"',
}

_BLOCK = re.compile(r"(\d+|channel)x(\d+|channel)")
_N_OF_M = re.compile(r"(\d+):(\d+)")


class Pattern:
    """A pattern kind: which weights of a matrix are pruned together. Each kind answers how its units are scored
    (:meth:`unit_scores`), how a kept unit becomes a weight mask (:meth:`expand`), whether it divides a weight
    (:meth:`divides`) and how sparse it can get (``max_sparsity``)."""

    kind: str = ""
    max_sparsity: float = 1.0  # the largest sparsity the pattern can express

    @property
    def is_structured(self) -> bool:
        return self.kind == "structured"

    @property
    def is_n_of_m(self) -> bool:
        return self.kind == "n_of_m"

    def divides(self, shape: torch.Size) -> bool:
        """Whether a weight of ``shape`` (``out x in``) splits into whole units."""
        return True

    def unit_scores(self, matrix: Tensor) -> Tensor:
        """The scores of the units of an ``out x in`` score matrix, as a matrix; lower is pruned first."""
        raise NotImplementedError

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        """The ``out x in`` weight mask of a unit keep-mask from :meth:`unit_scores`'s layout."""
        raise NotImplementedError

    def unit_grid(self, shape: torch.Size) -> tuple[int, int]:
        """The ``rows x columns`` of units of a weight of ``shape``: the ratios a row of units can reach are multiples
        of ``1 / columns``, those of the whole weight multiples of ``1 / (rows * columns)``."""
        rows, columns = self.unit_scores(torch.zeros(shape[0], _in_features(shape))).shape
        return rows, columns

    def unit_rows(self, shape: torch.Size) -> int:
        """How many rows (output features) a unit spans: a weight split by rows into ranges of whole units keeps each
        unit in one range (sharded training)."""
        return 1

    def units(self, shape: torch.Size) -> int:
        """How many units a weight of ``shape`` has."""
        rows, columns = self.unit_grid(shape)
        return rows * columns


@dataclass(frozen=True)
class Blocks(Pattern):
    """``rows x cols`` blocks scored by the sum of their elements' scores; a side of 0 spans the whole dimension.
    ``1x1`` is unstructured pruning."""

    rows: int = 1
    cols: int = 1

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "unstructured" if (self.rows, self.cols) == (1, 1) else "blocks"

    def block_shape(self, shape: torch.Size) -> tuple[int, int]:
        """The ``rows x cols`` block for a weight of ``shape``, whole-dimension (0) sides resolved."""
        return self.rows or shape[0], self.cols or _in_features(shape)

    def divides(self, shape: torch.Size) -> bool:
        rows, cols = self.block_shape(shape)
        return shape[0] % rows == 0 and _in_features(shape) % cols == 0

    def unit_scores(self, matrix: Tensor) -> Tensor:
        return block_reduce(matrix, *self.block_shape(matrix.shape))

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return expand_blocks(keep, *self.block_shape(shape)).reshape(shape)

    def unit_grid(self, shape: torch.Size) -> tuple[int, int]:
        rows, cols = self.block_shape(shape)
        return shape[0] // rows, _in_features(shape) // cols

    def unit_rows(self, shape: torch.Size) -> int:
        return self.block_shape(shape)[0]


@dataclass(frozen=True)
class NOfM(Pattern):
    """``n`` zeros in every ``m`` consecutive weights along the input dimension (``2:4``: sparse tensor cores)."""

    n: int = 2
    m: int = 4
    kind = "n_of_m"

    @property
    def max_sparsity(self) -> float:  # type: ignore[override]
        return self.n / self.m

    def divides(self, shape: torch.Size) -> bool:
        return _in_features(shape) % self.m == 0

    def unit_scores(self, matrix: Tensor) -> Tensor:
        """Element scores, where all but the ``n`` lowest of each group of ``m`` score ``+inf``, so that no
        selection of at most ``n / m`` of the weights ever reaches them."""
        groups = matrix.reshape(matrix.shape[0], -1, self.m)
        lowest = groups.topk(self.n, dim=-1, largest=False).indices
        candidates = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
        return groups.masked_fill(~candidates, float("inf")).reshape_as(matrix)

    def expand(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep.reshape(shape)

    def unit_grid(self, shape: torch.Size) -> tuple[int, int]:
        return shape[0], _in_features(shape)


@dataclass(frozen=True)
class Structured(Pattern):
    """Whole units of a model's structure across several weights (``head``: attention heads, ``channel``: FFN
    neurons); their masks are made from the model's structure (:mod:`lightning_sparsity.structure`)."""

    structure: str = "head"
    kind = "structured"


def parse_pattern(pattern: str) -> Pattern:
    """Parses ``"1x1"``, ``"NxM"``, ``"N:M"``, ``"head"``, ``"neuron"`` or ``"channel"``; else a ValueError."""
    if pattern in STRUCTURED_PATTERNS:
        return Structured(structure=pattern)
    if isinstance(pattern, str):
        if block := _BLOCK.fullmatch(pattern):
            rows, cols = (_block_side(side) for side in block.groups())
            if rows is not None and cols is not None and rows + cols > 0:
                return Blocks(rows=rows, cols=cols)
        elif n_of_m := _N_OF_M.fullmatch(pattern):
            n, m = int(n_of_m[1]), int(n_of_m[2])
            if 1 <= n < m:
                return NOfM(n=n, m=m)
    raise ValueError(
        f"pattern={pattern!r} is not valid: use one of {', '.join(PATTERN_FORMS)} "
        "(block sides >= 1; for N:M, 1 <= N < M)"
    )


def _block_side(side: str) -> int | None:
    """A block side: 0 for ``channel`` (the whole dimension), the number if >= 1, else None."""
    if side == "channel":
        return 0
    return int(side) if int(side) >= 1 else None


def as_matrix(weight: Tensor) -> Tensor:
    """The ``out_features x in_features`` view of a Linear or Conv weight (or of none of its rows)."""
    return weight.reshape(weight.shape[0], _in_features(weight.shape))


def block_reduce(matrix: Tensor, rows: int, cols: int) -> Tensor:
    """Sums ``rows x cols`` blocks of a matrix into one value each."""
    if rows == cols == 1:
        return matrix
    out_features, in_features = matrix.shape
    blocks = matrix.reshape(out_features // rows, rows, in_features // cols, cols)
    return blocks.sum(dim=(1, 3))


def expand_blocks(blocks: Tensor, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`block_reduce`'s layout: every block value repeated over its elements."""
    if rows == cols == 1:
        return blocks
    return blocks.repeat_interleave(rows, dim=0).repeat_interleave(cols, dim=1)


def group_scores(scores: Tensor, pattern: Pattern) -> Tensor:
    """Scores of the units the pattern prunes together, as a matrix (see :meth:`Pattern.unit_scores`)."""
    return pattern.unit_scores(as_matrix(scores))


def pattern_masks(
    scores: Sequence[Tensor],
    sparsity: float,
    pattern: Pattern,
    method: Method = "per_tensor",
    scope: Scope = "local",
    layer_bounds: tuple[float, float] = (0.0, 1.0),
    selection: Selection = LOCAL,
) -> list[Tensor]:
    """Boolean keep-masks (False = pruned), shaped like ``scores``, that prune a ``sparsity`` fraction.

    - ``per_tensor`` + ``local``: each tensor loses ``round(sparsity * units)`` of its units;
    - ``per_channel``: each output row (row of blocks) loses that fraction of its own units;
    - ``global``: one threshold across all tensors, ``round(sparsity * all units)`` in total.

    ``layer_bounds = (low, high)`` keeps each tensor's sparsity within ``[min(low, sparsity), high]``
    (INC's ``min/max_sparsity_ratio_per_op``): local scope caps the ratio at ``high``; global scope picks
    the lowest scores under those per-tensor limits. Scores of ``-inf`` mark weights that must stay
    pruned; lower scores are pruned first. ``selection`` selects in tensors split across processes by rows
    (``ShardedSelection``), each process passing its rows of every tensor.
    """
    if not 0.0 <= sparsity <= pattern.max_sparsity:
        raise ValueError(f"sparsity must be in [0, {pattern.max_sparsity}] for this pattern, got {sparsity}")
    units = [group_scores(s, pattern) for s in scores]
    low, high = layer_bounds
    if scope == "global" and (low > 0.0 or high < 1.0):
        keeps = _bounded_global_mask(units, sparsity, min(low, sparsity), high, selection)
    elif scope == "global":
        keeps = selection.smallest_k_mask(units, round(sparsity * sum(selection.sizes(units))))
    elif method == "per_channel":  # rows are whole in every process
        keeps = [_per_row_mask(u, round(min(sparsity, high) * u.shape[1])) for u in units]
    else:
        keeps = selection.smallest_k_each(units, [round(min(sparsity, high) * n) for n in selection.sizes(units)])
    return [pattern.expand(keep, s.shape).reshape(s.shape) for keep, s in zip(keeps, scores, strict=True)]


_CAP_ROUNDS = 3  # selections that cap only the tensors pruned past their caps, before all caps are set


def _bounded_global_mask(
    units: Sequence[Tensor], sparsity: float, low: float, high: float, selection: Selection
) -> list[Tensor]:
    """The globally lowest units, each tensor losing between ``floor(low * n)`` and ``floor(high * n)``.

    The best feasible set is what one selection prunes once each tensor's mandatory units score ``-inf`` and those
    past its cap ``+inf``; the total is ``round(sparsity * units)`` whenever the limits allow it. A cap is set only
    on a tensor that a selection prunes past it, and the selection is redone: a selection that respects every cap
    is the one that all caps set would give, and where caps bind little (the usual case) it costs one global
    selection instead of one more per tensor. After ``_CAP_ROUNDS`` selections, every cap is set.
    """
    sizes = selection.sizes(units)
    caps = [_whole_units(high, size) for size in sizes]
    floors = [min(_whole_units(low, size), cap) for size, cap in zip(sizes, caps, strict=True)]
    floored = [index for index, floor in enumerate(floors) if floor]
    limited = list(units)
    past_floors = selection.subset(floored).smallest_k_each([units[i] for i in floored], [floors[i] for i in floored])
    for index, keep in zip(floored, past_floors, strict=True):
        limited[index] = units[index].masked_fill(~keep, float("-inf"))
    k = min(max(round(sparsity * sum(sizes)), sum(floors)), sum(caps))
    uncapped = [index for index, (size, cap) in enumerate(zip(sizes, caps, strict=True)) if cap < size]

    def set_caps(indices: list[int]) -> None:
        past_caps = selection.subset(indices).smallest_k_each([units[i] for i in indices], [caps[i] for i in indices])
        for index, past_cap in zip(indices, past_caps, strict=True):
            limited[index] = limited[index].masked_fill(past_cap, float("inf"))

    for _ in range(_CAP_ROUNDS):
        keeps = selection.smallest_k_mask(limited, k)
        kept = selection.subset(uncapped).kept([keeps[i] for i in uncapped]) if uncapped else []
        over = [i for i, count in zip(uncapped, kept, strict=True) if sizes[i] - count > caps[i]]
        if not over:
            return keeps
        set_caps(over)
        uncapped = [index for index in uncapped if index not in over]
    set_caps(uncapped)
    return selection.smallest_k_mask(limited, k)


def _whole_units(ratio: float, count: int) -> int:
    """``floor(ratio * count)``, immune to float error such as ``0.29 * 100 = 28.999...``."""
    return math.floor(ratio * count + 1e-9)


def _per_row_mask(units: Tensor, k: int) -> Tensor:
    keep = torch.ones_like(units, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, units.topk(k, dim=1, largest=False).indices, False)
    return keep


def _in_features(shape: torch.Size) -> int:
    size = 1
    for dim in shape[1:]:
        size *= dim
    return size

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

from lightning_sparsity.functional.selection import smallest_k_each, smallest_k_mask

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

_BLOCK = re.compile(r"(\d+|channel)x(\d+|channel)")
_N_OF_M = re.compile(r"(\d+):(\d+)")


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: ``rows x cols`` blocks, ``n`` zeros in every ``m`` weights when ``m > 0``, or a model
    ``structure`` (``"head"``, ``"neuron"``, ``"channel"``) when set. A block side of 0 spans the whole dimension."""

    rows: int = 1
    cols: int = 1
    n: int = 0
    m: int = 0
    structure: str = ""

    @property
    def is_structured(self) -> bool:
        return bool(self.structure)

    @property
    def is_n_of_m(self) -> bool:
        return self.m > 0

    @property
    def max_sparsity(self) -> float:
        """The largest sparsity the pattern can express (N/M for N:M, otherwise all zeros)."""
        return self.n / self.m if self.is_n_of_m else 1.0

    def block_shape(self, shape: torch.Size) -> tuple[int, int]:
        """The ``rows x cols`` block for a weight of ``shape``, whole-dimension (0) sides resolved."""
        return self.rows or shape[0], self.cols or _in_features(shape)

    def divides(self, shape: torch.Size) -> bool:
        """Whether a weight of ``shape`` splits into whole blocks or groups."""
        out_features, in_features = shape[0], _in_features(shape)
        if self.is_structured:
            return True  # checked against the model's structure when the pruner is bound
        if self.is_n_of_m:
            return in_features % self.m == 0
        rows, cols = self.block_shape(shape)
        return out_features % rows == 0 and in_features % cols == 0


def parse_pattern(pattern: str) -> Pattern:
    """Parses ``"1x1"``, ``"NxM"``, ``"N:M"``, ``"head"``, ``"neuron"`` or ``"channel"``; else a ValueError."""
    if pattern in STRUCTURED_PATTERNS:
        return Pattern(structure=pattern)
    if isinstance(pattern, str):
        if block := _BLOCK.fullmatch(pattern):
            rows, cols = (_block_side(side) for side in block.groups())
            if rows is not None and cols is not None and rows + cols > 0:
                return Pattern(rows=rows, cols=cols)
        elif n_of_m := _N_OF_M.fullmatch(pattern):
            n, m = int(n_of_m[1]), int(n_of_m[2])
            if 1 <= n < m:
                return Pattern(n=n, m=m)
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
    """The ``out_features x in_features`` view of a Linear or Conv weight."""
    return weight.reshape(weight.shape[0], -1)


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
    """Scores of the units the pattern prunes together, as a matrix.

    For N:M, non-candidates (all but the N lowest of each group of M) score ``+inf`` so that no
    selection of at most N/M of the weights ever reaches them.
    """
    matrix = as_matrix(scores)
    if not pattern.is_n_of_m:
        return block_reduce(matrix, *pattern.block_shape(scores.shape))
    groups = matrix.reshape(matrix.shape[0], -1, pattern.m)
    lowest = groups.topk(pattern.n, dim=-1, largest=False).indices
    candidates = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
    return groups.masked_fill(~candidates, float("inf")).reshape_as(matrix)


def pattern_masks(
    scores: Sequence[Tensor],
    sparsity: float,
    pattern: Pattern,
    method: Method = "per_tensor",
    scope: Scope = "local",
    layer_bounds: tuple[float, float] = (0.0, 1.0),
) -> list[Tensor]:
    """Boolean keep-masks (False = pruned), shaped like ``scores``, that prune a ``sparsity`` fraction.

    - ``per_tensor`` + ``local``: each tensor loses ``round(sparsity * units)`` of its units;
    - ``per_channel``: each output row (row of blocks) loses that fraction of its own units;
    - ``global``: one threshold across all tensors, ``round(sparsity * all units)`` in total.

    ``layer_bounds = (low, high)`` keeps each tensor's sparsity within ``[min(low, sparsity), high]``
    (INC's ``min/max_sparsity_ratio_per_op``): local scope caps the ratio at ``high``; global scope picks
    the lowest scores under those per-tensor limits. Scores of ``-inf`` mark weights that must stay
    pruned; lower scores are pruned first.
    """
    if not 0.0 <= sparsity <= pattern.max_sparsity:
        raise ValueError(f"sparsity must be in [0, {pattern.max_sparsity}] for this pattern, got {sparsity}")
    units = [group_scores(s, pattern) for s in scores]
    low, high = layer_bounds
    if scope == "global" and (low > 0.0 or high < 1.0):
        keeps = _bounded_global_mask(units, sparsity, min(low, sparsity), high)
    elif scope == "global":
        keeps = smallest_k_mask(units, round(sparsity * sum(u.numel() for u in units)))
    elif method == "per_channel":
        keeps = [_per_row_mask(u, round(min(sparsity, high) * u.shape[1])) for u in units]
    else:
        keeps = smallest_k_each(units, [round(min(sparsity, high) * u.numel()) for u in units])
    return [_unit_to_weight_mask(keep, s.shape, pattern) for keep, s in zip(keeps, scores, strict=True)]


_CAP_ROUNDS = 3  # selections that cap only the tensors pruned past their caps, before all caps are set


def _bounded_global_mask(units: Sequence[Tensor], sparsity: float, low: float, high: float) -> list[Tensor]:
    """The globally lowest units, each tensor losing between ``floor(low * n)`` and ``floor(high * n)``.

    The best feasible set is what one selection prunes once each tensor's mandatory units score ``-inf`` and those
    past its cap ``+inf``; the total is ``round(sparsity * units)`` whenever the limits allow it. A cap is set only
    on a tensor that a selection prunes past it, and the selection is redone: a selection that respects every cap
    is the one that all caps set would give, and where caps bind little (the usual case) it costs one global
    selection instead of one more per tensor. After ``_CAP_ROUNDS`` selections, every cap is set.
    """
    caps = [_whole_units(high, unit.numel()) for unit in units]
    floors = [min(_whole_units(low, unit.numel()), cap) for unit, cap in zip(units, caps, strict=True)]
    limited = [
        unit if floor == 0 else unit.masked_fill(~smallest_k_mask([unit], floor)[0], float("-inf"))
        for unit, floor in zip(units, floors, strict=True)
    ]
    k = min(max(round(sparsity * sum(u.numel() for u in units)), sum(floors)), sum(caps))
    uncapped = [index for index, (unit, cap) in enumerate(zip(units, caps, strict=True)) if cap < unit.numel()]

    def set_caps(indices: list[int]) -> None:
        for index in indices:
            past_cap = smallest_k_mask([units[index]], caps[index])[0]
            limited[index] = limited[index].masked_fill(past_cap, float("inf"))

    for _ in range(_CAP_ROUNDS):
        keeps = smallest_k_mask(limited, k)
        kept = torch.stack([torch.count_nonzero(keeps[i]) for i in uncapped]).tolist() if uncapped else []
        over = [i for i, count in zip(uncapped, kept, strict=True) if keeps[i].numel() - count > caps[i]]
        if not over:
            return keeps
        set_caps(over)
        uncapped = [index for index in uncapped if index not in over]
    set_caps(uncapped)
    return smallest_k_mask(limited, k)


def _whole_units(ratio: float, count: int) -> int:
    """``floor(ratio * count)``, immune to float error such as ``0.29 * 100 = 28.999...``."""
    return math.floor(ratio * count + 1e-9)


def _per_row_mask(units: Tensor, k: int) -> Tensor:
    keep = torch.ones_like(units, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, units.topk(k, dim=1, largest=False).indices, False)
    return keep


def _unit_to_weight_mask(keep: Tensor, shape: torch.Size, pattern: Pattern) -> Tensor:
    if not pattern.is_n_of_m:
        keep = expand_blocks(keep, *pattern.block_shape(shape))
    return keep.reshape(shape)


def _in_features(shape: torch.Size) -> int:
    size = 1
    for dim in shape[1:]:
        size *= dim
    return size

"""Weights split across processes (FSDP2 / tensor-parallel DTensor parameters), seen as ranges of rows.

A sparsifier keeps each sharded weight's masks and scores for its local rows only, selects across processes with
:class:`~lightning_sparsity.functional.sharded_selection.ShardedSelection`, and gathers whole tensors only to write a
checkpoint (Lightning saves the callback's state from rank zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from lightning_sparsity.functional.sharded_selection import all_gathered_rows


@dataclass(frozen=True)
class RowShard:
    """This process's part of a weight: rows ``[offset, offset + rows)`` of its first dimension. ``primary``: the
    one process counted for this part where several hold it (HSDP replicas)."""

    shape: torch.Size  # the whole weight's
    offset: int
    rows: int
    primary: bool
    weight: DTensor  # where the mesh and placements to rebuild a whole tensor from are read


def row_shard(name: str, weight: Tensor) -> Optional[RowShard]:
    """Where ``weight``'s local rows lie, or None for a weight this process holds whole (not a DTensor).

    A weight split otherwise than by rows (a row-wise tensor-parallel ``Shard(1)``, or a ``Partial`` sum) is a
    ValueError naming it: its units would straddle processes."""
    if not isinstance(weight, DTensor):
        return None
    for placement in weight.placements:
        if not (isinstance(placement, Replicate) or (isinstance(placement, Shard) and placement.dim == 0)):
            raise ValueError(
                f"weight {name!r} is split across processes as {weight.placements}: PruningCallback prunes weights "
                "split by rows (FSDP2's fully_shard, colwise tensor parallel: Shard(0)) or replicated; exclude it "
                "with Pruner.excluded_names, or shard it by rows"
            )
    local_shape, offset = compute_local_shape_and_global_offset(weight.shape, weight.device_mesh, weight.placements)
    coordinate = list(weight.device_mesh.get_coordinate() or ())
    primary = all(c == 0 for c, p in zip(coordinate, weight.placements, strict=True) if isinstance(p, Replicate))
    return RowShard(weight.shape, int(offset[0]), int(local_shape[0]), primary, weight)


def local_view(weight: Tensor) -> Tensor:
    """The part of ``weight`` this process holds, as a plain tensor sharing its storage (``weight`` itself when held
    whole): masks applied to it in place change the parameter."""
    if isinstance(weight, DTensor):
        with torch.no_grad():
            return weight.to_local()
    return weight


def gathered(local: Tensor, shard: RowShard) -> Tensor:
    """The whole tensor of which every process holds ``local`` (its rows of a weight-shaped tensor): collective."""
    weight = shard.weight
    as_bytes = local.dtype == torch.bool  # gathered as uint8, which every backend reduces and gathers
    part = DTensor.from_local(
        local.to(torch.uint8) if as_bytes else local,
        weight.device_mesh,
        weight.placements,
        shape=shard.shape,
        stride=_contiguous_stride(shard.shape),
        run_check=False,
    )
    whole = part.full_tensor()
    return whole.bool() if as_bytes else whole


def local_rows(whole: Tensor, shard: RowShard) -> Tensor:
    """This process's rows of a whole weight-shaped tensor (for loading a checkpoint)."""
    return whole[shard.offset : shard.offset + shard.rows].contiguous()


def check_tiling(shards: dict[str, RowShard]) -> None:
    """Refuses weights whose primary row ranges across processes do not tile their rows once each (collective)."""
    device = next(iter(shards.values())).weight.device  # where the weights' backend reduces
    ranges = all_gathered_rows([[s.offset, s.rows, int(s.primary)] for s in shards.values()], device)
    for index, (name, shard) in enumerate(shards.items()):
        held = sorted((r[index][0], r[index][1]) for r in ranges if r[index][2] and r[index][1])
        ends = [0] + [offset + rows for offset, rows in held]
        if [offset for offset, _ in held] != ends[:-1] or ends[-1] != shard.shape[0]:
            raise ValueError(
                f"weight {name!r}'s rows are split across processes as {held} (offset, rows) of {shard.shape[0]}: "
                "PruningCallback needs each row held once, in one range per process"
            )


def _contiguous_stride(shape: torch.Size) -> tuple[int, ...]:
    stride, size = [], 1
    for dim in reversed(shape):
        stride.append(size)
        size *= dim
    return tuple(reversed(stride))

"""Boolean masks packed 8 to a byte: how masks are stored in checkpoints and compressed files."""

from __future__ import annotations

import torch
from torch import Tensor

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def pack_bits(mask: Tensor) -> Tensor:
    """A boolean tensor as uint8 bytes, 8 elements a byte, first element in the highest bit."""
    flat = mask.reshape(-1).to(torch.uint8)
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % 8))
    return (padded.reshape(-1, 8) * _bit_weights(mask.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: list[int] | torch.Size) -> Tensor:
    """Inverse of :func:`pack_bits` for a tensor of ``shape``."""
    bits = packed[:, None].bitwise_and(_bit_weights(packed.device)).ne(0).reshape(-1)
    return bits[: torch.Size(shape).numel()].reshape(shape)


def _bit_weights(device: torch.device) -> Tensor:
    return torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=device)

"""Compressed checkpoints: each sparse tensor as a bitmask plus its non-zero values, in one safetensors file.

A floating-point tensor is stored compressed when that takes fewer bytes than its dense form (sparsity
above about ``1 / (8 * itemsize)``); every other tensor is stored as it is. A weight is "zero" when all
its bits are zero, so ``-0.0`` is kept as a value and loading is bit-exact. A transformers model's config
and class are written into the file's metadata, so :func:`load_sparse_model` rebuilds the model alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import AutoConfig, PreTrainedModel

from lightning_sparsity.export.slim import build_model
from lightning_sparsity.functional.bits import pack_bits, unpack_bits

FORMAT = "lightning-sparsity/sparse-v1"
MASK_PREFIX = "sparse_mask/"
VALUES_PREFIX = "sparse_values/"
_BIT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def save_sparse(model_or_state_dict: Union[nn.Module, Mapping[str, Tensor]], path: Union[str, Path]) -> None:
    """Writes a compressed checkpoint of a model (its ``state_dict``) or of a state dict to ``path``."""
    if isinstance(model_or_state_dict, nn.Module):
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = model_or_state_dict
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"state_dict[{name!r}] is a {type(tensor).__name__}; save_sparse stores tensors only")
        if name.startswith((MASK_PREFIX, VALUES_PREFIX)):
            raise ValueError(f"tensor name {name!r} uses a prefix save_sparse reserves")
        tensor = tensor.detach().cpu().contiguous()
        nonzero = _nonzero(tensor)
        if nonzero is not None and _compressed_bytes(tensor, nonzero) < tensor.nbytes:
            tensors[MASK_PREFIX + name] = pack_bits(nonzero)
            tensors[VALUES_PREFIX + name] = tensor.reshape(-1)[nonzero.reshape(-1)]
            shapes[name] = list(tensor.shape)
        else:
            tensors[name] = tensor.clone() if tensor.untyped_storage().data_ptr() in seen else tensor
            seen.add(tensor.untyped_storage().data_ptr())
    metadata = {"format": FORMAT, "sparse_shapes": json.dumps(shapes)}
    if isinstance(model_or_state_dict, PreTrainedModel):
        metadata["architecture"] = type(model_or_state_dict).__name__
        metadata["config"] = model_or_state_dict.config.to_json_string()
    save_file(tensors, str(path), metadata=metadata)


def load_sparse(path: Union[str, Path]) -> dict[str, Tensor]:
    """The state dict saved by :func:`save_sparse`, bit-exact, dense, on CPU."""
    with safe_open(str(path), framework="pt") as file:
        metadata = _check_format(file.metadata(), path)
        shapes = json.loads(metadata["sparse_shapes"])
        state_dict = {}
        for key in file.keys():
            if key.startswith(VALUES_PREFIX):
                name = key[len(VALUES_PREFIX) :]
                nonzero = unpack_bits(file.get_tensor(MASK_PREFIX + name), shapes[name])
                state_dict[name] = scatter_nonzero(file.get_tensor(key), nonzero)
            elif not key.startswith(MASK_PREFIX):
                state_dict[key] = file.get_tensor(key)
    return state_dict


def load_sparse_model(path: Union[str, Path]) -> PreTrainedModel:
    """Rebuilds the transformers model (slimmed or not) saved by :func:`save_sparse`, in eval mode."""
    with safe_open(str(path), framework="pt") as file:
        metadata = _check_format(file.metadata(), path)
    if "config" not in metadata:
        raise ValueError(f"{path} holds a plain state dict; load it with load_sparse and load_state_dict")
    config_dict = json.loads(metadata["config"])
    config = AutoConfig.for_model(**config_dict)
    return build_model(config, metadata["architecture"], load_sparse(path))


def scatter_nonzero(values: Tensor, nonzero: Tensor) -> Tensor:
    """A dense tensor shaped like ``nonzero`` holding ``values`` where it is True and all-zero bits elsewhere."""
    dense = torch.zeros(nonzero.shape, dtype=values.dtype)
    dense.view(-1)[nonzero.reshape(-1)] = values
    return dense


def _nonzero(tensor: Tensor) -> Union[Tensor, None]:
    """Where the bits of a floating-point tensor are not all zero; None for tensors stored densely."""
    if not tensor.is_floating_point() or tensor.element_size() not in _BIT_VIEWS or tensor.numel() == 0:
        return None
    return tensor.view(_BIT_VIEWS[tensor.element_size()]) != 0


def _compressed_bytes(tensor: Tensor, nonzero: Tensor) -> int:
    return (tensor.numel() + 7) // 8 + int(nonzero.sum()) * tensor.element_size()


def _check_format(metadata: Union[dict[str, str], None], path: Union[str, Path]) -> dict[str, str]:
    if not metadata or metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a save_sparse checkpoint (format {FORMAT!r})")
    return metadata

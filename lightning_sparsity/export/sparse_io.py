"""Compressed checkpoints: each sparse tensor as a bitmask plus its non-zero values, in one safetensors file.

A floating-point tensor is stored compressed when that takes fewer bytes than its dense form (sparsity
above about ``1 / (8 * itemsize)``); every other tensor is stored as it is. A weight is "zero" when all its
bits but the sign bit are zero, so ``+0.0`` and ``-0.0`` both cost one mask bit, not a stored value: the
pruned weights that ``torch.nn.utils.prune`` and Lightning's ``ModelPruning`` leave hold ``-0.0`` wherever the
weight was negative. The sign bits of the zeros go in a second bitmask (one bit per zero, written only when
some zero is negative), so loading is bit-exact. The metadata records a SHA-256 checksum of every tensor (its
dtype, shape and bytes): :func:`load_sparse` checks the key set, counts, shapes and checksums and names the
tensor and the field at fault. A transformers model's config and class are written into the metadata too,
so :func:`load_sparse_model` rebuilds the model alone. Files of format v1 (no sign bits, no checksums) load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import AutoConfig, PreTrainedModel

from lightning_sparsity.export.slim import build_model
from lightning_sparsity.functional.bits import pack_bits, unpack_bits

FORMAT = "lightning-sparsity/sparse-v2"
FORMAT_V1 = "lightning-sparsity/sparse-v1"  # no sign bits of zeros, no checksums: still loaded
MASK_PREFIX = "sparse_mask/"
VALUES_PREFIX = "sparse_values/"
SIGNS_PREFIX = "sparse_zero_signs/"
_PREFIXES = (MASK_PREFIX, VALUES_PREFIX, SIGNS_PREFIX)
_BIT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_SIGNED_VIEWS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def save_sparse(model_or_state_dict: Union[nn.Module, Mapping[str, Tensor]], path: Union[str, Path]) -> None:
    """Writes a compressed checkpoint of a model (its ``state_dict``) or of a state dict to ``path``."""
    state_dict: Mapping[str, Tensor] = (
        model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    )
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    checksums: dict[str, str] = {}
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        if not isinstance(tensor, Tensor):
            raise ValueError(f"state_dict[{name!r}] is a {type(tensor).__name__}; save_sparse stores tensors only")
        if name.startswith(_PREFIXES):
            raise ValueError(f"tensor name {name!r} uses a prefix save_sparse reserves")
        tensor = tensor.detach().cpu().contiguous()
        checksums[name] = checksum(tensor)
        split = _split(tensor)
        if split is not None:
            for prefix, part in split.items():
                tensors[prefix + name] = part
            shapes[name] = list(tensor.shape)
        else:
            tensors[name] = tensor.clone() if tensor.untyped_storage().data_ptr() in seen else tensor
            seen.add(tensor.untyped_storage().data_ptr())
    metadata = {"format": FORMAT, "sparse_shapes": json.dumps(shapes), "checksums": json.dumps(checksums)}
    if isinstance(model_or_state_dict, PreTrainedModel):
        metadata["architecture"] = type(model_or_state_dict).__name__
        metadata["config"] = model_or_state_dict.config.to_json_string()
    save_file(tensors, str(path), metadata=metadata)


def load_sparse(path: Union[str, Path]) -> dict[str, Tensor]:
    """The state dict saved by :func:`save_sparse`, bit-exact, dense, on CPU.

    Raises ``ValueError`` naming the tensor and the field when the file is not whole: a missing or extra
    key, a mask whose length or count of set bits does not match its shape or its values, or a tensor whose
    checksum differs from the one recorded when it was saved (edited values, swapped mask bytes, a changed
    shape).
    """
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = _check_format(file.metadata(), path)
            parts = {key: file.get_tensor(key) for key in file.keys()}
    except SafetensorError as error:
        raise _unreadable(path, error) from error
    shapes = _metadata_json(metadata, "sparse_shapes", path)
    checksums = _metadata_json(metadata, "checksums", path) if metadata["format"] == FORMAT else None
    state_dict = {}
    for name in _names(parts, shapes, checksums, path):
        if name in shapes:
            state_dict[name] = _join(parts, name, shapes[name], f"{path}: tensor {name!r}")
        else:
            state_dict[name] = parts[name]
        if checksums is not None and checksum(state_dict[name]) != checksums[name]:
            raise ValueError(
                f"{path}: tensor {name!r}: checksum {checksum(state_dict[name])} differs from the one saved "
                f"({checksums[name]}): its values, mask or shape were changed after save_sparse wrote it"
            )
    return state_dict


def load_sparse_model(path: Union[str, Path]) -> PreTrainedModel:
    """Rebuilds the transformers model (slimmed or not) saved by :func:`save_sparse`, in eval mode."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = _check_format(file.metadata(), path)
    except SafetensorError as error:
        raise _unreadable(path, error) from error
    if "config" not in metadata:
        raise ValueError(f"{path} holds a plain state dict; load it with load_sparse and load_state_dict")
    config_dict = json.loads(metadata["config"])
    config = AutoConfig.for_model(**config_dict)
    return build_model(config, metadata["architecture"], load_sparse(path))


def checksum(tensor: Tensor) -> str:
    """``sha256:<hex>`` of a tensor's dtype, shape and bytes: equal only for bit-identical tensors."""
    digest = hashlib.sha256(f"{tensor.dtype}{list(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return "sha256:" + digest.hexdigest()


def _split(tensor: Tensor) -> Union[dict[str, Tensor], None]:
    """The mask, values and (when some zero is negative) zero-sign parts of a floating-point tensor; None for
    tensors stored densely (not floating point, or no smaller in parts)."""
    if not tensor.is_floating_point() or tensor.element_size() not in _BIT_VIEWS or tensor.numel() == 0:
        return None
    bits = tensor.reshape(-1).view(_SIGNED_VIEWS[tensor.element_size()])
    sign_bit = torch.iinfo(bits.dtype).min  # the bits of -0.0: the sign bit alone
    nonzero = bits.bitwise_and(~sign_bit) != 0
    negative_zero = bits == sign_bit
    kept = int(nonzero.count_nonzero())
    zeros, signed = tensor.numel() - kept, bool(negative_zero.any())
    stored = (tensor.numel() + 7) // 8 + kept * tensor.element_size() + (zeros + 7) // 8 * signed
    if stored >= tensor.nbytes:
        return None
    parts = {MASK_PREFIX: pack_bits(nonzero), VALUES_PREFIX: tensor.reshape(-1).masked_select(nonzero)}
    if signed:
        parts[SIGNS_PREFIX] = pack_bits(negative_zero.masked_select(~nonzero))
    return parts


def _join(parts: dict[str, Tensor], name: str, shape: Any, where: str) -> Tensor:
    """The dense tensor of ``name`` from its stored parts, after checking that they fit each other."""
    if not isinstance(shape, list) or not all(isinstance(size, int) and size >= 0 for size in shape):
        raise ValueError(f"{where}: sparse_shapes entry must be a list of sizes >= 0, got {shape!r}")
    values = parts[VALUES_PREFIX + name]
    if values.dim() != 1 or not values.is_floating_point() or values.element_size() not in _BIT_VIEWS:
        raise ValueError(
            f"{where}: {VALUES_PREFIX}{name} must be a 1-d floating-point tensor, got {values.dtype} of shape "
            f"{list(values.shape)}"
        )
    numel = torch.Size(shape).numel()
    nonzero = _bits(parts[MASK_PREFIX + name], numel, f"{where}: {MASK_PREFIX}{name}", f"shape {shape}")
    kept = int(nonzero.count_nonzero())
    if kept != values.numel():
        raise ValueError(
            f"{where}: {MASK_PREFIX}{name} marks {kept} non-zero weights but {VALUES_PREFIX}{name} holds "
            f"{values.numel()} values"
        )
    bits = torch.zeros(numel, dtype=_SIGNED_VIEWS[values.element_size()])
    bits.masked_scatter_(nonzero, values.view(bits.dtype))
    if SIGNS_PREFIX + name in parts:
        signs = _bits(parts[SIGNS_PREFIX + name], numel - kept, f"{where}: {SIGNS_PREFIX}{name}", "its zeros")
        bits.masked_scatter_(~nonzero, signs.to(bits.dtype) * torch.iinfo(bits.dtype).min)
    return bits.view(values.dtype).reshape(shape)


def _bits(packed: Tensor, count: int, field: str, what: str) -> Tensor:
    """The ``count`` booleans packed in ``packed``, which must hold exactly them and zero padding bits."""
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (count + 7) // 8:
        raise ValueError(
            f"{field} must be {(count + 7) // 8} uint8 bytes ({count} bits for {what}), got {packed.dtype} of "
            f"shape {list(packed.shape)}"
        )
    bits = unpack_bits(packed, [packed.numel() * 8])
    if bool(bits[count:].any()):
        raise ValueError(f"{field} has bits set past its {count} bits for {what}")
    return bits[:count]


def _names(
    parts: dict[str, Tensor], shapes: dict[str, Any], checksums: Union[dict[str, str], None], path: Union[str, Path]
) -> list[str]:
    """The state dict's names (in the order saved, or of the file's keys for v1), once the file's keys are
    checked to form whole tensors."""
    by_prefix: dict[str, set[str]] = {prefix: set() for prefix in _PREFIXES}
    names: dict[str, None] = {}
    for key in parts:
        prefix = next((p for p in _PREFIXES if key.startswith(p)), "")
        by_prefix.setdefault(prefix, set()).add(key[len(prefix) :])
        names[key[len(prefix) :]] = None
    sparse = set(shapes)
    for prefix in (MASK_PREFIX, VALUES_PREFIX):
        missing = sorted(sparse - by_prefix[prefix])
        if missing:
            raise ValueError(f"{path}: tensor {missing[0]!r}: {prefix}{missing[0]} is missing (sparse_shapes lists it)")
    for prefix in _PREFIXES:
        unlisted = sorted(by_prefix[prefix] - sparse)
        if unlisted:
            raise ValueError(f"{path}: tensor {unlisted[0]!r}: {prefix}{unlisted[0]} has no sparse_shapes entry")
    both = sorted(sparse & by_prefix.get("", set()))
    if both:
        raise ValueError(f"{path}: tensor {both[0]!r} is stored both dense and as {MASK_PREFIX}{both[0]}")
    if checksums is None:
        return list(names)
    missing = [name for name in checksums if name not in names]
    if missing:
        raise ValueError(
            f"{path}: tensor {missing[0]!r} is missing: the checksums list it, the file holds no part of it"
        )
    unlisted = [name for name in names if name not in checksums]
    if unlisted:
        raise ValueError(
            f"{path}: tensor {unlisted[0]!r} has no checksum: it was added after save_sparse wrote the file"
        )
    return list(checksums)


def _metadata_json(metadata: dict[str, str], field: str, path: Union[str, Path]) -> dict[str, Any]:
    try:
        value = json.loads(metadata[field])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: metadata field {field!r} is missing or not JSON ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path}: metadata field {field!r} must be a JSON object, got {type(value).__name__}")
    return value


def _unreadable(path: Union[str, Path], error: SafetensorError) -> ValueError:
    return ValueError(f"{path} is not a readable safetensors file: {error}")


def _check_format(metadata: Union[dict[str, str], None], path: Union[str, Path]) -> dict[str, str]:
    if not metadata or metadata.get("format") not in (FORMAT, FORMAT_V1):
        raise ValueError(f"{path} is not a save_sparse checkpoint (format {FORMAT!r} or {FORMAT_V1!r})")
    return metadata

"""Damaged or edited files. Compressed checkpoints changed after ``save_sparse`` wrote them: ``load_sparse`` refuses
each with a ``ValueError`` naming the tensor and the field, instead of loading a wrong tensor or dropping one.
Lightning checkpoints that ``torch.load`` cannot read: ``check_checkpoint`` (run by the CLI) names the file."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune

from lightning_sparsity.cli import check_checkpoint
from lightning_sparsity.export import load_sparse, load_sparse_model, save_sparse
from lightning_sparsity.export.sparse_io import FORMAT_V1, MASK_PREFIX, SIGNS_PREFIX, VALUES_PREFIX
from lightning_sparsity.functional.bits import pack_bits

Tensors = dict[str, torch.Tensor]
Metadata = dict[str, str]


def torch_pruned_weight() -> torch.Tensor:
    """A 24x16 weight pruned to 75% by ``torch.nn.utils.prune``: its negative pruned weights are ``-0.0``."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 24)
    prune.l1_unstructured(layer, "weight", amount=0.75)
    prune.remove(layer, "weight")
    return layer.weight.detach().clone()


def state() -> Tensors:
    return {"w": torch_pruned_weight(), "bias": torch.randn(24, generator=torch.Generator().manual_seed(1))}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.int32)


def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_sparse(state(), path)
    return path


def rewrite(path: Path, edit: Callable[[Tensors, Metadata], None]) -> None:
    """Rewrites the file at ``path`` after ``edit`` changed its tensors and metadata in place."""
    with safe_open(str(path), framework="pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
        metadata = dict(file.metadata())
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def swap_mask_bytes(tensors: Tensors, metadata: Metadata) -> None:
    mask = tensors[MASK_PREFIX + "w"]
    first = int((mask != mask[0]).nonzero()[0])  # a byte that differs from the first: the swap changes the mask
    mask[[0, first]] = mask[[first, 0]]


def transpose_shape(tensors: Tensors, metadata: Metadata) -> None:
    metadata["sparse_shapes"] = json.dumps({"w": [16, 24]})


def edit_value(tensors: Tensors, metadata: Metadata) -> None:
    tensors[VALUES_PREFIX + "w"][3] += 1.0


def edit_dense(tensors: Tensors, metadata: Metadata) -> None:
    tensors["bias"][0] = 0.5


def add_a_bit(tensors: Tensors, metadata: Metadata) -> None:
    mask = tensors[MASK_PREFIX + "w"]
    index = int((mask != 255).nonzero()[0])
    mask[index] |= ~mask[index] & (mask[index] + 1)  # sets the lowest clear bit of that byte


def lengthen(key: str) -> Callable[[Tensors, Metadata], None]:
    def edit(tensors: Tensors, metadata: Metadata) -> None:
        tensors[key] = torch.cat([tensors[key], torch.zeros(1, dtype=tensors[key].dtype)])

    return edit


def drop(key: str) -> Callable[[Tensors, Metadata], None]:
    def edit(tensors: Tensors, metadata: Metadata) -> None:
        del tensors[key]

    return edit


def add_tensor(tensors: Tensors, metadata: Metadata) -> None:
    tensors["extra"] = torch.ones(3)


def pad_signs(tensors: Tensors, metadata: Metadata) -> None:
    """Appends a byte to the bitmask of the zeros' signs (its 288 zeros fill 36 bytes)."""
    tensors[SIGNS_PREFIX + "w"] = torch.cat([tensors[SIGNS_PREFIX + "w"], torch.tensor([255], dtype=torch.uint8)])


def mask_as_float(tensors: Tensors, metadata: Metadata) -> None:
    tensors[MASK_PREFIX + "w"] = tensors[MASK_PREFIX + "w"].float()


def set_padding(tensors: Tensors, metadata: Metadata) -> None:
    """A 5x3 weight takes 2 mask bytes, the last 1 bit of the second is padding: set it."""
    tensors[MASK_PREFIX + "odd"][-1] |= 1


#: (id, edit, regular expression the error must contain)
TAMPERED: list[tuple[str, Callable[[Tensors, Metadata], None], str]] = [
    ("values entry missing", drop(VALUES_PREFIX + "w"), r"tensor 'w': sparse_values/w is missing"),
    ("mask entry missing", drop(MASK_PREFIX + "w"), r"tensor 'w': sparse_mask/w is missing"),
    ("dense tensor missing", drop("bias"), r"tensor 'bias' is missing"),
    ("tensor added", add_tensor, r"tensor 'extra' has no checksum"),
    ("over-long mask", lengthen(MASK_PREFIX + "w"), r"tensor 'w': sparse_mask/w must be 48 uint8 bytes \(384 bits"),
    ("float mask", mask_as_float, r"tensor 'w': sparse_mask/w must be 48 uint8 bytes.*torch.float32"),
    (
        "extra value",
        lengthen(VALUES_PREFIX + "w"),
        r"marks 96 non-zero weights but sparse_values/w holds 97",
    ),
    ("extra mask bit", add_a_bit, r"sparse_mask/w marks 97 non-zero weights but sparse_values/w holds 96"),
    ("over-long zero signs", pad_signs, r"tensor 'w': sparse_zero_signs/w must be 36 uint8 bytes \(288 bits"),
    ("swapped mask bytes", swap_mask_bytes, r"tensor 'w': checksum sha256:\w+ differs from the one saved"),
    ("transposed shape", transpose_shape, r"tensor 'w': checksum .* differs"),
    ("edited value", edit_value, r"tensor 'w': checksum .* differs"),
    ("edited dense tensor", edit_dense, r"tensor 'bias': checksum .* differs"),
]


@pytest.mark.parametrize(("edit", "message"), [case[1:] for case in TAMPERED], ids=[case[0] for case in TAMPERED])
def test_tampered_files_are_refused_naming_the_tensor_and_field(
    edit: Callable[[Tensors, Metadata], None], message: str, tmp_path: Path
) -> None:
    path = saved(tmp_path)
    assert set(load_sparse(path)) == {"w", "bias"}
    rewrite(path, edit)
    with pytest.raises(ValueError, match=message):
        load_sparse(path)


def test_set_padding_bits_of_a_mask_are_refused(tmp_path: Path) -> None:
    odd = torch.zeros(5, 3)
    odd[0, 0] = 1.0
    path = tmp_path / "odd.safetensors"
    save_sparse({"odd": odd}, path)
    rewrite(path, set_padding)
    with pytest.raises(ValueError, match=r"tensor 'odd': sparse_mask/odd has bits set past its 15 bits"):
        load_sparse(path)


def test_a_file_that_is_not_safetensors_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(
        torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes()
    )
    for load in (load_sparse, load_sparse_model):
        with pytest.raises(ValueError, match=r"noise.safetensors is not a readable safetensors file"):
            load(path)


def test_negative_zeros_cost_one_bit_each_and_load_bit_exact(tmp_path: Path) -> None:
    weight = torch_pruned_weight()
    zeros = weight == 0
    assert int(zeros.sum()) == 288 and 0 < int(torch.signbit(weight[zeros]).sum()) < 288
    path = saved(tmp_path)
    with safe_open(str(path), framework="pt") as file:
        stored = {key: file.get_tensor(key).nbytes for key in file.keys() if key.endswith("/w")}
    assert stored == {MASK_PREFIX + "w": 384 // 8, VALUES_PREFIX + "w": 96 * 4, SIGNS_PREFIX + "w": 288 // 8}
    loaded = load_sparse(path)
    assert torch.equal(bits(loaded["w"]), bits(weight)) and torch.equal(loaded["bias"], state()["bias"])


def test_files_of_format_v1_without_checksums_still_load(tmp_path: Path) -> None:
    """v1 stored ``-0.0`` as a value and had no sign bitmask and no checksums."""
    weight = torch_pruned_weight()
    nonzero = weight.view(torch.int32) != 0
    tensors = {MASK_PREFIX + "w": pack_bits(nonzero), VALUES_PREFIX + "w": weight[nonzero], "bias": state()["bias"]}
    metadata = {"format": FORMAT_V1, "sparse_shapes": json.dumps({"w": [24, 16]})}
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=metadata)
    loaded = load_sparse(tmp_path / "v1.safetensors")
    assert list(loaded) == ["bias", "w"]
    assert torch.equal(bits(loaded["w"]), bits(weight)) and torch.equal(loaded["bias"], state()["bias"])


def checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(64)}, "epoch": 1}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"is empty \(0 bytes\): it was not written, or not completely"),
        (
            checkpoint_bytes()[:-100],
            r"\(\d+ bytes\) is cut short: it begins as torch.save's zip archive but has no end",
        ),
        (bytes(range(7, 256)) * 4, r"\(996 bytes\) is not a torch.save checkpoint: it begins with b'\\x07\\x08"),
        (b"epoch: 3\n", r"\(9 bytes\) is not a torch.save checkpoint: it begins with b'epoc'"),
    ],
    ids=["empty", "cut short", "random bytes", "text"],
)
def test_unreadable_checkpoints_are_refused_naming_the_file(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "run.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"checkpoint {re.escape(str(path))} {message}"):
        check_checkpoint(path)


def test_readable_checkpoints_and_other_paths_are_left_to_lightning(tmp_path: Path) -> None:
    (tmp_path / "run.ckpt").write_bytes(checkpoint_bytes())
    torch.save({"epoch": 1}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for path in (tmp_path / "run.ckpt", str(tmp_path / "legacy.ckpt"), tmp_path, tmp_path / "missing.ckpt", "last"):
        check_checkpoint(path)
    assert torch.load(tmp_path / "run.ckpt", weights_only=True)["epoch"] == 1

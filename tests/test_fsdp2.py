"""FSDP2 (``ModelParallelStrategy``, ``fully_shard``) over two CPU processes (gloo): masks and scores held as row
shards of their weights, selected across ranks exactly as one process selects in the whole weights."""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.functional.bits import pack_bits
from lightning_sparsity.functional.patterns import parse_pattern, pattern_masks
from lightning_sparsity.functional.sharded_selection import ShardedSelection
from lightning_sparsity.sparsifier import Sparsifier

WORLD = 2


def _spawn(function: Callable[..., None], *args: Any, world: int = WORLD) -> None:
    """Runs ``function(rank, *args)`` in ``world`` processes that Lightning sees as launched by torchrun."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_process, args=(port, world, function, args), nprocs=world, join=True)


def _process(rank: int, port: int, world: int, function: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    torch.set_num_threads(1)
    try:
        function(rank, *args)
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise  # spawn reports it
    if dist.is_initialized():
        dist.barrier()  # no collective left in flight
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # Interpreter finalization can abort a process whose gloo worker threads still hold tensors (SIGABRT,
    # "terminate called without an active exception", pytorch/pytorch#190489): seen twice in CI here, after the
    # test's work was done. The work is done and written, so the process leaves without finalization.
    os._exit(0)


def _rows_of(rank: int, rows: int) -> slice:
    """The rows of ``rank`` when a tensor is split as torch.chunk splits it (FSDP2's and DTensor's split)."""
    size = -(-rows // WORLD)
    return slice(min(rank * size, rows), min((rank + 1) * size, rows))


SELECTIONS = [
    # (weight shapes, pattern, method, scope, layer bounds, sparsity); 1-row weights leave rank 1 an empty shard
    ([(5, 8), (7, 12), (1, 8)], "1x1", "per_tensor", "global", (0.0, 1.0), 0.6),
    ([(5, 8), (7, 12), (1, 8)], "1x1", "per_tensor", "local", (0.0, 1.0), 0.55),
    ([(5, 8), (7, 12)], "1x1", "per_channel", "local", (0.0, 1.0), 0.5),
    ([(5, 8), (7, 12), (3, 4)], "1x1", "per_tensor", "global", (0.2, 0.7), 0.5),
    ([(6, 8), (4, 12)], "2:4", "per_tensor", "global", (0.0, 1.0), 0.5),
    ([(6, 8), (4, 12)], "2:4", "per_tensor", "local", (0.0, 1.0), 0.3),
    ([(6, 8), (3, 12)], "1x4", "per_tensor", "global", (0.0, 1.0), 0.5),
    ([(8, 8), (4, 12)], "2x4", "per_tensor", "local", (0.0, 1.0), 0.5),
    ([(5, 8), (7, 12)], "1xchannel", "per_tensor", "global", (0.0, 1.0), 0.4),
    # more than 65,536 values: the CPU's bracket select across ranks (few distinct values, then continuous ones)
    ([(301, 256), (101, 128)], "1x1", "per_tensor", "global", (0.0, 1.0), 0.7),
    ([(301, 256), (101, 128)], "1x1", "per_tensor", "global", (0.0, 1.0), 0.65),
    ([(301, 256), (400, 200), (7, 12)], "1x1", "per_tensor", "local", (0.0, 1.0), 0.6),
    ([(301, 256), (400, 200), (7, 12)], "1x1", "per_tensor", "local", (0.0, 1.0), 0.45),
    ([(301, 256), (400, 200), (7, 12)], "1x1", "per_tensor", "global", (0.3, 0.5), 0.45),
]
CONTINUOUS = {10, 11, 13}  # cases scored by normal values instead of a few integers


def _select_on_shards(rank: int, results: Path) -> None:
    dist.init_process_group("gloo")
    try:
        for index, (shapes, pattern_name, method, scope, bounds, sparsity) in enumerate(SELECTIONS):
            generator = torch.Generator().manual_seed(index)
            # few distinct values, so that ties straddle the threshold, and the "already pruned" sentinel
            if index in CONTINUOUS:
                scores = [torch.randn(shape, generator=generator) for shape in shapes]
            else:
                scores = [torch.randint(-3, 4, shape, generator=generator).float() for shape in shapes]
            scores[0][0, :3] = torch.finfo(torch.float32).min
            pattern = parse_pattern(pattern_name)
            whole = pattern_masks(scores, sparsity, pattern, method, scope, bounds)  # every rank: one process's masks
            parts = [s[_rows_of(rank, s.shape[0])] for s in scores]
            selection = ShardedSelection([_rows_of(rank, s.shape[0]).start for s in scores], [True] * len(scores))
            mine = pattern_masks(parts, sparsity, pattern, method, scope, bounds, selection=selection)
            gathered: list[Any] = [None] * WORLD
            dist.all_gather_object(gathered, mine)
            for tensor, expected in enumerate(whole):
                joined = torch.cat([masks[tensor] for masks in gathered])
                assert torch.equal(joined, expected), f"case {index} ({pattern_name}, {scope}): tensor {tensor} differs"
        (results / f"rank{rank}.ok").touch()
    finally:
        dist.destroy_process_group()


def test_selection_on_row_shards_equals_one_process_on_whole_tensors(tmp_path: Path) -> None:
    _spawn(_select_on_shards, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.ok", "rank1.ok"]


class ShardedMLP(pl.LightningModule):
    """Three Linear layers, each sharded by FSDP2 in ``configure_model`` (13 rows: uneven shards of 7 and 6)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 13), nn.ReLU(), nn.Linear(13, 8), nn.ReLU(), nn.Linear(8, 2))
        self.example_input_array = torch.zeros(1, 16)  # where the structure (neurons) is found

    @override
    def configure_model(self) -> None:
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    @override
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        return nn.functional.cross_entropy(self.net(inputs), labels)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _pruning() -> PruningCallback:
    return PruningCallback(
        [
            Pruner(
                prune_type="SnipMomentum",
                scope="global",
                target_sparsity_ratio=0.7,
                step_range=[1, 9],
                update_frequency=2,
                names=[r"net\.[02]\.weight"],
            ),
            Pruner(
                prune_type="Wanda",
                target_sparsity_ratio=0.5,
                pattern="2:4",
                step_range=[0, 4],
                names=[r"net\.4\.weight"],
            ),
        ]
    )


#: mask updates in 12 steps (two epochs of 6): SnipMomentum at steps 1, 3, 5, 7 and 9; the 2:4 pruner at 0 to 4
UPDATES = 5 + 5
EPOCHS = 2


def _trainer(
    max_epochs: int, callbacks: list[Callback], root: Path, devices: int = WORLD, tensor_parallel: bool = False
) -> pl.Trainer:
    """Data parallel over ``devices`` ranks (FSDP2), or tensor parallel over them."""
    return pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=ModelParallelStrategy(
            data_parallel_size=1 if tensor_parallel else devices, tensor_parallel_size=devices if tensor_parallel else 1
        ),
        max_epochs=max_epochs,
        callbacks=callbacks,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _data() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(96, 16, generator=generator)
    return DataLoader(TensorDataset(inputs, (inputs[:, 0] > 0).long()), batch_size=8)


class CheckEveryUpdate(Callback):
    """At every mask update, rank zero redoes the update in one process on the gathered weights, scores and masks
    (a ``Sparsifier`` of plain parameters), and asserts the same masks; at the end, it saves what the ranks hold
    and Wanda's input norms."""

    def __init__(self, pruning: PruningCallback, folder: Path) -> None:
        self.pruning = pruning
        self.folder = folder
        self.updates = 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sparsifier in self.pruning.sparsifiers:
            update = sparsifier.update_masks

            def checked(sparsity: float, sparsifier: Sparsifier = sparsifier, update: Any = update) -> None:
                before = sparsifier.state_dict()
                weights = {name: w.detach().full_tensor().clone() for name, w in sparsifier.weights.items()}
                update(sparsity)
                after = sparsifier.state_dict()
                if trainer.is_global_zero:
                    whole = {name: nn.Parameter(w.clone()) for name, w in weights.items()}
                    reference = Sparsifier(sparsifier.pruner, whole, modules=sparsifier.modules)
                    if "input_norms" in after["criterion"]:  # Wanda scores with the norms averaged over the ranks
                        before["criterion"]["input_norms"] = after["criterion"]["input_norms"]
                    reference.load_state_dict(before)
                    with mock.patch("torch.distributed.is_initialized", return_value=False):  # one process
                        reference.update_masks(sparsity)
                    for name, mask in reference.masks.items():
                        assert torch.equal(pack_bits(mask), after["masks"][name]), f"mask of {name} differs"
                self.updates += 1

            sparsifier.update_masks = checked  # type: ignore[method-assign]

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, index: int) -> None:
        if not self.updates and trainer.global_step:  # the first batch of a resumed run: the masks as restored
            masks = {n: m for s in self.pruning.sparsifiers for n, m in s.state_dict()["masks"].items()}
            torch.save(masks, self.folder / f"restored{trainer.global_rank}.pt")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = self.pruning.report()  # collective: every rank counts its rows
        state = {
            "updates": self.updates,
            "local_masks": {n: tuple(m.shape) for s in self.pruning.sparsifiers for n, m in s.masks.items()},
            "local_scores": {
                n: tuple(t.shape)
                for s in self.pruning.sparsifiers
                for n, t in s.criterion.state_dict().get("scores", {}).items()
            },
            "weights": {n: w.detach().full_tensor() for s in self.pruning.sparsifiers for n, w in s.weights.items()},
            "masks": {n: m for s in self.pruning.sparsifiers for n, m in s.state_dict()["masks"].items()},
            "input_norms": {
                n: t
                for s in self.pruning.sparsifiers
                for n, t in s.criterion.state_dict().get("input_norms", {}).items()
            },
            "sparsity": report.sparsity,
            "mask_sparsity": self.pruning.mask_sparsity(),
        }
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def _train(rank: int, folder: Path, max_epochs: int, resume: str, devices: int = WORLD) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pruning = _pruning()
    checkpoints = ModelCheckpoint(dirpath=folder / "checkpoints", save_top_k=-1, save_on_train_epoch_end=True)
    callbacks: list[Callback] = [CheckEveryUpdate(pruning, folder), pruning, checkpoints]  # checks step 0 too
    trainer = _trainer(max_epochs, callbacks, folder, devices)
    trainer.fit(ShardedMLP(), _data(), ckpt_path=resume or None)


def test_fsdp2_prunes_row_shards_exactly_and_counts_all_ranks(tmp_path: Path) -> None:
    _spawn(_train, tmp_path, EPOCHS, "")
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD))
    assert rank0["updates"] == rank1["updates"] == UPDATES
    # each rank holds its rows only: 7 + 6 of 13, 4 + 4 of 8, 1 + 1 of 2
    assert rank0["local_masks"] == {"net.0.weight": (7, 16), "net.2.weight": (4, 13), "net.4.weight": (1, 8)}
    assert rank1["local_masks"] == {"net.0.weight": (6, 16), "net.2.weight": (4, 13), "net.4.weight": (1, 8)}
    assert rank0["local_scores"] == {"net.0.weight": (7, 16), "net.2.weight": (4, 13)}
    for name, weight in rank0["weights"].items():
        assert torch.equal(weight, rank1["weights"][name])
        assert torch.equal(rank0["masks"][name], rank1["masks"][name])
    # Wanda's input norms, as a checkpoint holds them: averaged over the ranks, which saw different batches
    assert torch.equal(rank0["input_norms"]["net.4.weight"], rank1["input_norms"]["net.4.weight"])
    global_pruned = sum(int((rank0["weights"][n] == 0).sum()) for n in ("net.0.weight", "net.2.weight"))
    assert global_pruned == round(0.7 * (13 * 16 + 8 * 13))  # one threshold over both ranks' rows
    assert int((rank0["weights"]["net.4.weight"] == 0).sum()) == 8  # 2 of every 4
    expected = (global_pruned + 8) / (13 * 16 + 8 * 13 + 2 * 8)
    assert rank0["sparsity"] == rank1["sparsity"] == pytest.approx(expected)
    assert rank0["mask_sparsity"] == rank1["mask_sparsity"] == pytest.approx(expected)


def test_fsdp2_resumes_bit_exactly_from_a_distributed_checkpoint(tmp_path: Path) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _spawn(_train, whole, EPOCHS, "")
    checkpoint = next((whole / "checkpoints").glob("*step=6*"))  # mid-ramp: SnipMomentum updates at 7 and 9
    assert checkpoint.is_dir(), "ModelParallelStrategy writes a distributed checkpoint (a folder)"
    _spawn(_train, resumed, EPOCHS, str(checkpoint))
    for rank in range(WORLD):
        first, second = (torch.load(folder / f"rank{rank}.pt", weights_only=True) for folder in (whole, resumed))
        for name, weight in first["weights"].items():
            assert torch.equal(weight, second["weights"][name]), f"weight {name} differs after resuming"
            assert torch.equal(first["masks"][name], second["masks"][name]), f"mask of {name} differs after resuming"


REFUSED = {
    "OBS": (Pruner(prune_type="OBS", names=[r"net\.0\.weight"]), r"prune_type='OBS' has no sharded implementation"),
    "GroupLasso": (Pruner(prune_type="GroupLasso", names=[r"net\.0\.weight"]), r"'GroupLasso' has no sharded"),
    "structured": (Pruner(pattern="neuron", target_sparsity_ratio=0.5), r"structured patterns \(head / neuron\)"),
    "one-shot": (Pruner(step_range=[0, 0], names=[r"net\.0\.weight"]), r"one-shot pruning \(step_range=\[0, 0\]\)"),
    "blocks within ranks": (
        Pruner(pattern="2x1", names=[r"net\.2\.weight"], target_sparsity_ratio=0.5),  # 8 rows: 4 + 4, fine
        None,
    ),
    "blocks across ranks": (
        Pruner(pattern="13x1", names=[r"net\.0\.weight"], target_sparsity_ratio=0.5),  # 13 rows: 7 + 6
        r"prunes blocks of 13 rows, but this process holds rows 0\.\.7 of weight 'net\.0\.weight'",
    ),
}


def _refused(rank: int, folder: Path) -> None:
    for case, (pruner, _) in REFUSED.items():
        try:
            _trainer(1, [PruningCallback([pruner])], folder).fit(ShardedMLP(), _data())
            message = "ran"
        except ValueError as error:
            message = str(error)
        if rank == 0:
            (folder / f"{case}.txt").write_text(message)


def test_what_fsdp2_cannot_prune_exactly_is_refused_before_training(tmp_path: Path) -> None:
    _spawn(_refused, tmp_path)
    for case, (_, expected) in REFUSED.items():
        message = (tmp_path / f"{case}.txt").read_text()
        if expected is None:
            assert message == "ran"
        else:
            assert re.search(expected, message), f"{case}: {message}"


class TensorParallelMLP(ShardedMLP):
    """``net.0`` column-parallel (its weight split by rows), ``net.2`` row-parallel (split by columns); widths that
    split evenly, as tensor parallelism needs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 2))

    @override
    def configure_model(self) -> None:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        mesh = self.device_mesh["tensor_parallel"]
        parallelize_module(self.net, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def _tensor_parallel(rank: int, folder: Path, names: list[str]) -> None:
    pruning = PruningCallback([Pruner(prune_type="SnipMomentum", step_range=[1, 5], names=names)])
    trainer = _trainer(1, [CheckEveryUpdate(pruning, folder), pruning], folder, tensor_parallel=True)
    try:
        trainer.fit(TensorParallelMLP(), _data())
    except ValueError as error:
        (folder / f"refused{rank}.txt").write_text(str(error))


def test_tensor_parallel_column_shards_prune_exactly_and_row_parallel_is_refused(tmp_path: Path) -> None:
    colwise, rowwise = tmp_path / "colwise", tmp_path / "rowwise"
    colwise.mkdir()
    rowwise.mkdir()
    _spawn(_tensor_parallel, colwise, [r"net\.0\.weight"])
    rank0, rank1 = (torch.load(colwise / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD))
    assert rank0["updates"] == 5  # steps 1 to 5, each checked against one process on the gathered weights
    assert rank0["local_masks"] == rank1["local_masks"] == {"net.0.weight": (6, 16)}
    assert int((rank0["weights"]["net.0.weight"] == 0).sum()) == round(0.97 * 12 * 16)  # the default target
    _spawn(_tensor_parallel, rowwise, [r"net\.2\.weight"])
    message = (rowwise / "refused0.txt").read_text()
    assert "weight 'net.2.weight' is split across processes as (Shard(dim=1),)" in message


def test_fsdp2_checkpoint_of_two_ranks_resumes_on_one(tmp_path: Path) -> None:
    two, one = tmp_path / "two", tmp_path / "one"
    _spawn(_train, two, 1, "")
    checkpoint = next((two / "checkpoints").glob("*step=6*"))
    saved = torch.load(checkpoint / "meta.pt", weights_only=True)["callbacks"]["PruningCallback"]["states"]
    _spawn(_train, one, EPOCHS, str(checkpoint), 1, world=1)
    restored = torch.load(one / "restored0.pt", weights_only=True)
    for state in saved:
        for name, packed in state["masks"].items():
            assert torch.equal(restored[name], packed), f"mask of {name} was not restored whole on one rank"
    final = torch.load(one / "rank0.pt", weights_only=True)
    assert final["mask_sparsity"] == pytest.approx((round(0.7 * (13 * 16 + 8 * 13)) + 8) / (13 * 16 + 8 * 13 + 2 * 8))


def _conv1d_refused(rank: int, results: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    from transformers.pytorch_utils import Conv1D

    dist.init_process_group("gloo")
    try:
        layer = Conv1D(8, 16)  # GPT-2's layout: weight stored in x out (16 x 8)
        weight = nn.Parameter(distribute_tensor(layer.weight.detach(), init_device_mesh("cpu", (WORLD,)), [Shard(0)]))
        try:
            Sparsifier(Pruner(), {"c_attn.weight": weight}, modules={"c_attn.weight": layer})
            message = "accepted"
        except ValueError as error:
            message = str(error)
        (results / f"rank{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


def test_a_sharded_conv1d_weight_is_refused_naming_it(tmp_path: Path) -> None:
    _spawn(_conv1d_refused, tmp_path)
    message = (tmp_path / "rank0.txt").read_text()
    assert "weight 'c_attn.weight' is stored in x out (Conv1D or a transposed convolution)" in message

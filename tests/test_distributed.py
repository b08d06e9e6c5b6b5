"""DDP over two CPU processes (gloo): every rank holds the same masks, and metrics are written once."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import torch
from helpers import TinyBert, make_trainer, toy_loader
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from typing_extensions import override

from lightning_sparsity import Pruner, PruningCallback


class SaveRankState(Callback):
    """Writes each rank's masks, gradient scores and pruned weights to ``folder/rank<N>.pt`` when training ends.

    Defined at module level so that ``ddp_spawn`` can pickle it into the worker processes.
    """

    def __init__(self, pruning: PruningCallback, folder: Path) -> None:
        self.pruning = pruning
        self.folder = folder

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {
            "masks": {n: m for s in self.pruning.sparsifiers for n, m in s.masks.items()},
            "scores": {n: v for s in self.pruning.sparsifiers for n, v in getattr(s.criterion, "stored", {}).items()},
            "weights": {n: w.detach() for s in self.pruning.sparsifiers for n, w in s.weights.items()},
            "sparsity": self.pruning.sparsity(),
        }
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def test_ddp_ranks_hold_identical_masks_and_log_once(tmp_path: Path) -> None:
    # Global scope over gradient-based scores: the threshold depends on every tensor and on DDP-averaged gradients.
    pruning = PruningCallback(
        [
            Pruner(
                prune_type="SnipMomentum",
                scope="global",
                target_sparsity_ratio=0.7,
                step_range=[1, 6],
                update_frequency=2,
                names=[r"attention\.self\.(query|key|value)\.weight"],
            ),
            Pruner(target_sparsity_ratio=0.5, epoch_range=[0, 1], names=[r"intermediate\.dense\.weight"]),
        ]
    )
    trainer = make_trainer(
        strategy="ddp_spawn",
        devices=2,
        max_epochs=2,
        logger=CSVLogger(tmp_path, name="logs"),
        log_every_n_steps=1,
        callbacks=[pruning, SaveRankState(pruning, tmp_path)],
    )
    trainer.fit(TinyBert(lr=1e-2), toy_loader())

    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert rank0["masks"].keys() == rank1["masks"].keys() and len(rank0["masks"]) == 8
    for kind in ("masks", "scores", "weights"):
        for name, value in rank0[kind].items():
            assert torch.equal(value, rank1[kind][name]), f"{kind} of {name} differ between ranks"
    assert rank0["scores"], "SnipMomentum kept no scores"
    pruned = {name: int((~mask).sum()) for name, mask in rank0["masks"].items()}
    attention = [name for name in pruned if "attention" in name]
    assert sum(pruned[name] for name in attention) == round(0.7 * 6 * 32 * 32)  # one global threshold
    assert all(pruned[name] == round(0.5 * 64 * 32) for name in pruned if name not in attention)
    assert rank0["sparsity"] == rank1["sparsity"] == sum(pruned.values()) / (6 * 32 * 32 + 2 * 64 * 32)

    metric_files = list((tmp_path / "logs").rglob("metrics.csv"))
    assert len(metric_files) == 1, f"expected one metrics file (rank zero), found {metric_files}"
    with metric_files[0].open() as file:
        steps = [row["step"] for row in csv.DictReader(file) if row.get("pruning/sparsity")]
    # 64 samples split over 2 ranks in batches of 8: 4 optimizer steps an epoch, one row each, none duplicated
    assert len(steps) == len(set(steps)) == 2 * 4


def test_ddp_ranks_average_wanda_input_norms_so_their_masks_agree(tmp_path: Path) -> None:
    # each rank sees its own half of the data, so its running input norms differ until they are averaged
    pruning = PruningCallback(
        [Pruner(prune_type="Wanda", target_sparsity_ratio=0.6, step_range=[1, 6], names=[r"dense\.weight"])]
    )
    trainer = make_trainer(
        strategy="ddp_spawn", devices=2, max_epochs=2, callbacks=[pruning, SaveRankState(pruning, tmp_path)]
    )
    trainer.fit(TinyBert(lr=1e-2), toy_loader())
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert rank0["masks"]
    for kind in ("masks", "weights"):
        for name, value in rank0[kind].items():
            assert torch.equal(value, rank1[kind][name]), f"{kind} of {name} differ between ranks"

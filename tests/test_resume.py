"""Exact resume from Lightning checkpoints, zeros that stay zero, and pruned checkpoints without the callback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyBert, make_trainer, toy_dataset, toy_loader
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.functional.bits import unpack_bits

pytestmark = pytest.mark.filterwarnings("ignore:.*resuming from a checkpoint that ended before the epoch ended.*")

STEPS_PER_EPOCH = 8
EPOCHS = 3
MID_EPOCH_STEP = 11  # saved after the third of epoch 1's eight optimizer steps

#: One pruner per prune type, mixing epoch- and step-counted ramps so that checkpoints fall between updates.
PRUNERS: dict[str, dict[str, Any]] = {
    "BasicMagnitude": dict(prune_type="BasicMagnitude", target_sparsity_ratio=0.8, epoch_range=[0, 2]),
    "PatternLock": dict(prune_type="PatternLock"),
    "GroupLasso": dict(
        prune_type="GroupLasso", target_sparsity_ratio=0.5, pattern="4x1", epoch_range=[0, 2], parameters={"alpha": 0.1}
    ),
    "SnipMomentum": dict(prune_type="SnipMomentum", target_sparsity_ratio=0.7, step_range=[2, 20], update_frequency=3),
    "Gradient": dict(prune_type="Gradient", target_sparsity_ratio=0.6, step_range=[4, 16], update_frequency=5),
    "OBS": dict(
        prune_type="OBS",
        target_sparsity_ratio=0.7,
        step_range=[2, 20],
        update_frequency=3,
        parameters={"block_size": 8},
    ),
    "Movement": dict(prune_type="Movement", target_sparsity_ratio=0.7, step_range=[2, 20], update_frequency=3),
    "Wanda": dict(prune_type="Wanda", target_sparsity_ratio=0.5, pattern="2:4", step_range=[1, 15], update_frequency=4),
}


class PositionIndexedBert(TinyBert):
    """TinyBert that trains on batch ``batch_idx`` of a fixed dataset, ignoring what the loader yields.

    Lightning restarts a plain DataLoader from the start of the epoch on a mid-epoch resume; indexing the data
    by the loop position (which Lightning does restore) makes the resumed run see the uninterrupted run's batches.
    Dropout is off so that the runs are deterministic.
    """

    def __init__(self, lr: float = 1e-2, optimizer: str = "adamw") -> None:
        super().__init__(
            lr=lr, optimizer=optimizer, num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
        self.data = toy_dataset(STEPS_PER_EPOCH * 8).tensors

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids, labels = (t[batch_idx * 8 : (batch_idx + 1) * 8] for t in self.data)
        return torch.nn.functional.cross_entropy(self(input_ids), labels)


def make_module(prune_type: str) -> PositionIndexedBert:
    module = PositionIndexedBert()
    if prune_type == "PatternLock":  # a model that arrives with zeros for PatternLock to keep
        with torch.no_grad():
            for name, weight in module.named_parameters():
                if "encoder" in name and name.endswith("weight") and weight.dim() == 2:
                    weight.masked_fill_(weight.abs() < weight.abs().median(), 0.0)
    return module


def position_loader() -> DataLoader:
    return DataLoader(range(STEPS_PER_EPOCH), batch_size=1)


def masks_of(callback: PruningCallback) -> dict[str, torch.Tensor]:
    return {name: mask for s in callback.sparsifiers for name, mask in s.masks.items()}


def fit(
    prune_type: str, ckpt_path: Path | None = None, callbacks: Sequence[Callback] = ()
) -> tuple[pl.LightningModule, PruningCallback]:
    module = make_module(prune_type)
    pruning = PruningCallback([Pruner(**PRUNERS[prune_type])])
    trainer = make_trainer(max_epochs=EPOCHS, callbacks=[pruning, *callbacks], enable_checkpointing=bool(callbacks))
    trainer.fit(module, train_dataloaders=position_loader(), ckpt_path=ckpt_path, weights_only=True)
    return module, pruning


@pytest.mark.parametrize("prune_type", list(PRUNERS))
def test_resume_from_epoch_end_and_mid_epoch_matches_uninterrupted_run(prune_type: str, tmp_path: Path) -> None:
    mid_epoch = ModelCheckpoint(tmp_path / "mid", filename="{step}", every_n_train_steps=MID_EPOCH_STEP, save_top_k=-1)
    epoch_end = ModelCheckpoint(tmp_path / "epoch", filename="{epoch}", save_on_train_epoch_end=True, save_top_k=-1)
    full_module, full_pruning = fit(prune_type, callbacks=[mid_epoch, epoch_end])
    full_masks = masks_of(full_pruning)
    assert full_pruning.mask_sparsity() > 0.3

    for checkpoint in (tmp_path / "epoch" / "epoch=0.ckpt", tmp_path / "mid" / f"step={MID_EPOCH_STEP}.ckpt"):
        module, pruning = fit(prune_type, ckpt_path=checkpoint)
        assert masks_of(pruning).keys() == full_masks.keys()
        for name, mask in masks_of(pruning).items():
            assert torch.equal(mask, full_masks[name]), f"{checkpoint.name}: mask {name} differs"
        for name, value in module.state_dict().items():
            assert torch.equal(value, full_module.state_dict()[name]), f"{checkpoint.name}: weight {name} differs"


class ZeroChecker(Callback):
    """Asserts before every forward pass of the last epoch (after the ramp) that pruned weights are exactly zero."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning
        self.checked_steps = 0

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch >= 2:  # the ramp [0, 1] is over: every mask is final
            for sparsifier in self.pruning.sparsifiers:
                for name, mask in sparsifier.masks.items():
                    assert not sparsifier.weights[name][~mask].any(), f"pruned entries of {name} are non-zero"
            self.checked_steps += 1


class ScheduledBert(TinyBert):
    """TinyBert whose learning rate follows a OneCycle schedule, stepped every optimizer step."""

    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=5e-2, total_steps=self.trainer.estimated_stepping_batches
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@pytest.mark.parametrize(
    ("module", "trainer_settings"),
    [
        (TinyBert(lr=5e-2, optimizer="adamw"), {}),
        (TinyBert(lr=5e-2, optimizer="sgd"), {}),
        (TinyBert(lr=5e-2, optimizer="sgd"), {"gradient_clip_val": 0.1}),
        (TinyBert(lr=5e-2), {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value"}),
        (ScheduledBert(optimizer="sgd"), {}),
    ],
    ids=["adamw", "sgd-momentum", "sgd-clip-norm", "adamw-clip-value", "sgd-onecycle"],
)
def test_pruned_weights_stay_exactly_zero_after_the_ramp(module: TinyBert, trainer_settings: dict[str, Any]) -> None:
    pruning = PruningCallback([Pruner(target_sparsity_ratio=0.75, epoch_range=[0, 1])])
    checker = ZeroChecker(pruning)
    make_trainer(max_epochs=3, callbacks=[pruning, checker], **trainer_settings).fit(module, toy_loader(size=32))
    assert checker.checked_steps == 4  # the last epoch's 32 samples in batches of 8
    assert pruning.sparsity() == pytest.approx(0.75, abs=1e-3)


def test_masks_survive_validate_test_and_a_second_fit_without_growing() -> None:
    module = TinyBert(lr=5e-2)
    pruning = PruningCallback([Pruner(target_sparsity_ratio=0.6, step_range=[0, 6], update_frequency=2)])
    make_trainer(max_epochs=1, callbacks=[pruning]).fit(module, toy_loader())
    masks = {name: mask.clone() for name, mask in masks_of(pruning).items()}
    held = len(pruning.state_dict()["states"][0]["masks"]) + len(
        pruning.state_dict()["states"][0]["criterion"].get("scores", {})
    )

    trainer = make_trainer(callbacks=[pruning])
    trainer.validate(module, toy_loader(seed=1))
    trainer.test(module, toy_loader(seed=2))
    make_trainer(max_epochs=2, callbacks=[pruning]).fit(module, toy_loader(seed=3))

    state = pruning.state_dict()["states"][0]
    assert len(pruning.sparsifiers) == 1
    assert len(state["masks"]) + len(state["criterion"].get("scores", {})) == held
    for name, mask in masks_of(pruning).items():
        assert torch.equal(mask, masks[name])
        assert not module.get_parameter(name)[~mask].any()
    assert pruning.sparsity() == pytest.approx(0.6, abs=1e-3)


def test_pruned_checkpoint_loads_into_the_plain_model_without_extra_keys(tmp_path: Path) -> None:
    module = TinyBert(lr=5e-2)
    pruning = PruningCallback([Pruner(target_sparsity_ratio=0.7, epoch_range=[0, 0])])
    trainer = make_trainer(max_epochs=1, callbacks=[pruning])
    trainer.fit(module, toy_loader())
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")

    plain = TinyBert.load_from_checkpoint(tmp_path / "pruned.ckpt", weights_only=True)
    assert plain.state_dict().keys() == TinyBert().state_dict().keys()
    for name, mask in masks_of(pruning).items():
        weight = plain.get_parameter(name)
        assert torch.equal(weight, module.get_parameter(name))
        assert int((weight == 0).sum()) == int((~mask).sum())


def test_resuming_a_finished_run_keeps_its_masks_in_new_checkpoints(tmp_path: Path) -> None:
    """Training is skipped when the checkpoint already reached max_epochs; a checkpoint saved then keeps the masks."""
    module, pruning = fit("BasicMagnitude", callbacks=[ModelCheckpoint(tmp_path, filename="done")])
    trainer = make_trainer(max_epochs=EPOCHS, callbacks=[PruningCallback([Pruner(**PRUNERS["BasicMagnitude"])])])
    trainer.fit(make_module("BasicMagnitude"), position_loader(), ckpt_path=tmp_path / "done.ckpt", weights_only=True)
    trainer.save_checkpoint(tmp_path / "again.ckpt")

    saved = torch.load(tmp_path / "again.ckpt", weights_only=True)["callbacks"]["PruningCallback"]["states"][0]["masks"]
    assert saved.keys() == masks_of(pruning).keys()
    for name, mask in masks_of(pruning).items():
        assert torch.equal(unpack_bits(saved[name], mask.shape), mask)


def test_checkpoints_hold_masks_packed_eight_to_a_byte(tmp_path: Path) -> None:
    _, pruning = fit("SnipMomentum", callbacks=[ModelCheckpoint(tmp_path, filename="run")])
    state = torch.load(tmp_path / "run.ckpt", weights_only=True)["callbacks"]["PruningCallback"]
    assert state["format"] == 3
    for name, mask in masks_of(pruning).items():
        packed = state["states"][0]["masks"][name]
        assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
        assert torch.equal(unpack_bits(packed, mask.shape), mask)


def test_state_format_1_with_boolean_masks_still_resumes(tmp_path: Path) -> None:
    """Checkpoints written before masks were packed (format 1: boolean masks) resume exactly."""
    mid_epoch = ModelCheckpoint(tmp_path, filename="mid", every_n_train_steps=MID_EPOCH_STEP)
    full_module, full_pruning = fit("SnipMomentum", callbacks=[mid_epoch])
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=True)
    state = checkpoint["callbacks"]["PruningCallback"]
    state["format"] = 1
    for name, weight in full_module.named_parameters():
        if name in state["states"][0]["masks"]:
            state["states"][0]["masks"][name] = unpack_bits(state["states"][0]["masks"][name], weight.shape)
    torch.save(checkpoint, tmp_path / "format1.ckpt")

    module, pruning = fit("SnipMomentum", ckpt_path=tmp_path / "format1.ckpt")
    assert masks_of(pruning).keys() == masks_of(full_pruning).keys()
    for name, mask in masks_of(full_pruning).items():
        assert torch.equal(masks_of(pruning)[name], mask)
    for name, value in module.state_dict().items():
        assert torch.equal(value, full_module.state_dict()[name])


def test_unknown_state_format_is_refused() -> None:
    pruning = PruningCallback([Pruner(**PRUNERS["SnipMomentum"])])
    state = {**pruning.state_dict(), "format": 99}
    with pytest.raises(ValueError, match=r"format 99, expected one of \(1, 2, 3\).*another version"):
        pruning.load_state_dict(state)

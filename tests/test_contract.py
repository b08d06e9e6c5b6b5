"""The contract every registered prune type keeps, checked from one harness (as torchmetrics' MetricTester does for
metrics): for each pattern kind, all registered types that prune it run side by side on disjoint weights of one
model, under each training setup, and must reach their exact targets with pruned weights exactly zero; resumed runs
must equal uninterrupted ones bit for bit, and DDP ranks must hold the same masks and weights. A new prune type is
checked by registering it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyBert, make_trainer, toy_dataset
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_sparsity import Pruner, PruningCallback, prune_types
from lightning_sparsity.functional.patterns import parse_pattern
from lightning_sparsity.prune_types import prune_type_class

#: One pattern per kind, and the target it is pruned to.
PATTERNS = {"unstructured": ("1x1", 0.7), "blocks": ("4x1", 0.5), "n_of_m": ("2:4", 0.5)}
WEIGHTS = ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense")
STEPS_PER_EPOCH = 4
SETUPS = ("plain", "bf16-mixed", "accumulate", "manual")


def types_for(kind: str) -> list[str]:
    return [name for name in prune_types() if kind in prune_type_class(name).pattern_kinds]


def pruners_for(kind: str) -> list[Pruner]:
    """Every type that prunes ``kind``, each on its own weight of its own layer, on a step ramp ending mid-run."""
    pattern, target = PATTERNS[kind]
    return [
        Pruner(
            prune_type=name,
            pattern=pattern,
            target_sparsity_ratio=target,
            step_range=[0, 0] if prune_type_class(name).one_shot_only else [1, 5],
            update_frequency=2,
            names=[rf"layer\.{index // len(WEIGHTS)}\.{WEIGHTS[index % len(WEIGHTS)]}\.weight"],
        )
        for index, name in enumerate(types_for(kind))
    ]


class Deterministic(TinyBert):
    """No dropout, batches indexed by loop position (a mid-epoch resume sees the same ones), zeros for PatternLock,
    and optionally manual optimization."""

    def __init__(self, layers: int, manual: bool = False) -> None:
        super().__init__(lr=1e-2, num_hidden_layers=layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.automatic_optimization = not manual
        self.data = toy_dataset(STEPS_PER_EPOCH * 8).tensors
        with torch.no_grad():  # zeros for PatternLock to keep; every other type prunes past them
            for weight in self.parameters():
                if weight.dim() == 2:
                    weight[:, ::4] = 0.0

    def calibration_step(self, batch: Any) -> Any:
        """One-shot types calibrate on the batch at that position."""
        position = int(batch[0])
        return self(self.data[0][position * 8 : (position + 1) * 8])

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        input_ids, labels = (t[batch_idx * 8 : (batch_idx + 1) * 8] for t in self.data)
        loss = torch.nn.functional.cross_entropy(self(input_ids), labels)
        if self.automatic_optimization:
            return loss
        optimizer = self.optimizers()
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        return None


def positions() -> DataLoader:
    return DataLoader(range(STEPS_PER_EPOCH), batch_size=1)


def layers_for(kind: str) -> int:
    return -(-len(types_for(kind)) // len(WEIGHTS))


def run(kind: str, setup: str = "plain", **fit: Any) -> tuple[Deterministic, PruningCallback, pl.Trainer]:
    module = Deterministic(layers_for(kind), manual=setup == "manual")
    pruning = PruningCallback(pruners_for(kind), calibration_samples=STEPS_PER_EPOCH)
    settings: dict[str, Any] = dict(max_epochs=2, callbacks=[pruning, *fit.pop("callbacks", [])])
    if setup == "bf16-mixed":
        settings["precision"] = "bf16-mixed"
    if setup == "accumulate":
        settings["accumulate_grad_batches"] = 2
        settings["max_epochs"] = 4
    trainer = make_trainer(**settings, **fit.pop("trainer", {}))
    trainer.fit(module, positions(), **fit)
    return module, pruning, trainer


def assert_exact(pruning: PruningCallback) -> None:
    for sparsifier in pruning.sparsifiers:
        pattern = sparsifier.pattern
        for name, mask in sparsifier.masks.items():
            weight = sparsifier.weights[name]
            assert not weight[~mask].any(), f"{sparsifier.pruner.prune_type}: pruned entries of {name} are non-zero"
            if not sparsifier.criterion.follows_schedule:
                assert torch.equal(mask, weight != 0) and int((~mask).sum()) >= mask.numel() // 4
                continue
            units = pattern.units(mask.shape)
            expected = round(sparsifier.pruner.target_sparsity_ratio * units) * (mask.numel() // units)
            assert int((~mask).sum()) == expected, f"{sparsifier.pruner.prune_type} on {name}"


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("kind", list(PATTERNS))
def test_every_type_reaches_its_exact_target_with_zeros_that_hold(kind: str, setup: str) -> None:
    assert types_for(kind), f"no registered prune type prunes {kind!r} patterns"
    _, pruning, trainer = run(kind, setup)
    assert {s.pruner.prune_type for s in pruning.sparsifiers} == set(types_for(kind))
    assert all(s.steps == trainer.global_step for s in pruning.sparsifiers)
    assert_exact(pruning)


@pytest.mark.parametrize("kind", list(PATTERNS))
def test_every_type_resumes_bit_exactly_from_mid_epoch(tmp_path: Path, kind: str) -> None:
    checkpoint = ModelCheckpoint(tmp_path, filename="mid", every_n_train_steps=STEPS_PER_EPOCH + 1, save_top_k=1)
    full, full_pruning, _ = run(kind, callbacks=[checkpoint], trainer=dict(enable_checkpointing=True))
    resumed, pruning, _ = run(kind, ckpt_path=tmp_path / "mid.ckpt")
    for (name, value), other in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(value, other), name
    for ours, theirs in zip(pruning.sparsifiers, full_pruning.sparsifiers, strict=True):
        assert ours.masks.keys() == theirs.masks.keys()
        assert all(torch.equal(ours.masks[n], theirs.masks[n]) for n in ours.masks), ours.pruner.prune_type


class SaveRankState(Callback):
    """Writes each rank's masks and pruned weights (module level: ``ddp_spawn`` pickles it into the workers)."""

    def __init__(self, pruning: PruningCallback, folder: Path) -> None:
        self.pruning, self.folder = pruning, folder

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = {
            f"{kind}:{s.pruner.prune_type}:{name}": tensor
            for s in self.pruning.sparsifiers
            for kind, tensors in (("mask", s.masks), ("weight", s.weights))
            for name, tensor in tensors.items()
        }
        torch.save({key: value.detach() for key, value in state.items()}, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.parametrize("kind", ["unstructured", "n_of_m"])
def test_ddp_ranks_hold_the_same_masks_and_weights_for_every_type(tmp_path: Path, kind: str) -> None:
    module = Deterministic(layers_for(kind))
    pruning = PruningCallback(pruners_for(kind), calibration_samples=STEPS_PER_EPOCH)
    trainer = make_trainer(
        strategy="ddp_spawn", devices=2, max_epochs=2, callbacks=[pruning, SaveRankState(pruning, tmp_path)]
    )
    trainer.fit(module, positions())
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert rank0.keys() == rank1.keys() and {k.split(":")[1] for k in rank0} == set(types_for(kind))
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), f"{key} differs between ranks"


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile's inductor needs a C++ compiler"
)
def test_every_type_keeps_its_masks_in_a_compiled_module() -> None:
    kind = "unstructured"
    module = Deterministic(layers_for(kind))
    compiled = torch.compile(module)
    pruning = PruningCallback(pruners_for(kind), calibration_samples=STEPS_PER_EPOCH)
    make_trainer(max_epochs=2, callbacks=[pruning]).fit(compiled, positions())
    assert_exact(pruning)
    assert parse_pattern(PATTERNS[kind][0]).kind == kind

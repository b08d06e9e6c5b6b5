"""``PruningCallback`` under ``lightning.Trainer`` on a tiny BERT."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyBert, make_trainer, toy_loader

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.functional import scheduled_sparsity

ENCODER = [r".*encoder.*\.weight"]


class Probe(pl.Callback):
    """Records, after every optimizer step, the step, the pruning target and the pruned weights' zeros."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        weights = {n: w for s in self.pruning.sparsifiers for n, w in s.weights.items()}
        self.rows.append(
            {
                "step": trainer.global_step,
                "target": self.pruning.current_target(),
                "zeros": {n: (w == 0).clone() for n, w in weights.items()},
                "weights": {n: w.detach().clone() for n, w in weights.items()},
            }
        )


def fit(pruners: list[Pruner], module: pl.LightningModule | None = None, loader_size: int = 64, **trainer_kw):
    module = module or TinyBert()
    callback = PruningCallback(pruners=pruners)
    probe = Probe(callback)
    make_trainer(callbacks=[callback, probe], **trainer_kw).fit(module, toy_loader(loader_size))
    return module, callback, probe


def assert_reaches_target(callback: PruningCallback, target: float, unit: int = 1) -> None:
    """Every tensor within one pruning unit (an element, or a block) of the target."""
    for row in callback.report():
        assert abs(row.zeros - target * row.numel) <= unit, row


@pytest.mark.parametrize("prune_type", ["BasicMagnitude", "GroupLasso", "SnipMomentum", "Gradient"])
@pytest.mark.parametrize(
    ("pattern", "method", "target"),
    [
        ("1x1", "per_tensor", 0.8),
        ("1x1", "per_channel", 0.75),
        ("4x1", "per_tensor", 0.75),
        ("1x4", "per_tensor", 0.6),
        ("2:4", "per_tensor", 0.5),
    ],
)
def test_every_prune_type_and_pattern_reaches_its_target(prune_type, pattern, method, target):
    if prune_type == "GroupLasso" and pattern == "2:4":
        pytest.skip("GroupLasso takes block patterns only (a ValueError, tested in test_pruner)")
    pruner = Pruner(
        prune_type=prune_type,
        target_sparsity_ratio=target,
        step_range=[1, 6],
        update_frequency=2,
        pattern=pattern,
        method=method,
        names=ENCODER,
    )
    _, callback, _ = fit([pruner], max_steps=10)
    pattern_unit = 4 if "x4" in pattern or "4x" in pattern else 1
    assert_reaches_target(callback, target, unit=pattern_unit)
    if method == "per_channel":
        for sparsifier in callback.sparsifiers:
            for weight in sparsifier.weights.values():
                assert ((weight == 0).sum(dim=1) == round(target * weight.shape[1])).all()


def test_masks_hold_through_every_optimizer_step_after_the_range():
    pruner = Pruner(target_sparsity_ratio=0.9, step_range=[0, 4], update_frequency=1, names=ENCODER)
    _, callback, probe = fit([pruner], max_steps=16)
    final = probe.rows[4]["zeros"]
    for row in probe.rows[5:]:
        for name, zeros in row["zeros"].items():
            assert torch.equal(zeros, final[name]), f"{name} changed its zeros at step {row['step']}"
    moved = [not torch.equal(probe.rows[5]["weights"][n], probe.rows[-1]["weights"][n]) for n in final]
    assert all(moved), "the kept weights should keep training"
    assert_reaches_target(callback, 0.9)


@pytest.mark.parametrize("schedule", ["linear", "exp", "cos", "cubic"])
def test_the_ramp_follows_the_schedule_at_its_update_steps(schedule):
    pruner = Pruner(
        target_sparsity_ratio=0.8,
        initial_sparsity_ratio=0.1,
        step_range=[2, 10],
        update_frequency=4,
        schedule=schedule,
        names=ENCODER,
    )
    _, callback, probe = fit([pruner], max_steps=12)
    expected_at = {2: 0.0, 6: 0.5, 10: 1.0}
    for row in probe.rows:
        step = row["step"]
        point = max((p for p in expected_at if p <= step), default=None)
        expected = 0.0 if point is None else scheduled_sparsity(expected_at[point], 0.1, 0.8, schedule)
        assert row["target"] == pytest.approx(expected), f"step {step}"
        numel = sum(z.numel() for z in row["zeros"].values())
        zeros = sum(int(z.sum()) for z in row["zeros"].values())
        assert abs(zeros - expected * numel) <= len(row["zeros"]), f"step {step}"


def test_gradient_accumulation_counts_optimizer_steps():
    pruner = Pruner(target_sparsity_ratio=0.5, step_range=[0, 4], update_frequency=2, names=ENCODER)
    _, callback, probe = fit([pruner], max_steps=6, accumulate_grad_batches=3, loader_size=160)
    steps = [row["step"] for row in probe.rows]
    assert steps[:6] == [0, 0, 1, 1, 1, 2]  # three batches per optimizer step
    target_by_step = {row["step"]: row["target"] for row in probe.rows}
    assert target_by_step[1] == 0.0 and target_by_step[2] == pytest.approx(0.25) and target_by_step[4] == 0.5
    assert_reaches_target(callback, 0.5)


def test_epoch_range_reaches_the_target_at_the_start_of_its_last_epoch():
    pruner = Pruner(target_sparsity_ratio=0.6, epoch_range=[0, 2], names=ENCODER)
    _, callback, probe = fit([pruner], max_epochs=4, loader_size=32)  # 4 optimizer steps per epoch
    targets = [row["target"] for row in probe.rows]
    assert targets == pytest.approx([0.0] * 4 + [0.3] * 4 + [0.6] * 8)
    assert_reaches_target(callback, 0.6)


def test_global_scope_meets_the_overall_target_with_uneven_layers():
    pruner = Pruner(target_sparsity_ratio=0.7, step_range=[0, 3], scope="global", names=ENCODER)
    _, callback, _ = fit([pruner], max_steps=5)
    report = callback.report()
    total = sum(row.numel for row in report)
    assert abs(sum(row.zeros for row in report) - 0.7 * total) <= 1
    assert len({round(row.sparsity, 3) for row in report}) > 1


def test_pattern_lock_adds_no_zeros_and_keeps_the_existing_ones():
    module = TinyBert()
    with torch.no_grad():
        for name, weight in module.named_parameters():
            if "encoder" in name and name.endswith("weight") and weight.dim() == 2:
                weight[weight.abs() < weight.abs().median()] = 0.0
    before = {n: (p == 0).clone() for n, p in module.named_parameters() if "encoder" in n and n.endswith("weight")}
    _, callback, _ = fit([Pruner(prune_type="PatternLock", names=ENCODER)], module=module, max_steps=6)
    for row in callback.report():
        name = row.name
        assert torch.equal(dict(module.named_parameters())[name] == 0, before[name])
    assert callback.sparsity() == pytest.approx(0.5, abs=0.01)


def test_several_pruners_each_on_their_own_layers():
    attention = Pruner(target_sparsity_ratio=0.5, step_range=[0, 2], names=[r".*attention.*\.weight"])
    ffn = Pruner(
        target_sparsity_ratio=0.8,
        step_range=[1, 3],
        pattern="4x1",
        names=[r".*(intermediate|output)\.dense\.weight"],
        excluded_names=[r".*attention.*"],
    )
    _, callback, _ = fit([attention, ffn], max_steps=4)
    for row in callback.report():
        assert row.final_target == (0.5 if "attention" in row.name else 0.8)
        assert abs(row.zeros - row.final_target * row.numel) <= (1 if "attention" in row.name else 4)


def test_model_state_dict_keys_are_unchanged_and_masks_are_boolean():
    module = TinyBert()
    keys = list(module.state_dict())
    _, callback, _ = fit([Pruner(target_sparsity_ratio=0.5, step_range=[0, 1], names=ENCODER)], module, max_steps=2)
    assert list(module.state_dict()) == keys
    masks = [m for s in callback.sparsifiers for m in s.masks.values()]
    assert masks and all(m.dtype == torch.bool for m in masks)


def test_default_names_select_every_linear_weight_but_the_output_head():
    _, callback, _ = fit([Pruner(target_sparsity_ratio=0.5, step_range=[0, 1])], max_steps=2)
    names = [row.name for row in callback.report()]
    assert "model.bert.pooler.dense.weight" in names and "model.classifier.weight" not in names
    assert len(names) == 2 * 6 + 1


def test_names_match_dotted_suffixes():
    pruner = Pruner(
        target_sparsity_ratio=0.5, step_range=[0, 1], names=["bert.encoder.layer.0.attention.self.query.weight"]
    )
    _, callback, _ = fit([pruner], max_steps=1)
    assert [row.name for row in callback.report()] == ["model.bert.encoder.layer.0.attention.self.query.weight"]


class Exploding(TinyBert):
    def training_step(self, batch, batch_idx):
        raise AssertionError("training must not start")


@pytest.mark.parametrize(
    ("pruners", "message"),
    [
        ([Pruner(names=[r".*nonexistent.*"])], r"names entry '\.\*nonexistent\.\*' matches no prunable weight"),
        ([Pruner(names=[r".*LayerNorm\.weight"])], r"matches only parameters that are not Linear/Conv weights"),
        (
            [Pruner(names=[r".*query\.weight"]), Pruner(names=[r".*layer\.0\..*\.weight"])],
            r"selected by pruners\[0\] and pruners\[1\]",
        ),
        ([Pruner(names=[r".*query\.weight"], excluded_names=[r".*query\.weight"])], r"selects no weight"),
        ([Pruner(pattern="5x1", names=[r".*query\.weight"])], r"pattern='5x1' does not divide weight"),
        ([Pruner(excluded_names=[r".*typo.*"])], r"excluded_names entry .* matches no prunable weight"),
    ],
)
def test_bad_selections_fail_before_the_first_step(pruners, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(callbacks=[PruningCallback(pruners)], max_steps=2).fit(Exploding(), toy_loader())


def test_frozen_weights_are_refused_before_training():
    module = Exploding()
    module.model.bert.encoder.layer[0].attention.self.query.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"query.weight' is frozen"):
        make_trainer(callbacks=[PruningCallback([Pruner(names=ENCODER)])], max_steps=2).fit(module, toy_loader())


def test_an_epoch_range_past_the_last_epoch_warns():
    with pytest.warns(UserWarning, match=r"epoch_range=\[0, 4\] ends at or after the last epoch"):
        fit([Pruner(target_sparsity_ratio=0.5, names=ENCODER)], max_epochs=2, loader_size=16)


def test_report_prints_a_table():
    _, callback, _ = fit([Pruner(target_sparsity_ratio=0.5, step_range=[0, 1], names=ENCODER)], max_steps=2)
    text = str(callback.report())
    assert text.splitlines()[0].startswith("| tensor | shape | sparsity")
    assert "model.bert.encoder.layer.1.output.dense.weight | 32x64 | 0.5000" in text
    assert callback.report().to_dicts()[0]["sparsity"] == pytest.approx(0.5)


def test_a_second_fit_of_another_model_binds_to_that_model():
    pruner = Pruner(target_sparsity_ratio=0.5, step_range=[0, 1], names=ENCODER)
    callback = PruningCallback([pruner])
    make_trainer(callbacks=[callback], max_steps=2).fit(TinyBert(), toy_loader())
    smaller = TinyBert(num_hidden_layers=1)
    make_trainer(callbacks=[callback], max_steps=2).fit(smaller, toy_loader())
    assert [row.name for row in callback.report()] == [
        n for n, _ in smaller.named_parameters() if "encoder" in n and n.endswith("weight") and "LayerNorm" not in n
    ]
    assert all(abs(row.zeros - 0.5 * row.numel) <= 1 for row in callback.report())

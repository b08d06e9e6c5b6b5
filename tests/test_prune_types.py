"""Prune types as plug-ins: the registry, a criterion written outside the package, Movement and Wanda."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyBert, make_trainer, toy_loader
from lightning.pytorch.cli import LightningCLI
from torch import Tensor

from lightning_sparsity import Pruner, PruneType, PruningCallback, register_prune_type
from lightning_sparsity.functional.criteria import movement_scores_, wanda_scores
from lightning_sparsity.prune_types import check_setting, prune_type_class, prune_types
from lightning_sparsity.sparsifier import Sparsifier

ENCODER = [r".*encoder.*\.(query|key|value|dense)\.weight"]


@register_prune_type
class LargestFirst(PruneType):
    """A criterion defined outside the package: prunes the largest weights first (scores ``-|w|``)."""

    name = "LargestFirst"

    @dataclasses.dataclass(frozen=True)
    class Settings:
        offset: float = 0.0

        def __post_init__(self) -> None:
            check_setting("offset", self.offset, 0.0)

    def scores(self, name: str, weight: Tensor) -> Tensor:
        return -weight.detach().abs().float() + self.settings.offset


def test_built_ins_and_user_types_are_registered_and_named_in_any_case() -> None:
    assert prune_types()[:8] == [
        "BasicMagnitude", "PatternLock", "GroupLasso", "SnipMomentum", "Gradient", "OBS", "Movement", "Wanda"
    ]  # fmt: skip
    assert "LargestFirst" in prune_types()
    assert Pruner(prune_type="BASICMAGNITUDE").prune_type == "BasicMagnitude"
    assert Pruner(prune_type="largestfirst", parameters={"offset": 1}).settings.offset == 1.0
    assert prune_type_class("Wanda").name == "Wanda"
    with pytest.raises(ValueError, match=r"parameters\['offset'\] must be a finite number >= 0"):
        Pruner(prune_type="LargestFirst", parameters={"offset": -1})
    with pytest.raises(ValueError, match=r"already registered"):

        @register_prune_type
        class Clash(PruneType):
            name = "basicmagnitude"


def test_a_user_criterion_prunes_from_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_sparsity.PruningCallback
      init_args:
        pruners:
          - prune_type: LargestFirst
            target_sparsity_ratio: 0.5
            step_range: [0, 0]
            names: ['{ENCODER[0]}']
"""
    )
    monkeypatch.setattr(sys, "argv", ["test"])
    torch.manual_seed(0)
    dense = {n: p.detach().clone() for n, p in TinyBert().named_parameters()}
    cli = LightningCLI(TinyBert, args=["--config", str(config)], run=False, save_config_callback=None)
    (pruning,) = [c for c in cli.trainer.callbacks if isinstance(c, PruningCallback)]
    cli.trainer.fit(cli.model, toy_loader(16))
    (sparsifier,) = pruning.sparsifiers
    assert pruning.sparsity() == pytest.approx(0.5, abs=1e-3)
    for name, mask in sparsifier.masks.items():  # pruned at step 0, before training: the largest half went
        assert dense[name][~mask].abs().min() >= dense[name][mask].abs().max()


def test_movement_scores_accumulate_minus_w_times_grad_and_prune_what_shrinks() -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 16, generator=generator))
    sparsifier = Sparsifier(Pruner(prune_type="Movement", target_sparsity_ratio=0.5), {"w": weight})
    expected = torch.zeros(8, 16)
    for _ in range(3):
        weight.grad = torch.randn(8, 16, generator=generator)
        expected -= weight.detach() * weight.grad
        sparsifier.before_optimizer_step()
        with torch.no_grad():
            weight -= 0.1 * weight.grad
    torch.testing.assert_close(sparsifier.criterion.stored["w"], expected)
    assert torch.equal(movement_scores_(torch.ones(2), torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0])),
                       torch.tensor([-2.0, 3.0]))  # fmt: skip
    sparsifier.update_masks(0.5)
    pruned = ~sparsifier.masks["w"]
    assert int(pruned.sum()) == 64
    assert expected[pruned].max() <= expected[~pruned].min()  # the lowest (most negative) movement went first


def test_signed_scores_never_bring_pruned_weights_back() -> None:
    """Pruned weights rank below any score, negative ones included: masks only grow sparser."""
    weight = torch.nn.Parameter(torch.randn(8, 16))
    sparsifier = Sparsifier(Pruner(prune_type="Movement", target_sparsity_ratio=0.75), {"w": weight})
    sparsifier.update_masks(0.25)
    first = sparsifier.masks["w"].clone()
    weight.grad = (
        torch.full_like(weight, 1e6) * weight.detach().sign()
    )  # every kept weight gets a hugely negative score
    sparsifier.before_optimizer_step()
    sparsifier.update_masks(0.5)
    assert not bool((sparsifier.masks["w"] & ~first).any())


def test_wanda_scores_weights_by_their_input_feature_norms_from_training_batches() -> None:
    module = TinyBert()
    query = module.model.bert.encoder.layer[0].attention.self.query
    inputs: list[Tensor] = []
    query.register_forward_hook(
        lambda m, args, out: inputs.append(args[0].detach().reshape(-1, 32)) if m.training else None
    )
    pruner = Pruner(prune_type="Wanda", target_sparsity_ratio=0.5, step_range=[2, 2], parameters={"decay": 0.5},
                    names=[r"layer\.0\.attention\.self\.query\.weight"])  # fmt: skip
    pruning = PruningCallback([pruner])
    make_trainer(max_steps=2, callbacks=[pruning], limit_val_batches=0).fit(module, toy_loader(16))
    (sparsifier,) = pruning.sparsifiers
    running = inputs[0].square().mean(0)
    running = 0.5 * running + 0.5 * inputs[1].square().mean(0)
    torch.testing.assert_close(sparsifier.criterion.input_norms[next(iter(sparsifier.weights))], running)
    expected = torch.tensor([[1.0, -2.0], [3.0, 0.5]]).abs() * torch.tensor([2.0, 0.5])
    assert torch.equal(wanda_scores(torch.tensor([[1.0, -2.0], [3.0, 0.5]]), torch.tensor([2.0, 0.5])), expected)
    assert torch.equal(
        wanda_scores(torch.tensor([[1.0, -2.0], [3.0, 0.5]]).t(), torch.tensor([2.0, 0.5]), True), expected.t()
    )
    assert pruning.sparsity() == 0.5


@pytest.mark.parametrize("pattern", ["1x1", "2:4", "4x1"])
def test_wanda_reaches_exact_targets_in_every_pattern(pattern: str) -> None:
    target = 0.5
    pruning = PruningCallback([Pruner(prune_type="Wanda", pattern=pattern, target_sparsity_ratio=target,
                                      step_range=[1, 5], update_frequency=2, names=ENCODER)])  # fmt: skip
    make_trainer(max_steps=6, callbacks=[pruning]).fit(TinyBert(), toy_loader())
    assert pruning.sparsity() == target


def test_wanda_hooks_leave_the_model_after_fit_and_do_not_count_validation_batches() -> None:
    module = TinyBert()
    pruning = PruningCallback([Pruner(prune_type="Wanda", target_sparsity_ratio=0.5, step_range=[1, 3], names=ENCODER)])
    make_trainer(max_steps=3, callbacks=[pruning]).fit(module, toy_loader(), toy_loader(seed=1))
    norms = {n: v.clone() for n, v in pruning.sparsifiers[0].criterion.input_norms.items()}
    assert all(not m._forward_hooks for m in module.modules())
    make_trainer(callbacks=[pruning]).validate(module, toy_loader(seed=2))
    assert all(torch.equal(norms[n], v) for n, v in pruning.sparsifiers[0].criterion.input_norms.items())


@pytest.mark.parametrize("prune_type", ["Wanda", "Movement"])
def test_new_types_score_whole_heads_and_neurons(prune_type: str) -> None:
    """Structured patterns sum each unit's element scores, whatever the criterion (signed ones included)."""
    pruners = [
        Pruner(prune_type=prune_type, pattern="head", target_sparsity_ratio=0.5, step_range=[1, 3]),
        Pruner(prune_type=prune_type, pattern="neuron", target_sparsity_ratio=0.5, step_range=[1, 3]),
    ]
    pruning = PruningCallback(pruners)
    module = TinyBert()
    make_trainer(max_steps=4, callbacks=[pruning]).fit(module, toy_loader())
    heads, neurons = pruning.sparsifiers
    assert heads.pruner.prune_type == prune_type and heads.current_target == 0.5
    for layer in module.model.bert.encoder.layer:  # 4 heads of 8 rows in each layer's query: 2 pruned whole
        rows_pruned = (layer.attention.self.query.weight == 0).all(dim=1).reshape(4, 8)
        assert rows_pruned.all(dim=1).sum() == 2 and (rows_pruned.all(dim=1) | ~rows_pruned.any(dim=1)).all()
        assert (layer.intermediate.dense.weight == 0).all(dim=1).sum() == 32  # half of 64 neurons


@pytest.mark.parametrize("prune_type", ["Gradient", "SnipMomentum", "Movement"])
def test_gradient_types_say_when_a_weight_is_frozen_during_training(prune_type: str) -> None:
    """A weight frozen after fitting started gets no gradient: its scores stop following training, and the next
    mask update says so, naming the weight."""
    frozen = "model.bert.encoder.layer.0.attention.self.query.weight"

    class FreezeAtStep(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
            if trainer.global_step == 2:
                pl_module.get_parameter(frozen).requires_grad_(False)

    pruning = PruningCallback(
        [Pruner(prune_type=prune_type, target_sparsity_ratio=0.5, step_range=[1, 6], names=ENCODER)]
    )
    with pytest.warns(UserWarning, match=rf"prune_type={prune_type!r}: 1 pruned weight\(s\) got no gradient.*{frozen}"):
        make_trainer(max_steps=6, callbacks=[pruning, FreezeAtStep()]).fit(TinyBert(), toy_loader())
    assert pruning.sparsity() == pytest.approx(0.5, abs=1e-3)

"""Masks and targets hold under mixed and low precision, and under ``torch.compile``."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from helpers import TinyBert, make_trainer, toy_loader

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.sparsifier import Sparsifier

#: Three prune types on disjoint weights: stateful scores, a block penalty and plain magnitude.
PRUNERS = [
    Pruner(
        prune_type="SnipMomentum",
        target_sparsity_ratio=0.7,
        step_range=[1, 10],
        update_frequency=3,
        names=[r"attention\.self\.(query|key|value)\.weight"],
    ),
    Pruner(
        prune_type="GroupLasso",
        target_sparsity_ratio=0.5,
        pattern="4x1",
        epoch_range=[0, 1],
        names=[r"intermediate\.dense\.weight", r"layer\.\d+\.output\.dense\.weight"],
        parameters={"alpha": 0.01},
    ),
    Pruner(target_sparsity_ratio=0.6, epoch_range=[0, 1], names=[r"attention\.output\.dense\.weight"]),
]


def assert_masks_hold(pruning: PruningCallback, dtype: torch.dtype) -> None:
    """Every pruned tensor reaches its final target exactly, and its pruned entries are exactly zero."""
    for sparsifier in pruning.sparsifiers:
        pattern = sparsifier.pattern
        block = pattern.rows * pattern.cols
        assert sparsifier.current_target == sparsifier.pruner.target_sparsity_ratio
        for name, mask in sparsifier.masks.items():
            weight = sparsifier.weights[name]
            assert weight.dtype == dtype
            assert mask.dtype == torch.bool and mask.shape == weight.shape
            assert int((~mask).sum()) == round(sparsifier.current_target * mask.numel() / block) * block, name
            assert not weight[~mask].any(), f"pruned entries of {name} are non-zero"


def fit_with_precision(precision: str, accelerator: str = "cpu") -> tuple[TinyBert, PruningCallback]:
    module = TinyBert(lr=1e-2)
    pruning = PruningCallback(PRUNERS)
    trainer = make_trainer(max_epochs=2, precision=precision, accelerator=accelerator, callbacks=[pruning])
    trainer.fit(module, toy_loader())
    return module, pruning


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)])
def test_masks_and_targets_hold_under_precision(precision: str, dtype: torch.dtype) -> None:
    _, pruning = fit_with_precision(precision)
    assert_masks_hold(pruning, dtype)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="fp16 AMP needs CUDA: on CPU Lightning replaces 16-mixed by bf16-mixed, which the test above covers",
)
def test_masks_and_targets_hold_under_fp16_mixed_precision_and_follow_the_model_to_the_cpu() -> None:
    module, pruning = fit_with_precision("16-mixed", accelerator="cuda")
    assert {mask.device.type for s in pruning.sparsifiers for mask in s.masks.values()} == {"cuda"}
    assert module.device.type == "cpu"  # Lightning moves the model back after a fit
    # a further fit of the same model on the CPU keeps the masks, now on the weights' device
    make_trainer(max_epochs=3, accelerator="cpu", callbacks=[pruning]).fit(module, toy_loader())
    assert {mask.device.type for s in pruning.sparsifiers for mask in s.masks.values()} == {"cpu"}
    assert_masks_hold(pruning, torch.float32)


@pytest.mark.parametrize("prune_type", ["SnipMomentum", "Gradient"])
def test_overflowing_fp16_steps_leave_gradient_scores_untouched(prune_type: str) -> None:
    """fp16 AMP starts with a loss scale that overflows: GradScaler skips those steps, and so must the scores."""
    weight = torch.nn.Parameter(torch.randn(4, 8))
    sparsifier = Sparsifier(Pruner(prune_type=prune_type), {"weight": weight})
    weight.grad = torch.randn(4, 8)
    sparsifier.before_optimizer_step()
    scores = sparsifier.criterion.stored["weight"].clone()
    for overflow in (float("inf"), float("nan")):
        weight.grad[1, 2] = overflow
        sparsifier.before_optimizer_step()
        assert torch.equal(sparsifier.criterion.stored["weight"], scores)


def test_the_callback_skips_overflow_steps_only_under_a_grad_scaler() -> None:
    """Without a GradScaler nothing skips a non-finite step, and checking for one would wait for the GPU."""
    module = TinyBert()
    pruning = PruningCallback([Pruner(prune_type="SnipMomentum", names=[r"query\.weight"])])
    trainer = make_trainer()
    pruning.sparsifiers = pruning._bind(module)
    (sparsifier,) = pruning.sparsifiers
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    pruning._clocks = [optimizer]
    for weight in sparsifier.weights.values():
        weight.grad = torch.full_like(weight, float("inf"))
    scaler = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()))
    pruning.on_before_optimizer_step(scaler, module, optimizer)  # type: ignore[arg-type]
    assert not sparsifier.criterion.stored
    assert getattr(trainer.precision_plugin, "scaler", None) is None  # fp32 on the CPU
    pruning.on_before_optimizer_step(trainer, module, optimizer)
    assert sparsifier.criterion.stored.keys() == sparsifier.weights.keys()


def test_fp16_weights_whose_sum_overflows_fp16_still_update() -> None:
    """The non-finite guard at a mask update checks each value: finite fp16 weights may sum past fp16's max."""
    weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 300 * 300).reshape(300, 300).half())
    assert not torch.isfinite(weight.sum())
    sparsifier = Sparsifier(Pruner(target_sparsity_ratio=0.5), {"weight": weight})
    sparsifier.update_masks(0.5)
    assert int((weight == 0).sum()) == 300 * 300 // 2
    assert weight.flatten()[: 300 * 300 // 2].eq(0).all()  # the smallest half went


@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "g++")) is None, reason="torch.compile's inductor needs a C++ compiler"
)
def test_masks_hold_in_a_compiled_module() -> None:
    """The compiled graph reads the weights the callback masks in place, so its output matches eager mode."""
    module = TinyBert(lr=1e-2, num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    compiled = torch.compile(module)
    pruning = PruningCallback([Pruner(target_sparsity_ratio=0.7, step_range=[1, 4], update_frequency=3)])
    make_trainer(max_steps=6, callbacks=[pruning]).fit(compiled, toy_loader())

    assert_masks_hold(pruning, torch.float32)
    module.train()  # train mode with gradients: the graph compiled during fit runs, not a new one
    input_ids = toy_loader().dataset.tensors[0][:8]
    torch.testing.assert_close(compiled(input_ids), module(input_ids))

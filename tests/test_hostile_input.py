"""Invalid configurations and situations: each fails (or warns) with a message that names the culprit and the fix.

One table drives one test. Every row builds something wrong and gives the error (or warning) type and a regular
expression its message must contain. Rows that fit a model fail before the first optimizer step (most in ``setup``),
and the test checks that no weight changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyBert, make_trainer, toy_loader
from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, Strategy, XLAStrategy
from torch import nn

from lightning_sparsity import Pruner, PruningCallback


class NoLinearModule(pl.LightningModule):
    """A model made of embeddings and a norm only: nothing PruningCallback can prune."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(8, 4)
        self.norm = nn.LayerNorm(4)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.norm(self.embedding(batch[0])).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(*pruners: Pruner, module: pl.LightningModule | None = None, **trainer_settings: Any) -> None:
    """Fits a tiny BERT (or ``module``) with ``pruners``; the error must come before any weight changes."""
    module = module or TinyBert()
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    trainer_settings.setdefault("max_epochs", 1)
    try:
        make_trainer(callbacks=[PruningCallback(list(pruners))], **trainer_settings).fit(module, toy_loader(size=16))
    except (ValueError, FloatingPointError):
        for name, p in module.named_parameters():
            assert torch.allclose(p, before[name], rtol=0, atol=0, equal_nan=True), (
                f"{name} changed before the error: it was raised too late"
            )
        raise


def frozen_encoder() -> TinyBert:
    module = TinyBert()
    module.model.bert.encoder.layer[0].attention.self.query.weight.requires_grad_(False)
    return module


def with_nan_weight() -> TinyBert:
    module = TinyBert()
    with torch.no_grad():
        module.model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("nan")
    return module


def setup_under(strategy: Strategy) -> None:
    """Calls ``setup`` as a Trainer with ``strategy`` would (a Trainer refuses FSDP on a CPU-only machine)."""
    trainer = mock.Mock(spec=pl.Trainer, strategy=strategy, max_epochs=1, max_steps=-1)
    PruningCallback().setup(trainer, TinyBert(), "fit")


def resume_with(saved: list[Pruner], resumed: list[Pruner], tmp_path: Path) -> None:
    """Writes a checkpoint with ``saved`` pruners, then resumes it with ``resumed`` ones."""
    trainer = make_trainer(callbacks=[PruningCallback(saved)])
    trainer.fit(TinyBert(), toy_loader(size=16))
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    resumer = make_trainer(max_epochs=2, callbacks=[PruningCallback(resumed)])
    resumer.fit(TinyBert(), toy_loader(size=16), ckpt_path=tmp_path / "run.ckpt", weights_only=True)


def from_yaml(text: str) -> PruningCallback:
    """Builds a PruningCallback from YAML the way LightningCLI does (jsonargparse)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PruningCallback, "pruning")
    return parser.instantiate(parser.parse_string(text)).pruning


EPOCH_RAMP = Pruner(target_sparsity_ratio=0.5, epoch_range=[0, 0])
QUERIES = Pruner(names=["query.weight"], epoch_range=[0, 0])

#: (id, action, expected error or warning type, regular expression its message must contain)
CASES: list[tuple[str, Callable[[Path], Any], type[BaseException], str]] = [
    # Pruner fields out of range or of the wrong type: ValueError on construction.
    ("unknown prune_type", lambda _: Pruner(prune_type="Magnitude"), ValueError, r"prune_type=.*allowed values"),
    ("target 1.0", lambda _: Pruner(target_sparsity_ratio=1.0), ValueError, r"target_sparsity_ratio.*\[0, 1\)"),
    ("negative target", lambda _: Pruner(target_sparsity_ratio=-0.1), ValueError, r"target_sparsity_ratio"),
    ("target NaN", lambda _: Pruner(target_sparsity_ratio=math.nan), ValueError, r"target_sparsity_ratio"),
    ("target as text", lambda _: Pruner(target_sparsity_ratio="0.5"), ValueError, r"target_sparsity_ratio"),
    ("target as bool", lambda _: Pruner(target_sparsity_ratio=True), ValueError, r"target_sparsity_ratio"),
    (
        "initial above target",
        lambda _: Pruner(initial_sparsity_ratio=0.8, target_sparsity_ratio=0.5),
        ValueError,
        r"initial_sparsity_ratio=0.8 is above target_sparsity_ratio=0.5",
    ),
    ("epoch_range reversed", lambda _: Pruner(epoch_range=[3, 1]), ValueError, r"epoch_range must be \[start, end\]"),
    ("epoch_range one value", lambda _: Pruner(epoch_range=[2]), ValueError, r"epoch_range"),
    ("epoch_range negative", lambda _: Pruner(epoch_range=[-1, 2]), ValueError, r"epoch_range.*0 <= start"),
    ("step_range float", lambda _: Pruner(step_range=[0, 1.5]), ValueError, r"step_range.*integers"),
    ("update_frequency 0", lambda _: Pruner(update_frequency=0), ValueError, r"update_frequency.*>= 1"),
    ("update_frequency bool", lambda _: Pruner(update_frequency=True), ValueError, r"update_frequency"),
    ("unknown method", lambda _: Pruner(method="per_row"), ValueError, r"method='per_row'.*'per_channel'"),
    ("unknown schedule", lambda _: Pruner(schedule="quadratic"), ValueError, r"schedule='quadratic'.*'cos'"),
    ("unknown scope", lambda _: Pruner(scope="all"), ValueError, r"scope='all'.*'global'"),
    ("malformed pattern", lambda _: Pruner(pattern="4x"), ValueError, r"pattern='4x' is not valid.*N:M"),
    ("N:M with N >= M", lambda _: Pruner(pattern="4:2"), ValueError, r"pattern='4:2'"),
    (
        "target above N/M",
        lambda _: Pruner(pattern="2:4", target_sparsity_ratio=0.9),
        ValueError,
        r"target_sparsity_ratio=0.9 is above 0.5",
    ),
    (
        "global per_channel",
        lambda _: Pruner(scope="global", method="per_channel"),
        ValueError,
        r'method="per_channel" needs scope="local"',
    ),
    (
        "GroupLasso with N:M",
        lambda _: Pruner(prune_type="GroupLasso", pattern="2:4", target_sparsity_ratio=0.5),
        ValueError,
        r"GroupLasso.*block pattern",
    ),
    ("names as one string", lambda _: Pruner(names="encoder"), ValueError, r"names must be a list"),
    ("names invalid regex", lambda _: Pruner(names=["query("]), ValueError, r"names has an invalid regular expression"),
    ("excluded_names of ints", lambda _: Pruner(excluded_names=[3]), ValueError, r"excluded_names must hold strings"),
    (
        "parameter of another prune type",
        lambda _: Pruner(parameters={"alpha": 1e-4}),
        ValueError,
        r"parameters has unknown key 'alpha' for prune_type='BasicMagnitude'",
    ),
    (
        "momentum 1.5",
        lambda _: Pruner(prune_type="SnipMomentum", parameters={"momentum": 1.5}),
        ValueError,
        r"momentum.*\[0, 1\)",
    ),
    (
        "negative alpha",
        lambda _: Pruner(prune_type="GroupLasso", pattern="4x1", parameters={"alpha": -1.0}),
        ValueError,
        r"parameters\['alpha'\] must be a finite number >= 0",
    ),
    ("parameters not a mapping", lambda _: Pruner(parameters="alpha"), ValueError, r"parameters must be a mapping"),
    # PruningCallback arguments and YAML.
    ("pruners of dicts", lambda _: PruningCallback([{"target_sparsity_ratio": 0.5}]), ValueError, r"pruners\[0\]"),
    ("no pruners", lambda _: PruningCallback([]), ValueError, r"pruners is empty"),
    (
        "YAML unknown Pruner key",
        lambda _: from_yaml("pruning:\n  pruners:\n  - target_sparsity: 0.5\n"),
        ArgumentError,
        r"'target_sparsity' is not accepted",
    ),
    ("YAML unknown callback key", lambda _: from_yaml("pruning:\n  pruner: []\n"), ArgumentError, r"option 'pruner'"),
    (
        "YAML out-of-range value",
        lambda _: from_yaml("pruning:\n  pruners:\n  - target_sparsity_ratio: 1.5\n"),
        ValueError,
        r"target_sparsity_ratio must be a number in \[0, 1\), got 1.5",
    ),
    # Names and models: ValueError in setup, before training.
    ("names match nothing", lambda _: fit(Pruner(names=["decoder.*"])), ValueError, r"'decoder\.\*' matches no"),
    (
        "names match only non-Linear weights",
        lambda _: fit(Pruner(names=["LayerNorm.weight"])),
        ValueError,
        r"matches only parameters that are not Linear/Conv weights",
    ),
    (
        "excluded_names match nothing",
        lambda _: fit(Pruner(excluded_names=["decoder"])),
        ValueError,
        r"excluded_names entry 'decoder' matches no prunable weight",
    ),
    (
        "everything excluded",
        lambda _: fit(Pruner(names=["query.weight"], excluded_names=["query.weight"])),
        ValueError,
        r"pruners\[0\] selects no weight",
    ),
    (
        "overlapping pruners",
        lambda _: fit(Pruner(), Pruner(names=["query.weight"])),
        ValueError,
        r"selected by pruners\[0\] and pruners\[1\]",
    ),
    (
        "no prunable layers",
        lambda _: fit(Pruner(), module=NoLinearModule()),
        ValueError,
        r"NoLinearModule has no prunable",
    ),
    ("pattern does not divide", lambda _: fit(Pruner(pattern="5x1")), ValueError, r"'5x1' does not divide weight"),
    (
        "N:M does not divide",
        lambda _: fit(Pruner(pattern="2:5", target_sparsity_ratio=0.4)),
        ValueError,
        r"'2:5' does not divide weight",
    ),
    (
        "frozen weight",
        lambda _: fit(QUERIES, module=frozen_encoder()),
        ValueError,
        r"'model.bert.*query.weight' is frozen",
    ),
    ("FSDP", lambda _: setup_under(FSDPStrategy()), ValueError, r"does not support strategy .*FSDPStrategy.*ddp"),
    (
        "DeepSpeed",
        lambda _: setup_under(mock.Mock(spec=DeepSpeedStrategy)),
        ValueError,
        r"does not support strategy DeepSpeedStrategy: DeepSpeed keeps fp32 master weights.*ModelParallelStrategy",
    ),
    (
        "XLA",
        lambda _: setup_under(mock.Mock(spec=XLAStrategy)),
        ValueError,
        r"does not support strategy XLAStrategy: XLA strategies are not tested",
    ),
    (
        "unknown strategy",
        lambda _: setup_under(mock.Mock(spec=Strategy)),
        ValueError,
        r"does not support strategy Strategy: it is not among the strategies pruning is tested under",
    ),
    # Schedules that cannot finish: a warning before the first step.
    (
        "epoch_range past max_epochs",
        lambda _: fit(Pruner(epoch_range=[0, 3]), max_epochs=2),
        UserWarning,
        r"epoch_range=\[0, 3\] ends at or after the last epoch \(max_epochs=2",
    ),
    (
        "max_steps too small for step_range",
        lambda _: fit(Pruner(step_range=[0, 10]), max_steps=4),
        UserWarning,
        r"step_range=\[0, 10\] ends after max_steps=4",
    ),
    (
        "max_epochs too few for step_range",
        lambda _: fit(Pruner(step_range=[0, 10]), max_epochs=2),
        UserWarning,
        r"step_range=\[0, 10\] ends after the run's last optimizer step \(4: max_epochs=2 of 2 batches\).*max_epochs",
    ),
    # Situations met while running.
    (
        "non-finite weight at a mask update",
        lambda _: fit(EPOCH_RAMP, module=with_nan_weight()),
        FloatingPointError,
        r"'model.bert.encoder.layer.1.output.dense.weight' holds NaN.*gradient clipping",
    ),
    (
        "checkpoint of another target",
        lambda tmp_path: resume_with([EPOCH_RAMP], [Pruner(target_sparsity_ratio=0.6, epoch_range=[0, 0])], tmp_path),
        ValueError,
        r"different pruning configuration.*pruners\[0\]\.target_sparsity_ratio was 0.5 and is now 0.6",
    ),
    (
        "checkpoint of more pruners",
        lambda tmp_path: resume_with([QUERIES, Pruner(names=["key.weight"])], [QUERIES], tmp_path),
        ValueError,
        r"the checkpoint has 2 pruners, this callback 1",
    ),
]


@pytest.mark.parametrize(("action", "expected", "message"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_invalid_input_fails_clearly(
    action: Callable[[Path], Any], expected: type[BaseException], message: str, tmp_path: Path
) -> None:
    if issubclass(expected, Warning):
        with pytest.warns(expected, match=message):
            action(tmp_path)
    else:
        with pytest.raises(expected, match=message):
            action(tmp_path)

"""Intel Neural Compressor 3.7.1 in the SST-2 study: run in its own virtual environment by benchmarks.accuracy.

INC's training-time pruner is driven from a Lightning callback through ``prepare_compression(...).callbacks``,
its after-step hook on the optimizer's step post-hook (so gradient accumulation counts right). Prints one
JSON line per sparsity, at ``settings['lr']``.

    LOGLEVEL=WARNING /work/inc-venv/bin/python -m benchmarks.accuracy_inc '<settings json>' 0.8 0.9
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from benchmarks.common import SCHEDULE, SST2Classifier, ramp_end, run_sst2

os.environ.setdefault("LOGLEVEL", "WARNING")


class IncPruning(Callback):
    """Routes Lightning's hooks to INC's compression callbacks (snip_momentum, global, 1x1, exp decay)."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.manager: Any = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from neural_compressor.training import prepare_compression

        self.manager = prepare_compression(pl_module.model, self.config)
        self.manager.callbacks.on_train_begin()
        trainer.optimizers[0].register_step_post_hook(lambda *_: self.manager.callbacks.on_after_optimizer_step())

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.manager.callbacks.on_epoch_begin(trainer.current_epoch)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.manager.callbacks.on_step_begin(idx)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.manager.callbacks.on_before_optimizer_step()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.manager.callbacks.on_step_end()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.manager.callbacks.on_epoch_end()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.manager.callbacks.on_train_end()


def inc_callbacks(settings: dict[str, Any], sparsity: float) -> list[Callback]:
    from neural_compressor.training import WeightPruningConfig

    config = WeightPruningConfig(
        pruning_configs=[{"op_names": ["encoder"]}],
        target_sparsity=sparsity,
        pruning_type="snip_momentum",
        pattern="1x1",
        pruning_scope="global",
        start_step=0,
        end_step=ramp_end(settings),
        pruning_frequency=settings["update_frequency"],
        sparsity_decay_type=SCHEDULE,
        max_sparsity_ratio_per_op=settings["layer_cap"],
    )
    return [IncPruning(config)]


def main() -> None:
    settings = json.loads(sys.argv[1])
    for sparsity in map(float, sys.argv[2:]):

        def callbacks(module: SST2Classifier, target: float = sparsity) -> list[Callback]:
            return inc_callbacks(settings, target)

        print(
            json.dumps({"system": "Intel Neural Compressor 3.7.1", "target": sparsity, **run_sst2(settings, callbacks)})
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()

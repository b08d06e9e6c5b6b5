"""``PruningCallback``: routes Lightning's training hooks to the sparsifiers of its pruners."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim import Optimizer
from typing_extensions import override

from lightning_sparsity.config import PruningConfig
from lightning_sparsity.layers import select_weights
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import LayerSparsity, SparsityReport
from lightning_sparsity.sparsifier import Sparsifier
from lightning_sparsity.structure import structured_groups

_STATE_FORMAT = 2  # 2: masks packed 8 to a byte; 1: boolean masks, still read
_READABLE_FORMATS = (1, 2)
#: Strategies that shard or re-create the weights, so masks bound at ``setup`` would miss them.
_SHARDING_STRATEGIES = (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)


class PruningCallback(Callback):
    """Makes a model sparse while it trains, following one or more :class:`Pruner` rules.

    Hook timeline (per fit):

    - ``setup``: resolves each pruner's ``names`` to weights; bad names, overlaps, frozen or
      indivisible weights fail here, before any step;
    - ``on_train_start``: restores checkpointed masks, locks PatternLock zeros, applies step-0 updates;
    - ``on_train_epoch_start``: mask updates of epoch-counted pruners;
    - ``on_before_optimizer_step``: gradient scores and group-lasso penalties;
    - ``on_train_batch_end`` (after each optimizer step): step-counted mask updates, then masks are
      re-applied in place so pruned weights stay exactly zero, and ``pruning/sparsity`` is logged.

    Args:
        pruners: the pruning rules, each on its own weights. ``None`` means one default ``Pruner()``.
        state_key_suffix: distinguishes the checkpoint state of several PruningCallbacks in one Trainer.
        config: a classic :class:`PruningConfig` whose pruners to use, instead of ``pruners``.
    """

    def __init__(
        self,
        pruners: Optional[list[Pruner]] = None,
        state_key_suffix: str = "",
        config: Optional[PruningConfig] = None,
    ) -> None:
        if config is not None:
            if pruners is not None:
                raise ValueError("PruningCallback got both pruners and config: give one of them")
            pruners = config.pruners
        pruners = [Pruner()] if pruners is None else list(pruners)
        for index, pruner in enumerate(pruners):
            if not isinstance(pruner, Pruner):
                raise ValueError(
                    f"PruningCallback.pruners[{index}] must be a Pruner (or a mapping of Pruner fields in YAML), "
                    f"got {type(pruner).__name__}"
                )
        if not pruners:
            raise ValueError("PruningCallback.pruners is empty: give at least one Pruner")
        self.pruners = pruners
        self.state_key_suffix = state_key_suffix
        self.sparsifiers: list[Sparsifier] = []
        self._restored: Optional[dict[str, Any]] = None
        self._seen_step = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(suffix=self.state_key_suffix) if self.state_key_suffix else "PruningCallback"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, _SHARDING_STRATEGIES):
            raise ValueError(
                f"PruningCallback does not support strategy {type(trainer.strategy).__name__}: it shards the weights "
                'the masks are bound to; use a single device or strategy="ddp" / "ddp_spawn" / "ddp_fork"'
            )
        parameters = dict(pl_module.named_parameters())
        if self.sparsifiers and all(
            s.weights[name] is parameters.get(name) for s in self.sparsifiers for name in s.weights
        ):
            return  # a further fit of the same model keeps its masks
        self.sparsifiers = self._bind(pl_module)
        self._warn_if_epoch_ramp_outlasts(trainer)
        for index, sparsifier in enumerate(self.sparsifiers):
            rank_zero_info(
                f"PruningCallback: pruner {index} ({sparsifier.pruner.prune_type}, target "
                f"{sparsifier.final_target:.2%}) prunes {len(sparsifier.weights)} weights, {sparsifier.numel:,} values"
            )

    def _bind(self, pl_module: pl.LightningModule) -> list[Sparsifier]:
        owners: dict[str, int] = {}
        sparsifiers = []
        for index, pruner in enumerate(self.pruners):
            structured = pruner.parsed_pattern.is_structured
            # empty names select every head / FFN neuron, even in the model's last Linear
            names = pruner.names or ([".*"] if structured else [])
            weights = select_weights(pl_module, names, pruner.excluded_names)
            groups = []
            if structured:  # whole heads / FFN neurons, bound across their weights
                groups = structured_groups(pl_module, pruner.pattern, weights, explicit=bool(pruner.names))
                weights = {name: weights[name] for group in groups for name in group.names}
            if not weights:
                raise ValueError(
                    f"pruners[{index}] selects no weight once excluded_names are removed; loosen its names"
                )
            for name in weights:
                if name in owners:
                    raise ValueError(
                        f"weight {name!r} is selected by pruners[{owners[name]}] and pruners[{index}]: each weight "
                        "may have one pruner; narrow names or add excluded_names"
                    )
                owners[name] = index
            sparsifiers.append(Sparsifier(pruner, weights, groups))
        return sparsifiers

    def _warn_if_epoch_ramp_outlasts(self, trainer: pl.Trainer) -> None:
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            return
        for index, pruner in enumerate(self.pruners):
            if pruner.step_range is None and pruner.prune_type != "PatternLock":
                if pruner.epoch_range[1] >= trainer.max_epochs:
                    rank_zero_warn(
                        f"pruners[{index}].epoch_range={pruner.epoch_range} ends at or after the last epoch "
                        f"(max_epochs={trainer.max_epochs} runs epochs 0..{trainer.max_epochs - 1}); the target is "
                        "reached at the start of the range's last epoch, so it will not be reached: lower epoch_range "
                        "or raise max_epochs"
                    )

    def _warn_if_step_ramp_outlasts(self, trainer: pl.Trainer) -> None:
        """Step ramps against the run's last optimizer step, known once the data is loaded."""
        if trainer.max_steps >= 0:
            last, where, fix = trainer.max_steps, f"max_steps={trainer.max_steps}", "max_steps"
        else:
            last = trainer.estimated_stepping_batches
            where = (
                f"the run's last optimizer step ({last:g}: max_epochs={trainer.max_epochs} of "
                f"{trainer.num_training_batches} batches)"
            )
            fix = "max_epochs"
        for index, pruner in enumerate(self.pruners):
            if pruner.step_range is not None and pruner.step_range[1] > last:
                rank_zero_warn(
                    f"pruners[{index}].step_range={pruner.step_range} ends after {where}; the target will not be "
                    f"reached: lower step_range or raise {fix}"
                )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warn_if_step_ramp_outlasts(trainer)
        if self._restored is not None:
            for sparsifier, state in zip(self.sparsifiers, self._restored["states"], strict=True):
                sparsifier.load_state_dict(state)
            self._restored = None
        for sparsifier in self.sparsifiers:
            sparsifier.follow_weights()
            if sparsifier.pruner.prune_type == "PatternLock":
                sparsifier.lock_existing_zeros()
            elif sparsifier.counts_steps:
                sparsifier.step(trainer.global_step)
            sparsifier.apply_masks()
        self._seen_step = trainer.global_step

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sparsifier in self.sparsifiers:
            if not sparsifier.counts_steps:
                sparsifier.step(trainer.current_epoch)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        grad_scaler = getattr(trainer.precision_plugin, "scaler", None) is not None  # fp16 AMP skips overflow steps
        for sparsifier in self.sparsifiers:
            sparsifier.before_optimizer_step(skip_non_finite=grad_scaler)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._seen_step:
            return  # no optimizer step this batch (gradient accumulation)
        self._seen_step = trainer.global_step
        for sparsifier in self.sparsifiers:
            if not (sparsifier.counts_steps and sparsifier.step(trainer.global_step)):
                sparsifier.apply_masks()
        # CPU tensors: a Python number would be copied to the GPU, which waits for the GPU at every step
        pl_module.log(
            "pruning/sparsity", torch.tensor(self.mask_sparsity()), prog_bar=True, on_step=True, on_epoch=False
        )
        pl_module.log("pruning/target", torch.tensor(self.current_target()), on_step=True, on_epoch=False)

    def mask_sparsity(self) -> float:
        """Overall fraction of masked-out weights across all pruners (cheap: reads the masks only)."""
        return self._weighted_by_size([s.mask_sparsity() for s in self.sparsifiers])

    def current_target(self) -> float:
        """The current scheduled sparsity, averaged over pruners by their number of weights."""
        return self._weighted_by_size([s.current_target for s in self.sparsifiers])

    def _weighted_by_size(self, values: list[float]) -> float:
        """The mean of one value per sparsifier, weighted by how many weights each prunes."""
        numel = sum(s.numel for s in self.sparsifiers)
        return sum(v * s.numel for v, s in zip(values, self.sparsifiers, strict=True)) / numel if numel else 0.0

    def sparsity(self) -> float:
        """Overall fraction of zeros in the pruned weights, measured on the weights themselves."""
        return self.report().sparsity

    def report(self) -> SparsityReport:
        """One row per pruned weight: name, shape, measured sparsity, current and final target."""
        return SparsityReport(
            LayerSparsity(
                name=name,
                shape=tuple(weight.shape),
                numel=weight.numel(),
                zeros=int((weight == 0).sum()),
                target=sparsifier.current_target,
                final_target=sparsifier.final_target,
            )
            for sparsifier in self.sparsifiers
            for name, weight in sparsifier.weights.items()
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._restored is not None:  # restored but not applied yet (e.g. training skipped): still the run's state
            return self._restored
        return {
            "format": _STATE_FORMAT,
            "pruners": [asdict(p) for p in self.pruners],
            "states": [s.state_dict() for s in self.sparsifiers],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("format") not in _READABLE_FORMATS:
            raise ValueError(
                f"PruningCallback state has format {state_dict.get('format')!r}, expected one of {_READABLE_FORMATS}: "
                "the checkpoint was written by another version of lightning-sparsity"
            )
        saved = state_dict["pruners"]
        current = [asdict(p) for p in self.pruners]
        if saved != current:
            raise ValueError(
                "the checkpoint was written with a different pruning configuration, so its masks cannot be "
                f"resumed: {_describe_difference(saved, current)}. Resume with the same pruners, or load the "
                "weights alone (LightningModule.load_state_dict) to start a new pruning run from them"
            )
        self._restored = state_dict


def _describe_difference(saved: list[dict], current: list[dict]) -> str:
    if len(saved) != len(current):
        return f"the checkpoint has {len(saved)} pruners, this callback {len(current)}"
    for index, (old, new) in enumerate(zip(saved, current, strict=True)):
        for key in new:
            if old.get(key) != new[key]:
                return f"pruners[{index}].{key} was {old.get(key)!r} and is now {new[key]!r}"
    return "the pruners differ"

"""``PruningCallback``: routes Lightning's training hooks to the sparsifiers of its pruners."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Optional, Union, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
    SingleDeviceXLAStrategy,
    Strategy,
    XLAStrategy,
)
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_sparsity.config import PruningConfig
from lightning_sparsity.layers import owning_module, select_weights, tied_names
from lightning_sparsity.numbers import is_integer
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import SparsityReport
from lightning_sparsity.sparsifier import Sparsifier
from lightning_sparsity.structure import structured_groups

_STATE_FORMAT = 3  # 3: prune-type state apart, step counts; 2: masks packed 8 to a byte; 1: boolean masks
_READABLE_FORMATS = (1, 2, 3)
#: The strategies pruning is tested under (docs/reliability.md, "Strategies"); any other is refused at ``setup``.
_SUPPORTED_STRATEGIES = (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy)
#: Strategies refused with the reason: they keep copies of the weights that the masks would not reach.
_REFUSED_STRATEGIES = {
    DeepSpeedStrategy: "DeepSpeed keeps fp32 master weights (and, in ZeRO-3, the parameters) outside the module, "
    "where the masks are not applied",
    FSDPStrategy: "FSDP1 flattens the weights into FlatParameters split mid-row, and Lightning runs it on GPUs only, "
    "where this path is not tested",
    XLAStrategy: "XLA strategies are not tested",
    SingleDeviceXLAStrategy: "XLA strategies are not tested",
}


class PruningCallback(Callback):
    """Makes a model sparse while it trains, following one or more :class:`Pruner` rules.

    Hook timeline (per fit):

    - ``on_fit_start`` (after ``configure_model`` and after the strategy has set the model up): resolves each
      pruner's ``names`` to the weights of the model as it will train, as (module, parameter name) pairs; bad
      names, overlaps (also with another PruningCallback), frozen or indivisible weights fail here, before any
      step; restores checkpointed masks and registers a post-hook on every optimizer;
    - ``on_train_start``: restores checkpointed masks where the strategy restores checkpoints after ``on_fit_start``
      (``ModelParallelStrategy``), locks PatternLock zeros, applies step-0 updates;
    - ``on_train_epoch_start``: mask updates of epoch-counted pruners;
    - ``on_before_optimizer_step``: the pruners of that optimizer's weights count the step and read its gradients;
    - right after every optimizer step (the optimizer's post-hook, in automatic and manual optimization alike):
      step-counted mask updates, then masks are re-applied in place so pruned weights stay exactly zero;
    - ``on_train_batch_end``: ``pruning/sparsity`` and ``pruning/target`` are logged when they change and at the
      trainer's ``log_every_n_steps``.

    A step-counted ramp counts the steps of the first optimizer that holds one of the pruner's weights: with one
    optimizer that is ``trainer.global_step``; with several (manual optimization), each pruner follows its own.

    Strategies: a single device, DDP, and FSDP2 (``ModelParallelStrategy``), where weights split by rows keep masks
    for their local rows and :meth:`report` is collective; others are refused at ``setup`` (docs/reliability.md).

    Args:
        pruners: the pruning rules, each on its own weights: a list, or one :class:`Pruner`; ``None`` means one
            default ``Pruner()``.
        state_key_suffix: distinguishes the checkpoint state of several PruningCallbacks in one Trainer.
        config: a classic :class:`PruningConfig` whose pruners to use, instead of ``pruners``.
        calibration_samples: training samples that one-shot pruners (``step_range=[0, 0]`` with SparseGPT, Wanda or
            BasicMagnitude) calibrate on before the first step; fewer available is a warning.

    One-shot pruners run :func:`lightning_sparsity.oneshot.prune_one_shot` on the LightningModule when training
    starts, on rank zero (the masks and weights are then broadcast), calling ``pl_module.calibration_step(batch)``
    when the module defines it, else ``pl_module(**batch)`` for a mapping and ``pl_module(*batch)`` for a tuple; the
    masks then stay fixed while training goes on (one-shot + sparse fine-tuning).
    """

    def __init__(
        self,
        pruners: Union[list[Pruner], Pruner, None] = None,
        state_key_suffix: str = "",
        config: Optional[PruningConfig] = None,
        calibration_samples: int = 128,
    ) -> None:
        if not is_integer(calibration_samples) or calibration_samples < 1:
            raise ValueError(
                f"PruningCallback.calibration_samples must be an integer >= 1, got {calibration_samples!r}"
            )
        self.calibration_samples = int(calibration_samples)
        if config is not None:
            if pruners is not None:
                raise ValueError("PruningCallback got both pruners and config: give one of them")
            pruners = config.pruners
        if isinstance(pruners, Pruner):
            pruners = [pruners]
        if pruners is not None and not isinstance(pruners, (list, tuple)):
            raise ValueError(
                f"PruningCallback.pruners must be a Pruner or a list of Pruner, got {type(pruners).__name__}"
            )
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
        self._clocks: list[Optional[Optimizer]] = []  # per sparsifier: the optimizer whose steps it counts
        self._hooks: list[RemovableHandle] = []
        self._slots: list[tuple[Sparsifier, str, dict[str, Any], str, nn.Parameter]] = []
        self._logged: Optional[tuple[float, float]] = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(suffix=self.state_key_suffix) if self.state_key_suffix else "PruningCallback"

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            _check_strategy(trainer.strategy)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._bound_to(pl_module):
            for sparsifier in self.sparsifiers:
                sparsifier.criterion.detach()
            self.sparsifiers = self._bind(pl_module)
            self._warn_if_epoch_ramp_outlasts(trainer)
            for index, sparsifier in enumerate(self.sparsifiers):
                for name, reachable in sparsifier.unreachable_targets().items():
                    rank_zero_warn(
                        f"pruners[{index}] cannot prune {name!r} to {sparsifier.final_target:g} in whole units of "
                        f"pattern={sparsifier.pruner.pattern!r}: it will reach {reachable:.4g}; pick a pattern whose "
                        "units divide the weight more finely, or a target it can reach"
                    )
                rank_zero_info(
                    f"PruningCallback: pruner {index} ({sparsifier.pruner.prune_type}, target "
                    f"{sparsifier.final_target:.2%}) prunes {len(sparsifier.weights)} weights, "
                    f"{sparsifier.numel:,} values"
                )
        self._check_no_other_callback_prunes(trainer)
        self._load_restored(trainer)
        for sparsifier in self.sparsifiers:
            sparsifier.follow_weights()
            sparsifier.criterion.attach()
        self._hook_optimizers(trainer)

    def _load_restored(self, trainer: pl.Trainer) -> None:
        """Hands checkpointed state to the sparsifiers: at ``on_fit_start``, or at ``on_train_start`` under
        strategies that restore checkpoints after ``on_fit_start`` (FSDP2's ModelParallelStrategy)."""
        if self._restored is None:
            return
        for sparsifier, state in zip(self.sparsifiers, self._restored["states"], strict=True):
            sparsifier.load_state_dict(state, steps_taken=trainer.global_step)  # on the weights' devices
        self._restored = None

    def _bound_to(self, pl_module: pl.LightningModule) -> bool:
        """Whether the sparsifiers hold this model's weights already (a further fit of the same model keeps its
        masks), found by identity so that tied weights (one parameter, two names) count once."""
        if not self.sparsifiers:
            return False
        parameters = {id(p) for p in pl_module.parameters()}
        return all(id(w) in parameters for s in self.sparsifiers for w in s.weights.values())

    def _bind(self, model: nn.Module) -> list[Sparsifier]:
        owners: dict[int, tuple[int, str]] = {}
        sparsifiers = []
        for index, pruner in enumerate(self.pruners):
            structured = pruner.parsed_pattern.is_structured
            # empty names select every head / FFN neuron, even in the model's last Linear
            names = pruner.names or ([".*"] if structured else [])
            weights = select_weights(model, names, pruner.excluded_names)
            groups = []
            if structured:  # whole heads / FFN neurons, bound across their weights
                structure = pruner.parsed_pattern.structure  # type: ignore[attr-defined]
                groups = structured_groups(model, structure, weights, explicit=bool(pruner.names))
                weights = {name: weights[name] for group in groups for name in group.names}
            if not weights:
                raise ValueError(
                    f"pruners[{index}] selects no weight once excluded_names are removed; loosen its names"
                )
            for name, weight in weights.items():
                if id(weight) in owners:
                    other, other_name = owners[id(weight)]
                    alias = "" if other_name == name else f" (tied to {other_name!r})"
                    raise ValueError(
                        f"weight {name!r}{alias} is selected by pruners[{other}] and pruners[{index}]: "
                        "each weight may have one pruner; narrow names or add excluded_names"
                    )
                owners[id(weight)] = (index, name)
            _warn_about_ties(model, weights)
            modules = {name: owning_module(model, name) for name in weights}
            sparsifiers.append(Sparsifier(pruner, weights, groups, modules))
        return sparsifiers

    def _check_no_other_callback_prunes(self, trainer: pl.Trainer) -> None:
        mine = {id(w): name for s in self.sparsifiers for name, w in s.weights.items()}
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if other is self or not isinstance(other, PruningCallback):
                continue
            for sparsifier in other.sparsifiers:
                for weight in sparsifier.weights.values():
                    if id(weight) in mine:
                        raise ValueError(
                            f"weight {mine[id(weight)]!r} is pruned by two PruningCallbacks ({other.state_key!r} and "
                            f"{self.state_key!r}): give each weight one pruner, in one callback or with excluded_names"
                        )

    def _hook_optimizers(self, trainer: pl.Trainer) -> None:
        """Finds each sparsifier's clock (the first optimizer holding one of its weights) and registers the
        post-step hook that keeps the masks on every optimizer."""
        for handle in self._hooks:
            handle.remove()
        optimizers = [getattr(o, "_optimizer", o) for o in trainer.optimizers]
        held = [{id(p) for group in o.param_groups for p in group["params"]} for o in optimizers]
        self._clocks = []
        for index, sparsifier in enumerate(self.sparsifiers):
            ids = {id(w) for w in sparsifier.weights.values()}
            clock = next((o for o, params in zip(optimizers, held, strict=True) if ids & params), None)
            if clock is None and optimizers:
                raise ValueError(
                    f"pruners[{index}]'s weights are in no optimizer (e.g. {next(iter(sparsifier.weights))!r}): they "
                    "would never train; add them to configure_optimizers or exclude them with Pruner.excluded_names"
                )
            self._clocks.append(clock)
        self._hooks = [o.register_step_post_hook(self._after_optimizer_step) for o in optimizers]
        self._slots = _slots(self.sparsifiers)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        for sparsifier in self.sparsifiers:
            sparsifier.criterion.detach()

    def _warn_if_epoch_ramp_outlasts(self, trainer: pl.Trainer) -> None:
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            return
        for index, pruner in enumerate(self.pruners):
            if pruner.step_range is None and pruner.prune_type_class.follows_schedule:
                if cast(list[int], pruner.epoch_range)[1] >= trainer.max_epochs:
                    rank_zero_warn(
                        f"pruners[{index}].epoch_range={pruner.epoch_range} ends at or after the last epoch "
                        f"(max_epochs={trainer.max_epochs} runs epochs 0..{trainer.max_epochs - 1}); the target is "
                        "reached at the start of the range's last epoch, so it will not be reached: lower epoch_range "
                        "or raise max_epochs"
                    )

    def _warn_if_step_ramp_outlasts(self, trainer: pl.Trainer) -> None:
        """Step ramps against the run's last optimizer step, known once the data is loaded."""
        last: float
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
        self._load_restored(trainer)
        self._warn_if_step_ramp_outlasts(trainer)
        for sparsifier in self.sparsifiers:
            if not sparsifier.criterion.follows_schedule:
                sparsifier.lock_existing_zeros()
            elif sparsifier.is_one_shot and sparsifier.last_update is None:
                self._prune_one_shot(trainer, pl_module, sparsifier)
            elif sparsifier.counts_steps:
                sparsifier.step(sparsifier.steps)
            sparsifier.apply_masks()

    def _prune_one_shot(self, trainer: pl.Trainer, pl_module: pl.LightningModule, sparsifier: Sparsifier) -> None:
        """Calibrates on training batches and prunes once (rank zero, then broadcast to every rank)."""
        result: Optional[tuple[dict[str, Tensor], dict[str, Tensor]]] = None
        if trainer.is_global_zero:
            from lightning_sparsity.oneshot import default_forward, prune_one_shot

            step = getattr(pl_module, "calibration_step", None)
            masks = prune_one_shot(
                pl_module,
                self._calibration_batches(trainer, pl_module),
                prune_type=sparsifier.criterion.one_shot,  # type: ignore[arg-type]
                sparsity=sparsifier.target,
                pattern=sparsifier.pruner.pattern,
                method=sparsifier.pruner.method,
                names=[re.escape(name) for name in sparsifier.weights],
                forward=(lambda _, batch: step(batch)) if callable(step) else default_forward,
                parameters=sparsifier.pruner.parameters if sparsifier.criterion.one_shot == "SparseGPT" else None,
            )
            result = (masks, {name: w.detach() for name, w in sparsifier.weights.items()})
        masks, weights = cast(tuple[dict[str, Tensor], dict[str, Tensor]], trainer.strategy.broadcast(result, src=0))
        if trainer.world_size > 1:  # the other ranks take rank zero's pruned (and, for SparseGPT, moved) weights
            with torch.no_grad():
                for name, weight in sparsifier.weights.items():
                    weight.copy_(weights[name])
        sparsifier.masks = {name: masks[name].to(sparsifier.weights[name].device) for name in sparsifier.weights}
        sparsifier.current_target, sparsifier.last_update = sparsifier.target, 0
        rank_zero_info(
            f"PruningCallback: pruned {len(sparsifier.weights)} weights to {sparsifier.target:.2%} in one shot "
            f"({sparsifier.pruner.prune_type}); their masks stay fixed from now on"
        )

    def _calibration_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Any]:
        """The first training batches holding ``calibration_samples`` samples, on the module's device."""
        batches, samples = [], 0
        for batch in trainer.train_dataloader:  # type: ignore[union-attr]
            batches.append(pl_module.transfer_batch_to_device(batch, pl_module.device, 0))
            samples += _batch_size(batch)
            if samples >= self.calibration_samples:
                break
        if samples < self.calibration_samples:
            rank_zero_warn(
                f"PruningCallback.calibration_samples={self.calibration_samples}, but the training data holds "
                f"{samples} samples: one-shot pruning calibrates on those"
            )
        return batches

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sparsifier in self.sparsifiers:
            if not sparsifier.counts_steps:
                sparsifier.step(trainer.current_epoch)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        grad_scaler = getattr(trainer.precision_plugin, "scaler", None) is not None  # fp16 AMP skips overflow steps
        for sparsifier, clock in zip(self.sparsifiers, self._clocks, strict=True):
            if clock is optimizer:
                sparsifier.steps += 1  # skipped fp16 overflow steps count, as the trainer's global step counts them
                sparsifier.before_optimizer_step(skip_non_finite=grad_scaler)

    def _after_optimizer_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        """Right after any optimizer step: follows re-created parameters, updates masks that are due, and re-applies
        the masks so that no forward pass sees a pruned weight."""
        self._follow_new_parameters()
        for sparsifier, clock in zip(self.sparsifiers, self._clocks, strict=True):
            if not (clock is optimizer and sparsifier.counts_steps and sparsifier.step(sparsifier.steps)):
                sparsifier.apply_masks()

    def _follow_new_parameters(self) -> None:
        """Rebinds the sparsifiers whose modules now hold another parameter than the one bound (cheap when none)."""
        replaced = [
            (s, name, now)
            for s, name, held, attribute, weight in self._slots
            if (now := held.get(attribute)) is not weight
        ]
        if not replaced:
            return
        for sparsifier, name, now in replaced:
            if now is None:
                raise ValueError(
                    f"weight {name!r} was removed from its module during pruning; remove its pruner instead, or "
                    "exclude it with Pruner.excluded_names"
                )
            sparsifier.rebind({name: now})
        self._slots = _slots(self.sparsifiers)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        values = (self.mask_sparsity(), self.current_target())
        every = max(trainer.log_every_n_steps, 1)  # type: ignore[attr-defined]
        if values == self._logged and trainer.global_step % every:
            return  # nothing new to show: Lightning's logging costs more host time than the rest of the step's pruning
        self._logged = values
        # CPU tensors: a Python number would be copied to the GPU, which waits for the GPU at every step
        pl_module.log("pruning/sparsity", torch.tensor(values[0]), prog_bar=True, on_step=True, on_epoch=False)
        pl_module.log("pruning/target", torch.tensor(values[1]), on_step=True, on_epoch=False)

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
        self._follow_new_parameters()
        return SparsityReport(row for sparsifier in self.sparsifiers for row in sparsifier.report_rows())

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


def _check_strategy(strategy: Strategy) -> None:
    """Refuses a strategy that pruning is not tested under, naming the ones it is."""
    name = strategy.__class__.__name__
    reason = next((why for kind, why in _REFUSED_STRATEGIES.items() if isinstance(strategy, kind)), None)
    if reason is None and not isinstance(strategy, _SUPPORTED_STRATEGIES):
        reason = "it is not among the strategies pruning is tested under"
    if reason is not None:
        raise ValueError(
            f"PruningCallback does not support strategy {name}: {reason}. Use a single device, "
            'strategy="ddp" / "ddp_spawn" / "ddp_fork", or ModelParallelStrategy (FSDP2: fully_shard in '
            "configure_model) to shard the model"
        )


def _describe_difference(saved: list[dict], current: list[dict]) -> str:
    if len(saved) != len(current):
        return f"the checkpoint has {len(saved)} pruners, this callback {len(current)}"
    for index, (old, new) in enumerate(zip(saved, current, strict=True)):
        for key in new:
            if old.get(key) != new[key]:
                return f"pruners[{index}].{key} was {old.get(key)!r} and is now {new[key]!r}"
    return "the pruners differ"


def _batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (1 when it holds none)."""
    tensors = (
        list(batch.values())
        if isinstance(batch, dict)
        else list(batch)
        if isinstance(batch, (list, tuple))
        else [batch]
    )
    return next((int(t.shape[0]) for t in tensors if isinstance(t, Tensor) and t.dim()), 1)


def _warn_about_ties(model: nn.Module, weights: dict[str, nn.Parameter]) -> None:
    """Tied weights are one parameter, pruned once; say so, and loudly when the tie reaches an embedding."""
    for name, others in tied_names(model, weights).items():
        embeddings = [o for o in others if isinstance(owning_module(model, o), nn.Embedding)]
        if embeddings:
            rank_zero_warn(
                f"weight {name!r} is tied to the embedding {embeddings[0]!r}: pruning it prunes the input embeddings "
                "too (one parameter); exclude it with Pruner.excluded_names to keep the embeddings dense"
            )
        else:
            rank_zero_info(f"PruningCallback: weight {name!r} is tied to {others}; it is pruned once, as one parameter")


def _slots(sparsifiers: list[Sparsifier]) -> list[tuple[Sparsifier, str, dict[str, Any], str, nn.Parameter]]:
    """Where each bound weight lives: its module's parameter dict and attribute, beside the parameter bound, so that
    a step can tell cheaply whether the model re-created one."""
    return [
        (sparsifier, name, sparsifier.modules[name]._parameters, name.rpartition(".")[2], weight)
        for sparsifier in sparsifiers
        for name, weight in sparsifier.weights.items()
    ]

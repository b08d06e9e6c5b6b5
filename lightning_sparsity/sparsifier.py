"""``Sparsifier``: one ``Pruner`` bound to the weights it selected, holding their masks and schedule position."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_sparsity.functional.bits import pack_bits, unpack_bits
from lightning_sparsity.functional.criteria import all_finite
from lightning_sparsity.functional.patterns import pattern_masks
from lightning_sparsity.functional.schedules import last_update_point, ramp_progress, scheduled_sparsity
from lightning_sparsity.functional.selection import LOCAL, Selection
from lightning_sparsity.functional.sharded_selection import ShardedSelection
from lightning_sparsity.layers import as_out_in
from lightning_sparsity.prune_types.base import prune_type_class, prune_types
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import LayerSparsity
from lightning_sparsity.sharding import check_tiling, gathered, local_rows, local_view, row_shard
from lightning_sparsity.structure import StructuredGroup, structured_masks

#: Weights of at most this many values (a rank's shard counts by its whole weight) keep their pruned positions as
#: 1.0 in their own dtype for the per-step ``lerp`` towards zero (at most 4 bytes a value more, for these small
#: weights only): their cost is the call, not the arithmetic.
SMALL_WEIGHT = 1 << 16


class Sparsifier:
    """Keeps boolean masks (True = kept) for a pruner's weights and applies them in place.

    The pruner's prune type (``criterion``) scores the weights; the schedule is counted in optimizer steps
    (``steps``, of the optimizer that holds the weights) when the pruner has a ``step_range``, else in epochs.
    Masks only grow sparser: a pruned weight stays pruned. With ``groups`` (``head``/``channel`` patterns),
    whole units of the groups are scored and pruned together across their weights.

    Weights split across processes by rows (FSDP2's DTensor parameters) keep masks and the prune type's state for
    their local rows only (``local``), and the selection spans all processes: the same masks as one process on the
    whole weights. Mask updates, :meth:`report_rows`, :meth:`state_dict` and :meth:`load_state_dict` are then
    collective (every process calls them).
    """

    def __init__(
        self,
        pruner: Pruner,
        weights: dict[str, nn.Parameter],
        groups: Sequence[StructuredGroup] = (),
        modules: Optional[Mapping[str, nn.Module]] = None,
    ) -> None:
        self.pruner = pruner
        self.weights = weights
        self.shards = {name: row_shard(name, weight) for name, weight in weights.items()}  # None: held whole
        self.sharded = any(shard is not None for shard in self.shards.values())
        self.local = {name: local_view(weight) for name, weight in weights.items()}  # what masks are applied to
        self.selection = self._selection()
        self.modules = dict(modules or {})  # each weight's layer, where known: Conv1D weights are stored in x out
        self.numel = sum(w.numel() for w in weights.values())  # read every step by the logged sparsity
        self.groups = list(groups)
        self.pattern = pruner.parsed_pattern
        # the pruner's ratios and ramp, which Pruner.__post_init__ has filled in where they were given as None
        self.target = cast(float, pruner.target_sparsity_ratio)
        self.initial = cast(float, pruner.initial_sparsity_ratio)
        self.ramp = cast(list[int], pruner.step_range if pruner.step_range is not None else pruner.epoch_range)
        self.criterion = pruner.prune_type_class(pruner.settings, self.local, self.modules, self.pattern)
        self.masks: dict[str, Tensor] = {}
        self.last_update: Optional[int] = None
        self.current_target = 0.0
        self.steps = 0  # optimizer steps taken, the clock of step-counted ramps
        self._derived_from: Optional[dict[str, Tensor]] = None  # the masks the fields below are worked out from
        self._small_weights: list[Tensor] = []
        self._small_drops: list[Tensor] = []  # 1.0 where pruned, in the weights' dtype
        self._small_zeros: list[Tensor] = []  # one zero tensor per shape, dtype and device, shared
        self._large_weights: list[Tensor] = []
        self._large_keeps: list[Tensor] = []  # uint8 views of the masks
        self._pruned = 0
        if self.sharded:
            self._check_sharded()
        for name, weight in weights.items():
            _check_weight(name, self._out_in(name, weight), pruner)  # the weight as out_features x in_features
            self.criterion.check_weight(name, weight)

    def _check_sharded(self) -> None:
        """Refuses, before training, what cannot be pruned exactly on row shards (collective: checks the tiling)."""
        pruner, kind = self.pruner, type(self.criterion)
        fix = "prune these weights without sharding them (exclude them from fully_shard), or exclude them here"
        if not kind.shards:
            shardable = ", ".join(name for name in prune_types() if prune_type_class(name).shards)
            raise ValueError(
                f"prune_type={pruner.prune_type!r} has no sharded implementation; under FSDP2 use one of {shardable}, "
                f"or {fix}"
            )
        if self.groups or self.is_one_shot:
            what = "structured patterns (head / neuron)" if self.groups else "one-shot pruning (step_range=[0, 0])"
            raise ValueError(f"{what} cannot run on weights split across processes; {fix}")
        for name, shard in self.shards.items():
            if shard is None:
                continue
            if self._out_in(name, self.weights[name]) is not self.weights[name]:
                raise ValueError(
                    f"weight {name!r} is stored in x out (Conv1D or a transposed convolution), so its row shards split "
                    f"its input features; {fix}"
                )
            unit_rows = self.pattern.unit_rows(shard.shape)
            if shard.offset % unit_rows or shard.rows % unit_rows:
                raise ValueError(
                    f"Pruner.pattern={pruner.pattern!r} prunes blocks of {unit_rows} rows, but this process holds rows "
                    f"{shard.offset}..{shard.offset + shard.rows} of weight {name!r}: a block would straddle two "
                    "processes; use a pattern of one row per unit (1x1, 1xM, N:M) or a shard size that the block "
                    "height divides"
                )
        check_tiling({name: shard for name, shard in self.shards.items() if shard is not None})

    def _selection(self) -> Selection:
        """How masks are selected: in this process, or across the processes that hold the weights' row ranges (a
        weight held whole in a sharded run counts on rank zero)."""
        if not self.sharded:
            return LOCAL
        offsets = [0 if shard is None else shard.offset for shard in self.shards.values()]
        primary = [dist.get_rank() == 0 if shard is None else shard.primary for shard in self.shards.values()]
        return ShardedSelection(offsets, primary)

    def _summed(self, counts: Mapping[str, int]) -> list[int]:
        """Per weight, counts of this process's part of it (0 for a weight not named) summed over the processes that
        hold it (collective when sharded)."""
        return self.selection.summed([counts.get(name, 0) for name in self.weights], list(self.local.values()))

    @property
    def counts_steps(self) -> bool:
        return self.pruner.step_range is not None

    @property
    def is_one_shot(self) -> bool:
        """A ramp of the single point ``step_range=[0, 0]`` for a type with a one-shot method: calibrated, unscored."""
        return self.criterion.one_shot is not None and self.pruner.step_range == [0, 0]

    @property
    def target_reached(self) -> bool:
        """Whether the masks are at the target: the ramp is over."""
        return self.current_target >= self.target

    @property
    def final_target(self) -> float:
        if not self.criterion.follows_schedule:
            return self.current_target
        return self.target

    def report_rows(self) -> list[LayerSparsity]:
        """One row per weight: name, shape, zeros measured on the weight (over every process's rows: one
        all-reduce), current and final target."""
        zeros = self._summed({name: int((local == 0).sum()) for name, local in self.local.items()})
        return [
            LayerSparsity(
                name=name,
                shape=tuple(weight.shape),
                numel=weight.numel(),
                zeros=count,
                target=self.current_target,
                final_target=self.final_target,
            )
            for (name, weight), count in zip(self.weights.items(), zeros, strict=True)
        ]

    def unreachable_targets(self, tolerance: float = 0.01) -> dict[str, float]:
        """Weights whose units cannot realise the target within ``tolerance`` in local scope (e.g. ``1xchannel``
        at 0.5 on 3 rows reaches 0.667), with the sparsity they will reach instead."""
        if self.pattern.is_structured or self.pruner.scope == "global" or not self.criterion.follows_schedule:
            return {}
        target = min(self.target, self.pruner.max_sparsity_ratio_per_layer)
        reached = {}
        for name, weight in self.weights.items():
            rows, columns = self.pattern.unit_grid(self._out_in(name, weight).shape)
            units = rows * columns if self.pruner.method == "per_tensor" else columns
            reachable = round(target * units) / units
            if abs(reachable - target) > tolerance:
                reached[name] = reachable
        return reached

    def lock_existing_zeros(self) -> None:
        """For a prune type without a ramp (PatternLock): the zeros the weights hold now become the masks, once."""
        if not self.masks:
            self.masks = {name: w.detach() != 0 for name, w in self.local.items()}
            self.current_target = self.mask_sparsity()

    def step(self, now: int) -> bool:
        """Updates the masks if an update point of the ramp lies in ``(last_update, now]``."""
        if not self.criterion.follows_schedule:
            return False
        start, end = self.ramp
        point = last_update_point(now, start, end, self.pruner.update_frequency)
        if point is None or (self.last_update is not None and point <= self.last_update):
            return False
        progress = ramp_progress(point, start, end)
        target = scheduled_sparsity(progress, self.initial, self.target, self.pruner.schedule)
        self.update_masks(target)
        self.last_update = point
        return True

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Recomputes the masks to prune a ``sparsity`` fraction and zeroes the pruned weights."""
        name = self._non_finite_weight()
        if name is not None:
            raise FloatingPointError(
                f"weight {name!r} holds NaN or infinite values at a pruning mask update; lower the "
                "learning rate, enable gradient clipping (Trainer(gradient_clip_val=...)) or use fp32"
            )
        previous = self.masks
        self.criterion.before_mask_update(previous)
        scores = (self._scores_for(name, weight) for name, weight in self.local.items())
        if self.groups:
            named_scores = dict(zip(self.weights, scores, strict=True))
            self.masks = structured_masks(self.groups, named_scores, sparsity, self.pruner.scope)
        else:
            bounds = (self.pruner.min_sparsity_ratio_per_layer, self.pruner.max_sparsity_ratio_per_layer)
            settings = (sparsity, self.pattern, self.pruner.method, self.pruner.scope, bounds)
            matrices = (self._out_in(name, s) for name, s in zip(self.weights, scores, strict=True))
            on_cpu = all(weight.device.type == "cpu" for weight in self.local.values())
            if self.pruner.scope == "global" or not on_cpu or self.sharded:  # a GPU sorts equal-sized tensors together
                keeps = pattern_masks(list(matrices), *settings, selection=self.selection)
            else:  # tensor by tensor on the CPU, so that one score tensor is alive at a time
                keeps = [pattern_masks([matrix], *settings)[0] for matrix in matrices]
            self.masks = {
                name: self._out_in(name, keep).contiguous() for name, keep in zip(self.weights, keeps, strict=True)
            }
        self.current_target = sparsity
        self.criterion.after_mask_update(previous, self.masks, self.target_reached)
        self.apply_masks()

    def _non_finite_weight(self) -> Optional[str]:
        """The first weight holding inf or NaN in any process's part of it, or None (one check of all at once)."""
        finite = all_finite(self.local.values())
        flags = {} if finite else {name: int(not all_finite([weight])) for name, weight in self.local.items()}
        return next((name for name, flag in zip(self.weights, self._summed(flags), strict=True) if flag), None)

    def _out_in(self, name: str, tensor: Tensor) -> Tensor:
        """A weight-shaped tensor seen as ``out_features x in_features`` (transposed for a Conv1D weight)."""
        module = self.modules.get(name)
        return tensor if module is None else as_out_in(tensor, module)

    def follow_weights(self) -> None:
        """Moves masks and criterion state to their weights' devices: Lightning moves the model to the CPU after a
        fit on a GPU, and a later fit may run on another device than the one the masks were made on."""
        self.masks = {name: mask.to(self.local[name].device) for name, mask in self.masks.items()}
        self.criterion.load_state_dict(self.criterion.state_dict())  # its loading moves tensors to their weights

    def rebind(self, weights: Mapping[str, nn.Parameter]) -> None:
        """Follows parameters that the model re-created (same names and shapes): masks carry over to them."""
        for name, weight in weights.items():
            if weight.shape != self.weights[name].shape:
                raise ValueError(
                    f"weight {name!r} was replaced by a parameter of shape {tuple(weight.shape)} during pruning (it "
                    f"had {tuple(self.weights[name].shape)}): its mask no longer fits; prune the new model afresh"
                )
            self.weights[name] = weight
            self.shards[name] = row_shard(name, weight)
            self.local[name] = local_view(weight)  # the criterion holds this dict: it follows too
        self.selection = self._selection()
        self._derived_from = None

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zeroes the pruned weights in place (after every optimizer step).

        Pruned weights become +0.0 (``mul_`` alone leaves -0.0 for negative weights, which compressed
        checkpoints would then store as values to stay bit-exact; adding 0.0 turns -0.0 into +0.0 and
        changes nothing else). ``mul_`` by the mask's uint8 view + ``add_`` is several times faster than
        ``masked_fill_`` on CPU. Small weights, whose cost is the call and not the arithmetic, take one multi-tensor
        ``lerp_`` towards zero by their pruned positions (1.0 there, in their own dtype): a weight of 0 leaves a finite
        value as it is, a weight of 1 gives +0.0, in one call for all where ``mul_`` + ``add_`` take two.
        """
        self._derive_from_masks()
        if self._small_weights:
            torch._foreach_lerp_(self._small_weights, self._small_zeros, self._small_drops)
        if self._large_weights:
            torch._foreach_mul_(self._large_weights, self._large_keeps)
            torch._foreach_add_(self._large_weights, 0.0)

    def before_optimizer_step(self, skip_non_finite: bool = True) -> None:
        """Lets the prune type read this step's gradients (``skip_non_finite``: fp16 AMP's GradScaler skips steps
        whose gradients hold inf or NaN; the check waits for the GPU, so it is left out without a scaler). Sharded
        weights' local views carry their local gradients for the call."""
        if not self.sharded:
            self.criterion.before_optimizer_step(skip_non_finite)
            return
        views = [(self.local[name], weight) for name, weight in self.weights.items() if weight is not self.local[name]]
        for view, weight in views:
            view.grad = None if weight.grad is None else local_view(weight.grad)
        try:
            self.criterion.before_optimizer_step(skip_non_finite)
        finally:
            for view, _ in views:
                view.grad = None

    def _scores_for(self, name: str, weight: Tensor) -> Tensor:
        """The criterion's scores, already-pruned weights at the lowest finite value so that they stay pruned
        whatever the sign of the scores; set by arithmetic (``mul_``, ``add_``), several times faster on CPU than
        ``masked_fill_``."""
        scores = self.criterion.scores(name, weight)
        mask = self.masks.get(name)
        if mask is None:
            return scores
        lowest = torch.finfo(scores.dtype).min
        return scores.mul_(mask.view(torch.uint8)).add_(mask.logical_not().view(torch.uint8), alpha=lowest)

    def mask_sparsity(self) -> float:
        """Fraction of masked-out weights (0 before the first update), counted once per new set of masks."""
        self._derive_from_masks()
        return self._pruned / self.numel

    def _derive_from_masks(self) -> None:
        """Works out what every step reads from the masks (the weights they mask, their uint8 views, the pruned
        count) once per new set of masks: masks are replaced as a whole, never edited in place."""
        if self._derived_from is self.masks:
            return
        self._derived_from = self.masks
        small = [name for name in self.masks if self.weights[name].numel() <= SMALL_WEIGHT]  # whole, not a shard
        large = [name for name in self.masks if name not in small]
        self._small_weights = [self.local[name] for name in small]
        self._small_drops = [self.masks[name].logical_not().to(self.local[name].dtype) for name in small]
        zeros: dict[tuple[Any, ...], Tensor] = {}
        self._small_zeros = [
            zeros.setdefault((w.shape, w.dtype, w.device), torch.zeros_like(w, memory_format=torch.contiguous_format))
            for w in self._small_weights
        ]
        self._large_weights = [self.local[name] for name in large]
        self._large_keeps = [self.masks[name].view(torch.uint8) for name in large]  # multiplies faster than bool
        kept = [torch.count_nonzero(m) for m in self.masks.values()]  # all counted before one is read: one GPU wait
        pruned = {name: m.numel() - int(count) for (name, m), count in zip(self.masks.items(), kept, strict=True)}
        self._pruned = sum(self._summed(pruned))

    def state_dict(self) -> dict[str, Any]:
        """Masks packed 8 to a byte (uint8), the prune type's state and the schedule position; sharded weights'
        masks and state gathered whole (Lightning writes the callback's state from rank zero)."""
        return {
            "masks": {name: pack_bits(self._whole(name, mask)) for name, mask in self.masks.items()},
            "criterion": _by_weight(self.criterion.state_dict(), self._whole),
            "last_update": self.last_update,
            "current_target": self.current_target,
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any], steps_taken: int = 0) -> None:
        """Restores :meth:`state_dict`, checked field by field; state format 2 (``scores``/``fisher`` beside the masks,
        no ``steps``: ``steps_taken`` then, the trainer's global step) and 1 (boolean masks) still load."""
        masks = {name: self._checked_mask(name, mask) for name, mask in _field(state, "masks", dict).items()}
        self.current_target = _checked_number(state, "current_target", 0.0, 1.0)
        last_update = state.get("last_update")
        if last_update is not None:
            low, high = self.ramp
            last_update = int(_checked_number(state, "last_update", low, high, integer=True))
        criterion = state.get("criterion")
        if criterion is None:  # format 2
            criterion = {
                "scores": state.get("scores", {}),
                "fisher": state.get("fisher", {}),
                "done": self.target_reached,
            }
        _check_names(self, _field({"criterion": criterion}, "criterion", dict))
        self.criterion.load_state_dict(_by_weight(criterion, self._local_part))
        self.masks, self.last_update = masks, last_update
        self.steps = (
            int(_checked_number(state, "steps", 0, float("inf"), integer=True)) if "steps" in state else steps_taken
        )

    def _checked_mask(self, name: str, mask: Any) -> Tensor:
        """A checkpoint's mask for weight ``name``: packed bits of exactly the weight's size, or a boolean tensor of
        its shape (state format 1); anything else is a ValueError naming the weight."""
        weight = self.weights.get(name)
        if weight is None:
            raise ValueError(
                f"the checkpoint's pruning masks name weight {name!r}, which this pruner does not select; resume "
                "with the pruning configuration that wrote the checkpoint"
            )
        if isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.shape == weight.shape:
            return self._local_part(name, mask.to(self.local[name].device))
        packed_size = (weight.numel() + 7) // 8
        if not (isinstance(mask, Tensor) and mask.dtype == torch.uint8 and mask.shape == (packed_size,)):
            found = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"the checkpoint's pruning mask for weight {name!r} is {found}; a mask of that weight is {packed_size} "
                f"packed uint8 bytes or a bool tensor of shape {tuple(weight.shape)}: the checkpoint is damaged or was "
                "written for another model"
            )
        return self._local_part(name, unpack_bits(mask.to(self.local[name].device), weight.shape))

    def _whole(self, name: str, tensor: Tensor) -> Tensor:
        """A weight-shaped tensor of this process's rows made whole (collective), as it is when unsharded."""
        shard = self.shards.get(name)
        if shard is None or tuple(tensor.shape) != tuple(self.local[name].shape):
            return tensor
        return gathered(tensor, shard)

    def _local_part(self, name: str, tensor: Tensor) -> Tensor:
        """This process's rows of a whole weight-shaped tensor from a checkpoint."""
        shard = self.shards.get(name)
        if shard is None or tuple(tensor.shape) != tuple(shard.shape):
            return tensor
        return local_rows(tensor, shard)


def _by_weight(state: Mapping[str, Any], change: Callable[[str, Tensor], Tensor]) -> dict[str, Any]:
    """A prune type's state with ``change(name, tensor)`` applied to its tensors by weight name."""
    return {
        key: {name: change(name, t) for name, t in entries.items()} if isinstance(entries, dict) else entries
        for key, entries in state.items()
    }


def _field(state: Mapping[str, Any], key: str, kind: type) -> Any:
    value = state.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"the checkpoint's pruning state has {key}={value!r}; expected a {kind.__name__}")
    return value


def _checked_number(state: Mapping[str, Any], key: str, low: float, high: float, integer: bool = False) -> float:
    value = state.get(key)
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high) or (
        integer and float(value) != int(value)
    ):
        kind = "an integer" if integer else "a number"
        raise ValueError(
            f"the checkpoint's pruning state has {key}={value!r}; expected {kind} in [{low:g}, {high:g}]: the "
            "checkpoint is damaged or was written with another pruning configuration"
        )
    return float(value)


def _check_names(sparsifier: Sparsifier, criterion: Mapping[str, Any]) -> None:
    """Every tensor of the criterion's state names a weight of this pruner, on a floating-point tensor."""
    for key, entries in criterion.items():
        if not isinstance(entries, dict):
            continue
        for name, tensor in entries.items():
            if name not in sparsifier.weights:
                raise ValueError(
                    f"the checkpoint's pruning {key} name weight {name!r}, which this pruner does not select; resume "
                    "with the pruning configuration that wrote the checkpoint"
                )
            if not (isinstance(tensor, Tensor) and tensor.is_floating_point()):
                raise ValueError(f"the checkpoint's pruning {key} for weight {name!r} is not a floating-point tensor")


def _check_weight(name: str, weight: Tensor, pruner: Pruner) -> None:
    if not weight.is_floating_point():
        raise ValueError(f"weight {name!r} has dtype {weight.dtype}; only floating-point weights can be pruned")
    if not weight.requires_grad:
        raise ValueError(
            f"weight {name!r} is frozen (requires_grad=False): pruning it would leave it unable to recover; "
            "unfreeze it or remove it with Pruner.excluded_names"
        )
    if not pruner.parsed_pattern.divides(weight.shape):
        raise ValueError(
            f"Pruner.pattern={pruner.pattern!r} does not divide weight {name!r} of shape {tuple(weight.shape)} "
            "(out_features x in_features); pick a pattern whose sides divide it or exclude the weight "
            "with Pruner.excluded_names"
        )

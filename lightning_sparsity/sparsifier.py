"""``Sparsifier``: one ``Pruner`` bound to the weights it selected, holding their masks and scores."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lightning_sparsity.functional.bits import pack_bits, unpack_bits
from lightning_sparsity.functional.criteria import (
    fisher_blocks_update_,
    gradient_scores_,
    group_lasso_grad_,
    magnitude_scores,
    obs_inverse,
    obs_scores,
    obs_update_,
    snip_momentum_scores_,
)
from lightning_sparsity.functional.patterns import pattern_masks
from lightning_sparsity.functional.schedules import last_update_point, ramp_progress, scheduled_sparsity
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.structure import StructuredGroup, structured_masks


class Sparsifier:
    """Keeps boolean masks (True = kept) for a pruner's weights and applies them in place.

    The schedule is counted in optimizer steps when the pruner has a ``step_range``, else in epochs.
    Masks only grow sparser: a pruned weight stays pruned. With ``groups`` (``head``/``channel`` patterns),
    whole units of the groups are scored and pruned together across their weights.
    """

    def __init__(
        self, pruner: Pruner, weights: dict[str, nn.Parameter], groups: Sequence[StructuredGroup] = ()
    ) -> None:
        self.pruner = pruner
        self.weights = weights
        self.numel = sum(w.numel() for w in weights.values())  # read every step by the logged sparsity
        self.groups = list(groups)
        self.pattern = pruner.parsed_pattern
        self.settings = pruner.algorithm_settings
        self.masks: dict[str, Tensor] = {}
        self.scores: dict[str, Tensor] = {}
        self.fisher: dict[str, Tensor] = {}  # OBS: Fisher blocks per weight, (blocks, size, size), until the ramp ends
        self.last_update: Optional[int] = None
        self.current_target = 0.0
        self.scored_steps = 0
        self._derived_from: Optional[dict[str, Tensor]] = None  # the masks the next three are worked out from
        self._masked_weights: list[Tensor] = []
        self._keep_bytes: list[Tensor] = []
        self._pruned = 0
        for name, weight in weights.items():
            _check_weight(name, weight, pruner)

    @property
    def counts_steps(self) -> bool:
        return self.pruner.step_range is not None

    @property
    def ramp(self) -> list[int]:
        return self.pruner.step_range if self.counts_steps else self.pruner.epoch_range

    @property
    def target_reached(self) -> bool:
        """Whether the masks are at the target: the ramp is over, and no more scores are needed (OBS's Fisher)."""
        return self.current_target >= self.pruner.target_sparsity_ratio

    @property
    def final_target(self) -> float:
        return self.current_target if self.pruner.prune_type == "PatternLock" else self.pruner.target_sparsity_ratio

    def lock_existing_zeros(self) -> None:
        """PatternLock: the zeros the weights hold now become the masks, once."""
        if not self.masks:
            self.masks = {name: w.detach() != 0 for name, w in self.weights.items()}
            self.current_target = self.mask_sparsity()

    def step(self, now: int) -> bool:
        """Updates the masks if an update point of the ramp lies in ``(last_update, now]``."""
        if self.pruner.prune_type == "PatternLock":
            return False
        start, end = self.ramp
        point = last_update_point(now, start, end, self.pruner.update_frequency)
        if point is None or (self.last_update is not None and point <= self.last_update):
            return False
        progress = ramp_progress(point, start, end)
        target = scheduled_sparsity(
            progress, self.pruner.initial_sparsity_ratio, self.pruner.target_sparsity_ratio, self.pruner.schedule
        )
        self.update_masks(target)
        self.last_update = point
        return True

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Recomputes the masks to prune a ``sparsity`` fraction and zeroes the pruned weights."""
        if not _all_finite(self.weights.values()):
            name = next(name for name, weight in self.weights.items() if not _all_finite([weight]))
            raise FloatingPointError(
                f"weight {name!r} holds NaN or infinite values at a pruning mask update; lower the "
                "learning rate, enable gradient clipping (Trainer(gradient_clip_val=...)) or use fp32"
            )
        inverses = self._obs_inverses() if self.fisher else {}
        scores = (self._scores_for(name, weight, inverses.get(name)) for name, weight in self.weights.items())
        previous = self.masks
        if self.groups:
            named_scores = dict(zip(self.weights, scores, strict=True))
            self.masks = structured_masks(self.groups, named_scores, sparsity, self.pruner.scope)
        else:
            bounds = (self.pruner.min_sparsity_ratio_per_layer, self.pruner.max_sparsity_ratio_per_layer)
            settings = (sparsity, self.pattern, self.pruner.method, self.pruner.scope, bounds)
            on_cpu = all(weight.device.type == "cpu" for weight in self.weights.values())
            if self.pruner.scope == "global" or not on_cpu:  # a GPU sorts equal-sized tensors together
                keeps = pattern_masks(list(scores), *settings)
            else:  # tensor by tensor on the CPU, so that one score tensor is alive at a time
                keeps = [pattern_masks([tensor_scores], *settings)[0] for tensor_scores in scores]
            self.masks = dict(zip(self.weights, keeps, strict=True))
        for name, inverse in inverses.items():
            pruned = self.masks[name].logical_not()
            obs_update_(self.weights[name], inverse, pruned if name not in previous else pruned & previous[name])
        self.current_target = sparsity
        if self.target_reached:
            self.fisher = {}  # no later update reads it
        self.apply_masks()

    def _obs_inverses(self) -> dict[str, Tensor]:
        """OBS: every weight's inverse Fisher blocks over the weights its mask still keeps."""
        damping = self.settings["damping"]
        inverses = {}
        for name, fisher in self.fisher.items():
            keep = self.masks[name] if name in self.masks else torch.ones_like(self.weights[name], dtype=torch.bool)
            inverses[name] = obs_inverse(fisher, keep, damping)
        return inverses

    def follow_weights(self) -> None:
        """Moves masks and scores to their weights' devices: Lightning moves the model to the CPU after a fit on a
        GPU, and a later fit may run on another device than the one the masks were made on."""
        self.masks, self.scores, self.fisher = map(self._on_weight_devices, (self.masks, self.scores, self.fisher))

    def _on_weight_devices(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """``tensors`` by weight name, each on its weight's device."""
        return {name: tensor.to(self.weights[name].device) for name, tensor in tensors.items()}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zeroes the pruned weights in place (after every optimizer step).

        Pruned weights become +0.0 (``mul_`` alone leaves -0.0 for negative weights, which compressed
        checkpoints would then store as values to stay bit-exact; adding 0.0 turns -0.0 into +0.0 and
        changes nothing else). ``mul_`` by the mask's uint8 view + ``add_`` is several times faster than
        ``masked_fill_`` on CPU.
        """
        self._derive_from_masks()
        if self._masked_weights:  # one multi-tensor kernel for all weights, not two small ones per weight on a GPU
            torch._foreach_mul_(self._masked_weights, self._keep_bytes)
            torch._foreach_add_(self._masked_weights, 0.0)

    @torch.no_grad()
    def before_optimizer_step(self, skip_non_finite: bool = True) -> None:
        """Accumulates gradient scores and adds the group-lasso penalty to the gradients.

        With ``skip_non_finite`` (for fp16 AMP, whose GradScaler skips such steps), a step whose gradients hold
        inf or NaN leaves the scores alone; the check waits for the GPU, so it is left out without a scaler.
        """
        prune_type = self.pruner.prune_type
        if prune_type not in ("SnipMomentum", "Gradient", "GroupLasso", "OBS"):
            return
        if prune_type == "OBS" and self.target_reached:
            return  # the Fisher is no longer kept
        if prune_type != "GroupLasso" and skip_non_finite:
            grads = [w.grad for w in self.weights.values() if w.grad is not None]
            if grads and not _all_finite(grads):
                return  # an fp16 AMP overflow step, which GradScaler skips: its scores would stay inf or NaN for good
        for name, weight in self.weights.items():
            if weight.grad is None:
                continue
            if prune_type == "GroupLasso":
                rows, cols = self.pattern.block_shape(weight.shape)
                group_lasso_grad_(weight.grad, weight, rows, cols, self.settings["alpha"])
                continue
            if prune_type == "OBS":
                fisher = self.fisher.get(name)
                if fisher is None:
                    size = int(self.settings["block_size"])
                    fisher = self.fisher[name] = weight.new_zeros(
                        (weight.numel() // size, size, size), dtype=torch.float32
                    )
                fisher_blocks_update_(fisher, weight.grad, self.settings["fisher_decay"])
                continue
            scores = self.scores.get(name)
            if scores is None:
                scores = self.scores[name] = torch.zeros_like(weight, dtype=torch.float32)
            if prune_type == "SnipMomentum":
                snip_momentum_scores_(scores, weight, weight.grad, self.settings["momentum"])
            else:
                gradient_scores_(scores, weight.grad)
        if prune_type != "GroupLasso":
            self.scored_steps += 1

    def _scores_for(self, name: str, weight: Tensor, inverse: Optional[Tensor] = None) -> Tensor:
        """Importance scores in a fresh tensor, already-pruned weights at -1 (gradient types fall back to
        magnitude until a gradient has been seen; OBS scores from ``inverse``, its inverse Fisher blocks).

        Every criterion scores >= 0, so -1 ranks pruned weights first like ``-inf`` would; setting it by
        arithmetic (``mul_``, ``add_``) is several times faster on CPU than ``masked_fill_``.
        """
        stored = self.scores.get(name) if self.scored_steps else None
        mask = self.masks.get(name)
        keep = None if mask is None else mask.view(torch.uint8)  # multiplies faster than bool
        if stored is not None:  # kept across steps: masked into a copy
            scores = stored.clone() if keep is None else stored * keep
        else:
            scores = magnitude_scores(weight).float() if inverse is None else obs_scores(weight, inverse)
            if keep is not None:
                scores.mul_(keep)
        return scores if mask is None else scores.add_(mask.logical_not().view(torch.uint8), alpha=-1.0)

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
        self._masked_weights = [self.weights[name] for name in self.masks]
        self._keep_bytes = [mask.view(torch.uint8) for mask in self.masks.values()]  # multiplies faster than bool
        kept = [torch.count_nonzero(m) for m in self.masks.values()]  # all counted before one is read: one GPU wait
        self._pruned = sum(m.numel() for m in self.masks.values()) - sum(int(count) for count in kept)

    def state_dict(self) -> dict[str, Any]:
        """Masks packed 8 to a byte (uint8), scores and OBS's Fisher blocks as they are, and the schedule position."""
        return {
            "masks": {name: pack_bits(mask) for name, mask in self.masks.items()},
            "scores": dict(self.scores),
            "fisher": dict(self.fisher),
            "last_update": self.last_update,
            "current_target": self.current_target,
            "scored_steps": self.scored_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for kind in ("masks", "scores", "fisher"):
            unknown = set(state.get(kind, {})) - set(self.weights)
            if unknown:
                raise ValueError(
                    f"the checkpoint's pruning {kind} name weights this pruner does not select: {sorted(unknown)}; "
                    "resume with the pruning configuration that wrote the checkpoint"
                )
        self.masks = {n: _unpacked(m, self.weights[n]) for n, m in state["masks"].items()}
        self.scores = self._on_weight_devices(state["scores"])
        self.fisher = self._on_weight_devices(state.get("fisher", {}))
        self.last_update = state["last_update"]
        self.current_target = float(state["current_target"])
        self.scored_steps = int(state["scored_steps"])


def _unpacked(mask: Tensor, weight: Tensor) -> Tensor:
    """A checkpoint's mask for ``weight``: packed bits, or a boolean tensor (state format 1)."""
    mask = mask.to(weight.device)
    return mask if mask.dtype == torch.bool else unpack_bits(mask, weight.shape)


def _all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether no tensor holds inf or NaN: one min/max pass per tensor (no temporary the size of the tensor,
    unlike ``isfinite().all()``, which is ten times slower on CPU; unlike a sum, no fp16 overflow) and one
    synchronisation for all."""
    extremes = torch.stack([torch.stack(torch.aminmax(t.detach())).float() for t in tensors])
    return bool(extremes.isfinite().all())


def _check_weight(name: str, weight: nn.Parameter, pruner: Pruner) -> None:
    if not weight.is_floating_point():
        raise ValueError(f"weight {name!r} has dtype {weight.dtype}; only floating-point weights can be pruned")
    if not weight.requires_grad:
        raise ValueError(
            f"weight {name!r} is frozen (requires_grad=False): pruning it would leave it unable to recover; "
            "unfreeze it or remove it with Pruner.excluded_names"
        )
    block_size = int(pruner.algorithm_settings["block_size"]) if pruner.prune_type == "OBS" else 1
    if weight[0].numel() % block_size:
        raise ValueError(
            f"Pruner.parameters['block_size']={block_size} does not divide the "
            f"{weight[0].numel()} in_features of weight {name!r}; pick a block size that divides every selected "
            "weight's rows or exclude the weight with Pruner.excluded_names"
        )
    if not pruner.parsed_pattern.divides(weight.shape):
        raise ValueError(
            f"Pruner.pattern={pruner.pattern!r} does not divide weight {name!r} of shape {tuple(weight.shape)} "
            "(out_features x in_features); pick a pattern whose sides divide it or exclude the weight "
            "with Pruner.excluded_names"
        )

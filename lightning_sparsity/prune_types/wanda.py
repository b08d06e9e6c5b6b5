"""``Wanda``: ``|w|`` times the norm of the input feature it reads (Sun et al. 2023), from forward hooks in training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_sparsity.functional.criteria import magnitude_scores, wanda_scores
from lightning_sparsity.layers import input_features_of, is_conv1d
from lightning_sparsity.prune_types.base import PruneType, check_setting, register_prune_type


@register_prune_type
class Wanda(PruneType):
    """Scores ``|w_ij| * ||x_j||``: a weight matters as much as it is large and as its input feature is strong.

    ``||x_j||`` is the root of a running mean (``decay``) of each input feature's mean square over the tokens of
    every training batch, read by a forward hook on the weight's module; weights whose module has not run yet are
    scored by magnitude. Linear, transformers' Conv1D and ungrouped convolutions (a channel's norm is shared by its
    kernel positions). In distributed training the norms are averaged over the processes before each mask update
    and in ``state_dict`` (each saw its own batches), so that every rank scores with the norms of all the data and a
    checkpoint (written from rank zero) holds what every rank holds.
    """

    name = "Wanda"
    shards = True  # a rank's rows are scored with the norms of every input feature, which each rank has
    one_shot = "Wanda"  # with step_range=[0, 0]: Wanda as its paper does it, from calibration batches

    @dataclass(frozen=True)
    class Settings:
        decay: float = 0.99

        def __post_init__(self) -> None:
            check_setting("decay", self.decay, 0.0, 1.0)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.input_norms: dict[str, Tensor] = {}  # running mean of x_j² per input feature, float32
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def check_weight(self, name: str, weight: nn.Parameter) -> None:
        module = self.modules.get(name)
        if module is None or not (isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or is_conv1d(module)):
            raise ValueError(f"prune_type='Wanda' reads the inputs of Linear, Conv1D or Conv layers; {name!r} is none")
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            raise ValueError(f"prune_type='Wanda' does not score transposed convolutions ({name!r}); exclude it")
        if isinstance(module, nn.modules.conv._ConvNd) and module.groups != 1:
            raise ValueError(
                f"prune_type='Wanda' does not score grouped convolutions ({name!r} has groups={module.groups}); "
                "exclude it with Pruner.excluded_names"
            )

    def attach(self) -> None:
        self.detach()
        for name in self.weights:
            self._handles.append(self.modules[name].register_forward_hook(self._observer(name)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _observer(self, name: str):  # type: ignore[no-untyped-def]
        module = self.modules[name]

        @torch.no_grad()
        def observe(_: nn.Module, inputs: tuple[Tensor, ...], output: Any) -> None:
            if not module.training or not inputs:
                return  # validation and prediction batches are not training statistics
            squares = input_features_of(module, inputs[0].detach()).float().square().mean(dim=0)
            norms = self.input_norms.get(name)
            if norms is None:
                self.input_norms[name] = squares
            else:
                norms.lerp_(squares, 1.0 - self.settings.decay)

        return observe

    def before_mask_update(self, masks: Mapping[str, Tensor]) -> None:
        self._average_over_processes()

    @torch.no_grad()
    def _average_over_processes(self) -> None:
        """Every process's norms become their mean over the processes (collective in distributed training)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and self.input_norms):
            return
        names = [name for name in self.weights if name in self.input_norms]
        joined = torch.cat([self.input_norms[name] for name in names])
        dist.all_reduce(joined)
        joined /= dist.get_world_size()
        for name, averaged in zip(names, joined.split([self.input_norms[n].numel() for n in names]), strict=True):
            self.input_norms[name].copy_(averaged)

    def scores(self, name: str, weight: Tensor) -> Tensor:
        norms = self.input_norms.get(name)
        if norms is None:
            return magnitude_scores(weight).float()
        return wanda_scores(weight, norms.sqrt(), transposed=is_conv1d(self.modules[name]))

    def state_dict(self) -> dict[str, Any]:
        """The norms averaged over the processes, on every process (a resumed run starts where each rank stood)."""
        self._average_over_processes()
        return {"input_norms": dict(self.input_norms)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.input_norms = self.loaded_tensors(state, "input_norms", self._features)

    def _features(self, name: str) -> tuple[int]:
        """The shape of a weight's input norms: one per input feature (per input channel of a convolution)."""
        weight = self.weights[name]
        return (weight.shape[0],) if is_conv1d(self.modules[name]) else (weight.shape[1],)

"""Calibration statistics of a Linear layer's inputs, accumulated by forward hooks.

SparseGPT needs the Hessian of the layer's squared reconstruction error, ``H = 2 X Xᵀ / tokens``; Wanda needs
the squared norm of each input feature over the calibration tokens, ``||X_j||²``. Both are sums over every
token the layer sees, so batches of any size and padding-free batches of one sentence accumulate the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class InputStatistic:
    """A running statistic of the inputs of one Linear layer (``in_features`` wide), in float32."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        self.in_features = in_features
        self.device = device
        self.tokens = 0

    def update(self, inputs: Tensor) -> None:
        """Adds a batch of inputs, any leading shape, ``in_features`` last."""
        rows = inputs.detach().reshape(-1, self.in_features).to(self.device, torch.float32)
        self._add(rows)
        self.tokens += rows.shape[0]

    def _add(self, rows: Tensor) -> None:
        raise NotImplementedError

    def value(self) -> Tensor:
        """The statistic the prune type reads."""
        raise NotImplementedError


class HessianStatistic(InputStatistic):
    """``H = 2 X Xᵀ / tokens`` (``in_features`` squared): the curvature of ``||W X - Ŵ X||²`` (SparseGPT)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__(in_features, device)
        self.sum = torch.zeros(in_features, in_features, device=device)

    def _add(self, rows: Tensor) -> None:
        self.sum.addmm_(rows.T, rows)

    def value(self) -> Tensor:
        return self.sum * (2.0 / max(self.tokens, 1))


class FeatureNormStatistic(InputStatistic):
    """``||X_j||²`` per input feature ``j`` over all tokens (Wanda)."""

    def __init__(self, in_features: int, device: torch.device) -> None:
        super().__init__(in_features, device)
        self.sum = torch.zeros(in_features, device=device)

    def _add(self, rows: Tensor) -> None:
        self.sum.add_(rows.square().sum(dim=0))

    def value(self) -> Tensor:
        return self.sum


StatisticFactory = Callable[[int, torch.device], InputStatistic]


@contextmanager
def recording_inputs(
    targets: Mapping[str, tuple[nn.Module, str]], make: StatisticFactory
) -> Iterator[dict[str, InputStatistic]]:
    """Hooks every ``(module, parameter name)`` of ``targets`` (keyed by the full parameter name) while the
    context is open, feeding the first input of each of its forward calls to a statistic ``make(in_features,
    device)`` made on the weight's device; yields the statistics by the same keys."""
    statistics: dict[str, InputStatistic] = {}
    handles = []
    for key, (module, parameter_name) in targets.items():
        weight = getattr(module, parameter_name)
        statistic = make(weight.shape[1], weight.device)
        statistics[key] = statistic

        def hook(_module: nn.Module, args: tuple[Any, ...], _output: Any, statistic: InputStatistic = statistic):
            statistic.update(args[0])

        handles.append(module.register_forward_hook(hook))
    try:
        yield statistics
    finally:
        for handle in handles:
            handle.remove()

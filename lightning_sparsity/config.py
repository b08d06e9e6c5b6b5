"""``PruningConfig``: the classic (intel-extension-for-transformers) description of a pruning run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union, get_args

from lightning_sparsity.metrics import Metric, as_metric_list
from lightning_sparsity.pruner import Pruner

Framework = Literal["pytorch", "pytorch_fx"]
FRAMEWORKS: tuple[str, ...] = get_args(Framework)


@dataclass
class PruningConfig:
    """The pruners of a run and the metric that judges it, as the old toolkit's ``PruningConfig``.

    Args:
        framework: ``"pytorch"`` (``"pytorch_fx"`` is accepted as an alias: no graph tracing is needed).
        initial_sparsity_ratio: start of the default pruner's ramp (used when ``pruner`` is None).
        target_sparsity_ratio: the default pruner's final fraction of zeros (used when ``pruner`` is None).
        epoch_range: the default pruner's inclusive ``[first, last]`` ramp epochs.
        metrics: one :class:`Metric` or several (combined by ``weight_ratio``), or None for no judgement.
        pruner: one :class:`Pruner` or a list; None means one BasicMagnitude pruner with the ratios above.
        pruner_config: the old toolkit's name for ``pruner``; give one of the two.
    """

    framework: Framework = "pytorch"
    initial_sparsity_ratio: float = 0.0
    target_sparsity_ratio: float = 0.97
    epoch_range: list[int] = field(default_factory=lambda: [0, 4])
    metrics: Union[Metric, list[Metric], None] = None
    pruner: Union[Pruner, list[Pruner], None] = None
    pruner_config: Union[Pruner, list[Pruner], None] = None

    def __post_init__(self) -> None:
        if isinstance(self.framework, str) and self.framework.lower() in FRAMEWORKS:
            self.framework = self.framework.lower()
        else:
            raise ValueError(
                f"PruningConfig.framework={self.framework!r} is not supported; allowed values: "
                f"{', '.join(map(repr, FRAMEWORKS))} (lightning-sparsity prunes PyTorch models)"
            )
        if self.pruner is not None and self.pruner_config is not None:
            raise ValueError("PruningConfig got both pruner and pruner_config (its old name): give one of them")
        given = self.pruner if self.pruner is not None else self.pruner_config
        self.pruner = self._default_pruners() if given is None else _as_pruner_list(given)
        self.pruner_config = None
        as_metric_list(self.metrics)

    @property
    def pruners(self) -> list[Pruner]:
        return list(self.pruner)

    @property
    def metric_list(self) -> list[Metric]:
        return as_metric_list(self.metrics)

    def _default_pruners(self) -> list[Pruner]:
        try:
            return [
                Pruner(
                    prune_type="BasicMagnitude",
                    initial_sparsity_ratio=self.initial_sparsity_ratio,
                    target_sparsity_ratio=self.target_sparsity_ratio,
                    epoch_range=self.epoch_range,
                )
            ]
        except ValueError as error:
            raise ValueError(str(error).replace("Pruner.", "PruningConfig.", 1)) from None


def _as_pruner_list(pruners: Union[Pruner, list[Pruner]]) -> list[Pruner]:
    pruner_list = [pruners] if isinstance(pruners, Pruner) else list(pruners)
    if not pruner_list:
        raise ValueError("PruningConfig.pruner is empty: give at least one Pruner, or None for the default")
    for index, pruner in enumerate(pruner_list):
        if not isinstance(pruner, Pruner):
            raise ValueError(f"PruningConfig.pruner[{index}] must be a Pruner, got {type(pruner).__name__}")
    return pruner_list

"""``DistillationConfig`` and ``Criterion``: the classic (intel-extension-for-transformers) description of a
distillation run, turned into a :class:`~lightning_sparsity.distillation.KnowledgeDistillation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union, cast

from torch import nn

from lightning_sparsity.config import FRAMEWORKS, Framework
from lightning_sparsity.distillation import LAYER_LOSS_TYPES, KnowledgeDistillation, check_settings
from lightning_sparsity.metrics import Metric, as_metric_list

#: Criterion names, as the toolkit spelled them (any case): logits, or intermediate layers' outputs.
KNOWLEDGE_LOSS, INTERMEDIATE_LAYERS_LOSS = "KNOWLEDGELOSS", "INTERMEDIATELAYERSLOSS"
CRITERIA: tuple[str, ...] = (KNOWLEDGE_LOSS, INTERMEDIATE_LAYERS_LOSS)


@dataclass
class Criterion:
    """The distillation loss, as the old toolkit's ``Criterion``.

    ``KnowledgeLoss``: ``loss_weight_ratio[0] * CE(student, labels) + loss_weight_ratio[1] * T^2 *
    D(student / T, teacher / T)`` with ``loss_types = [label loss, teacher loss]`` (``"CE"``; ``"CE"``, ``"KL"``
    or ``"MSE"``). ``IntermediateLayersLoss``: one mean squared error per ``layer_mappings`` pair
    ``[student module name, teacher module name]``, weighted by ``loss_weight_ratio``, plus the labels'
    cross-entropy when ``add_origin_loss``.

    Args:
        name: ``"KnowledgeLoss"`` or ``"IntermediateLayersLoss"`` (any case).
        temperature: softening of the logits, > 0 (``KnowledgeLoss``).
        loss_types: as above; for ``IntermediateLayersLoss`` one ``"MSE"`` per mapping.
        loss_weight_ratio: as above; for ``IntermediateLayersLoss`` one weight per mapping.
        layer_mappings: ``IntermediateLayersLoss``'s module name pairs.
        add_origin_loss: ``IntermediateLayersLoss`` also trains on the labels.
    """

    name: str = "KNOWLEDGELOSS"
    temperature: float = 1.0
    loss_types: list[str] = field(default_factory=lambda: ["CE", "CE"])
    loss_weight_ratio: list[float] = field(default_factory=lambda: [0.5, 0.5])
    layer_mappings: Optional[list[list[str]]] = None
    add_origin_loss: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name.upper() not in CRITERIA:
            raise ValueError(
                f"Criterion.name={self.name!r} is not supported; allowed values: 'KnowledgeLoss', "
                "'IntermediateLayersLoss' (any case)"
            )
        self.name = self.name.upper()
        self.settings()  # out-of-range values fail here

    def settings(self) -> dict[str, Any]:
        """The :class:`KnowledgeDistillation` keyword arguments of this criterion (the teacher aside)."""
        settings: dict[str, Any]
        if self.name == KNOWLEDGE_LOSS:
            settings = dict(
                temperature=self.temperature, loss_types=list(self.loss_types), loss_weights=self.loss_weight_ratio
            )
            check_settings("Criterion", **settings)
            return settings
        mappings = list(self.layer_mappings or [])
        if not mappings:
            raise ValueError("Criterion.layer_mappings must hold [student module, teacher module] pairs")
        if len(self.loss_types) != len(mappings) or any(t not in LAYER_LOSS_TYPES for t in self.loss_types):
            raise ValueError(
                f"Criterion.loss_types must be one of {list(LAYER_LOSS_TYPES)} per layer mapping ({len(mappings)}), "
                f"got {list(self.loss_types)!r}"
            )
        settings = dict(
            temperature=self.temperature,
            loss_types=["CE", "CE"],
            loss_weights=[1.0 if self.add_origin_loss else 0.0, 0.0],
            layer_mappings=mappings,
            layer_loss_weights=self.loss_weight_ratio,
        )
        try:
            check_settings("Criterion", **settings)
        except ValueError as error:
            raise ValueError(str(error).replace("layer_loss_weights", "loss_weight_ratio")) from None
        return settings


@dataclass
class DistillationConfig:
    """A distillation run, as the old toolkit's ``DistillationConfig``: ``NLPTrainer.distill`` trains the
    model against a teacher with ``criterion``'s loss; ``metrics`` judge it as ``PruningConfig.metrics`` do.

    Args:
        framework: ``"pytorch"`` (``"pytorch_fx"`` is accepted as an alias).
        criterion: the loss; None is ``Criterion()`` (``KnowledgeLoss``, temperature 1, CE and CE, 0.5 each).
        metrics: one :class:`Metric` or several, or None for no judgement.
    """

    framework: Framework = "pytorch"
    criterion: Optional[Criterion] = None
    metrics: Union[Metric, list[Metric], None] = None

    def __post_init__(self) -> None:
        if not isinstance(self.framework, str) or self.framework.lower() not in FRAMEWORKS:
            raise ValueError(
                f"DistillationConfig.framework={self.framework!r} is not supported; allowed values: "
                f"{', '.join(map(repr, FRAMEWORKS))}"
            )
        self.framework = cast(Framework, self.framework.lower())  # one of FRAMEWORKS
        if self.criterion is None:
            self.criterion = Criterion()
        elif not isinstance(self.criterion, Criterion):
            raise ValueError(f"DistillationConfig.criterion must be a Criterion, got {type(self.criterion).__name__}")
        as_metric_list(self.metrics)

    @property
    def metric_list(self) -> list[Metric]:
        return as_metric_list(self.metrics)

    def distillation(self, teacher_model: Union[nn.Module, str]) -> KnowledgeDistillation:
        """The :class:`KnowledgeDistillation` of this config with ``teacher_model`` (a module or a path)."""
        criterion = cast(Criterion, self.criterion)  # set by __post_init__
        return KnowledgeDistillation(teacher_model, **criterion.settings())

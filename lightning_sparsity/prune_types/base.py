"""``PruneType``: the plug-in interface of a pruning criterion, and the registry that ``Pruner.prune_type`` names."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Optional

from torch import Tensor, nn

from lightning_sparsity.functional.patterns import PATTERN_EXAMPLES, PATTERN_KINDS, Pattern
from lightning_sparsity.numbers import is_real


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """A prune type without settings: ``Pruner.parameters`` must be empty."""


class PruneType:
    """One criterion: how it scores weights, what state that needs and which training events feed it.

    A subclass sets ``name`` and, if it has settings, a frozen dataclass ``Settings`` (the fields of
    ``Pruner.parameters``, checked in its ``__post_init__``), then is registered with :func:`register_prune_type`.
    One instance is made per pruner when fitting starts, bound to that pruner's weights; the ``Sparsifier``
    turns its scores into masks (low scores are pruned first; scores may be negative) and keeps them.

    Hooks, all optional: :meth:`attach` / :meth:`detach` (forward hooks on the weights' modules),
    :meth:`before_optimizer_step` (gradients, before the step), :meth:`after_mask_update` (e.g. move kept weights),
    and :meth:`state_dict` / :meth:`load_state_dict` (plain tensors and numbers, checkpointed with the masks).
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    #: the pattern kinds it can prune (see ``functional.patterns.PATTERN_KINDS``)
    pattern_kinds: ClassVar[tuple[str, ...]] = PATTERN_KINDS
    #: False for a type that keeps the zeros a model has and adds none (PatternLock): it has no ramp
    follows_schedule: ClassVar[bool] = True
    #: whether :meth:`before_optimizer_step` reads gradients (the weights must then be trainable)
    reads_gradients: ClassVar[bool] = False
    #: the ``lightning_sparsity.oneshot`` method that prunes for this type when its ramp is the single point
    #: ``step_range=[0, 0]`` (calibrated on training batches before the first step); None: a plain step-0 update
    one_shot: ClassVar[Optional[str]] = None
    #: whether the type prunes only in one shot (its ramp is then ``[0, 0]``, the default)
    one_shot_only: ClassVar[bool] = False
    #: whether it prunes weights split across processes by rows (FSDP2): its scores of a weight's rows depend only on
    #: those rows, their gradients and statistics every rank holds whole (per input feature); weight-shaped state is
    #: kept per row (``lightning_sparsity.sharding``)
    shards: ClassVar[bool] = False

    def __init__(
        self,
        settings: Any,
        weights: Mapping[str, Tensor],
        modules: Mapping[str, nn.Module],
        pattern: Pattern,
    ) -> None:
        self.settings = settings  # an instance of ``Settings``
        self.weights = weights  # by parameter name: the parameters, or this process's rows of sharded ones
        self.modules = modules  # the module that holds each weight, by the weight's name
        self.pattern = pattern

    @classmethod
    def check_pattern(cls, pattern: Pattern, pattern_name: str) -> None:
        """Refuses a pattern this type cannot prune, when the ``Pruner`` is built."""
        if pattern.kind not in cls.pattern_kinds:
            kinds = [k for k in cls.pattern_kinds if not (k == "unstructured" and "blocks" in cls.pattern_kinds)]
            forms = " or ".join(PATTERN_EXAMPLES[kind] for kind in kinds)
            raise ValueError(f'Pruner.pattern={pattern_name!r} does not suit prune_type="{cls.name}": use {forms}')

    def check_weight(self, name: str, weight: nn.Parameter) -> None:
        """Refuses a weight this type cannot score, when fitting starts (e.g. a block size that does not divide it)."""

    def attach(self) -> None:
        """Called once bound, before training: register forward hooks here."""

    def detach(self) -> None:
        """Removes what :meth:`attach` registered."""

    def before_optimizer_step(self, skip_non_finite: bool) -> None:
        """Reads the gradients of the step about to be taken (``skip_non_finite``: an fp16 AMP overflow step)."""

    def before_mask_update(self, masks: Mapping[str, Tensor]) -> None:
        """Called before a mask update scores the weights; ``masks`` are the current ones (empty before the first)."""

    def scores(self, name: str, weight: Tensor) -> Tensor:
        """A fresh float tensor shaped like ``weight`` (the caller may modify it): each weight's importance, the
        lowest pruned first. Scores may be negative."""
        raise NotImplementedError

    def after_mask_update(self, previous: Mapping[str, Tensor], masks: Mapping[str, Tensor], done: bool) -> None:
        """Called after new ``masks`` replace ``previous`` (True = kept), before they are applied; ``done``: the
        target is reached, so no later update will read this type's state."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict`; checkpoints of state format 2 hand over their ``scores`` and ``fisher``."""

    def loaded_tensors(
        self, state: Mapping[str, Any], key: str, shape_of: Callable[[str], tuple[int, ...]]
    ) -> dict[str, Tensor]:
        """``state[key]``, tensors by weight name, checked against ``shape_of(name)`` and moved to their weights'
        devices (for :meth:`load_state_dict`)."""
        loaded = {}
        for name, tensor in state.get(key, {}).items():
            expected = tuple(shape_of(name))
            if tuple(tensor.shape) != expected:
                raise ValueError(
                    f"the checkpoint's pruning {key} for weight {name!r} have shape {tuple(tensor.shape)}; expected "
                    f"{expected}: the checkpoint is damaged or was written with another pruning configuration"
                )
            loaded[name] = tensor.to(self.weights[name].device)
        return loaded

    @classmethod
    def make_settings(cls, parameters: Optional[Mapping[str, Any]]) -> Any:
        """``Pruner.parameters`` as this type's ``Settings``, with errors that name the parameter."""
        parameters = dict(parameters or {})
        allowed = [f.name for f in dataclasses.fields(cls.Settings)]
        for key, value in parameters.items():
            if key not in allowed:
                raise ValueError(
                    f"Pruner.parameters has unknown key {key!r} for prune_type={cls.name!r}; "
                    f"allowed keys: {allowed or 'none'}"
                )
            if not is_real(value) or not math.isfinite(value):
                raise ValueError(f"Pruner.parameters[{key!r}] must be a finite number, got {value!r}")
        return cls.Settings(**{key: float(value) for key, value in parameters.items()})


def check_setting(key: str, value: float, low: float, high: float = math.inf) -> None:
    """Raises unless ``low <= value < high``, naming ``Pruner.parameters[key]``."""
    if not low <= value < high:
        bound = f"a finite number >= {low:g}" if math.isinf(high) else f"in [{low:g}, {high:g})"
        raise ValueError(f"Pruner.parameters[{key!r}] must be {bound}, got {value:g}")


_REGISTRY: dict[str, type[PruneType]] = {}


def register_prune_type(cls: type[PruneType]) -> type[PruneType]:
    """Makes ``cls`` available as ``Pruner(prune_type=cls.name)`` (a class decorator). Names are case-insensitive."""
    if not (isinstance(cls, type) and issubclass(cls, PruneType)) or not cls.name:
        raise TypeError("register_prune_type takes a PruneType subclass with a name")
    known = _REGISTRY.get(cls.name.lower())
    if known is not None and known is not cls:
        raise ValueError(f"prune_type {cls.name!r} is already registered by {known.__module__}.{known.__qualname__}")
    _REGISTRY[cls.name.lower()] = cls
    return cls


def prune_type_class(name: Any) -> type[PruneType]:
    """The registered class that ``name`` (any case) names; a ValueError listing the registered names otherwise."""
    found = _REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if found is None:
        raise ValueError(
            f"Pruner.prune_type={name!r} is not valid; allowed values: {', '.join(map(repr, prune_types()))}"
        )
    return found


def prune_types() -> list[str]:
    """The names of the registered prune types, built-in ones first."""
    return [cls.name for cls in _REGISTRY.values()]

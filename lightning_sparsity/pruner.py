"""``Pruner``: what to prune, how far, and when. Plain typed fields, validated on construction, immutable after."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from lightning_sparsity.functional.patterns import METHODS, SCOPES, Method, Pattern, Scope, parse_pattern
from lightning_sparsity.functional.schedules import SCHEDULES, ScheduleName
from lightning_sparsity.numbers import is_integer, is_real
from lightning_sparsity.prune_types import PruneType, prune_type_class

#: Fields that a classic ``PruningConfig`` fills in when a pruner leaves them as None, with their defaults otherwise.
INHERITED_DEFAULTS: dict[str, Any] = {
    "target_sparsity_ratio": 0.97,
    "initial_sparsity_ratio": 0.0,
    "epoch_range": [0, 4],
}


@dataclass(frozen=True)
class Pruner:
    """One pruning rule applied to the weights selected by ``names``.

    Args:
        prune_type: the criterion, a registered name in any case: ``BasicMagnitude`` (gradual magnitude pruning),
            ``PatternLock`` (keep the zeros the model has, add none), ``GroupLasso`` (group-lasso penalty on
            ``pattern`` blocks plus block pruning), ``SnipMomentum`` (momentum of ``|w * grad|``), ``Gradient``
            (``|grad|``), ``OBS`` (Optimal Brain Surgeon as oBERT applies it; unstructured only), ``Movement``
            (movement pruning: ``-w * grad`` accumulated) or ``Wanda`` (``|w|`` times its input feature's norm), or
            one registered with :func:`lightning_sparsity.register_prune_type`.
        target_sparsity_ratio: final fraction of zeros, in [0, 1); None: the ``PruningConfig``'s, else 0.97.
        initial_sparsity_ratio: fraction of zeros at the start of the ramp, at most the target; None: the
            ``PruningConfig``'s, else 0.
        epoch_range: inclusive ``[first, last]`` epochs of the ramp; masks update at epoch starts and
            the target is reached at the start of ``last``; None: the ``PruningConfig``'s, else ``[0, 4]``.
        update_frequency: epochs between mask updates, or optimizer steps when ``step_range`` is set.
        step_range: inclusive ``[first, last]`` optimizer steps of the ramp; replaces ``epoch_range``.
        method: ``per_tensor`` or ``per_channel`` (every output row reaches the ratio).
        pattern: ``"1x1"``, ``"NxM"`` blocks (N output rows by M input columns), ``"N:M"``, or the structured
            ``"head"`` (whole attention heads; under grouped-query attention, a key/value head with its query
            heads) and ``"neuron"`` (whole FFN neurons and conv channels; ``"channel"`` is its old name), found
            in any model by a dependency analysis, where the target is the fraction of heads or neurons pruned
            and empty ``names`` select them all.
        schedule: ``linear``, ``exp``, ``cos``, ``cubic`` (fast start) or ``cube`` (slow start) growth over the ramp.
        scope: ``local`` (each tensor reaches the ratio) or ``global`` (one threshold for all).
        names: regular expressions full-matched against parameter names or their dotted suffixes;
            empty selects every Linear, Conv1D and Conv weight but the model's last one (its output head).
        excluded_names: expressions of the same form removed from the selection.
        parameters: the prune type's settings, e.g. ``{"alpha": 1e-4}`` for GroupLasso, ``{"momentum": 0.9}`` for
            SnipMomentum, ``{"block_size": 32, "fisher_decay": 0.95, "damping": 0.1}`` for OBS, ``{"decay": 0.99}``
            for Wanda (see each type's ``Settings``).
        min_sparsity_ratio_per_layer: no weight is pruned less than this (or than the current scheduled
            ratio, if lower) when ``scope="global"`` spreads the ratio unevenly; INC's ``min_sparsity_ratio_per_op``.
        max_sparsity_ratio_per_layer: no weight is pruned more than this, in either scope; at least the target.
    """

    prune_type: str = "BasicMagnitude"
    target_sparsity_ratio: Optional[float] = None
    initial_sparsity_ratio: Optional[float] = None
    epoch_range: Optional[list[int]] = None
    update_frequency: int = 1
    step_range: Optional[list[int]] = None
    method: Method = "per_tensor"
    pattern: str = "1x1"
    schedule: ScheduleName = "linear"
    scope: Scope = "local"
    names: list[str] = field(default_factory=list)
    excluded_names: list[str] = field(default_factory=list)
    parameters: Optional[dict[str, float]] = None
    min_sparsity_ratio_per_layer: float = 0.0
    max_sparsity_ratio_per_layer: float = 1.0

    def __post_init__(self) -> None:
        set_ = self._set
        kind = prune_type_class(self.prune_type)
        set_("prune_type", kind.name)
        inherited = frozenset(name for name in INHERITED_DEFAULTS if getattr(self, name) is None)
        object.__setattr__(self, "_inherited", inherited)
        for name in inherited:
            set_(name, list(INHERITED_DEFAULTS[name]) if name == "epoch_range" else INHERITED_DEFAULTS[name])
        _check_choice("method", self.method, METHODS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("scope", self.scope, SCOPES)
        try:
            parsed = parse_pattern(self.pattern)
        except ValueError as error:
            raise ValueError(f"Pruner.{error}") from None
        kind.check_pattern(parsed, self.pattern)
        target = _check_ratio("target_sparsity_ratio", self.target_sparsity_ratio)
        initial = _check_ratio("initial_sparsity_ratio", self.initial_sparsity_ratio)
        set_("target_sparsity_ratio", target)
        set_("initial_sparsity_ratio", initial)
        if initial > target:
            raise ValueError(
                f"Pruner.initial_sparsity_ratio={initial} is above target_sparsity_ratio={target}: "
                "the initial ratio must be <= the target"
            )
        if target > parsed.max_sparsity:
            raise ValueError(
                f"Pruner.target_sparsity_ratio={target} is above {parsed.max_sparsity:g}, the most that "
                f"pattern={self.pattern!r} allows (N zeros in every M); lower it or use an N:M with larger N/M"
            )
        if self.scope == "global" and self.method == "per_channel":
            raise ValueError('Pruner.method="per_channel" needs scope="local": a global threshold spans tensors')
        if parsed.is_structured and self.method == "per_channel":
            raise ValueError(
                f'Pruner.method="per_channel" does not suit pattern={self.pattern!r}: use method="per_tensor"'
            )
        self._check_layer_bounds(target, parsed)
        set_("epoch_range", _check_range("epoch_range", self.epoch_range))
        if kind.one_shot_only and self.step_range is None:
            set_("step_range", [0, 0])
        if self.step_range is not None:
            set_("step_range", _check_range("step_range", self.step_range))
        if kind.one_shot_only and self.step_range != [0, 0]:
            raise ValueError(
                f"Pruner.step_range={self.step_range} does not suit prune_type={kind.name!r}, which prunes in one shot "
                "before the first step: leave step_range out (or give [0, 0])"
            )
        if not is_integer(self.update_frequency) or self.update_frequency < 1:
            raise ValueError(f"Pruner.update_frequency must be an integer >= 1, got {self.update_frequency!r}")
        set_("update_frequency", int(self.update_frequency))
        set_("names", _check_regexes("names", self.names))
        set_("excluded_names", _check_regexes("excluded_names", self.excluded_names))
        if self.parameters is not None and not isinstance(self.parameters, dict):
            raise ValueError(f"Pruner.parameters must be a mapping or None, got {self.parameters!r}")
        object.__setattr__(self, "_settings", kind.make_settings(self.parameters))
        if self.parameters is not None:
            set_("parameters", {key: float(value) for key, value in self.parameters.items()})

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    @property
    def inherited_fields(self) -> frozenset[str]:
        """The fields given as None, which a classic ``PruningConfig`` fills in with its own values."""
        return self._inherited  # type: ignore[attr-defined,no-any-return]

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def prune_type_class(self) -> type[PruneType]:
        return prune_type_class(self.prune_type)

    @property
    def settings(self) -> Any:
        """``parameters`` as the prune type's ``Settings``, defaults filled in."""
        return self._settings  # type: ignore[attr-defined]

    @property
    def algorithm_settings(self) -> dict[str, float]:
        """``parameters`` merged over the prune type's defaults, as a mapping."""
        return dataclasses.asdict(self.settings)

    def _check_layer_bounds(self, target: float, parsed: Pattern) -> None:
        low, high = self.min_sparsity_ratio_per_layer, self.max_sparsity_ratio_per_layer
        for name, value in (("min_sparsity_ratio_per_layer", low), ("max_sparsity_ratio_per_layer", high)):
            if not is_real(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"Pruner.{name} must be a number in [0, 1], got {value!r}")
            self._set(name, float(value))
        if not low <= target <= high:
            raise ValueError(
                f"Pruner.target_sparsity_ratio={target} must lie within [min_sparsity_ratio_per_layer={low}, "
                f"max_sparsity_ratio_per_layer={high}]: no layer may stay below the minimum or pass the maximum"
            )
        if parsed.is_structured and (low, high) != (0.0, 1.0):
            raise ValueError(
                f"Pruner.min/max_sparsity_ratio_per_layer do not apply to pattern={self.pattern!r}: "
                "leave them at 0 and 1"
            )


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Pruner.{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}")


def _check_ratio(name: str, value: Any) -> float:
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"Pruner.{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_range(name: str, value: Any) -> list[int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(is_integer(v) and v >= 0 for v in value)
        or value[0] > value[1]
    ):
        raise ValueError(f"Pruner.{name} must be [start, end] with integers 0 <= start <= end, got {value!r}")
    return [int(value[0]), int(value[1])]


def _check_regexes(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"Pruner.{name} must be a list of regular expressions, got {value!r}")
    for expression in value:
        if not isinstance(expression, str):
            raise ValueError(f"Pruner.{name} must hold strings, got {expression!r}")
        try:
            re.compile(expression)
        except re.error as error:
            raise ValueError(f"Pruner.{name} has an invalid regular expression {expression!r}: {error}") from None
    return list(value)

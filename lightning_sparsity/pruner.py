"""``Pruner``: what to prune, how far, and when. Plain typed fields, validated on construction."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, get_args

from lightning_sparsity.functional.patterns import METHODS, SCOPES, Method, Pattern, Scope, parse_pattern
from lightning_sparsity.functional.schedules import SCHEDULES, ScheduleName

PruneType = Literal["BasicMagnitude", "PatternLock", "GroupLasso", "SnipMomentum", "Gradient", "OBS"]
PRUNE_TYPES: tuple[str, ...] = get_args(PruneType)

#: Settings each prune type accepts in ``parameters``, with their defaults.
ALGORITHM_DEFAULTS: dict[str, dict[str, float]] = {
    "BasicMagnitude": {},
    "PatternLock": {},
    "GroupLasso": {"alpha": 1e-5},
    "SnipMomentum": {"momentum": 0.9},
    "Gradient": {},
    "OBS": {"block_size": 32, "fisher_decay": 0.95, "damping": 0.1},
}


@dataclass
class Pruner:
    """One pruning rule applied to the weights selected by ``names``.

    Args:
        prune_type: ``BasicMagnitude`` (gradual magnitude pruning), ``PatternLock`` (keep the zeros the
            model has, add none), ``GroupLasso`` (group-lasso penalty on ``pattern`` blocks plus block
            pruning), ``SnipMomentum`` (momentum of ``|w * grad|``), ``Gradient`` (``|grad|``) or ``OBS`` (Optimal
            Brain Surgeon as oBERT applies it: a block-diagonal empirical Fisher scores the weights, and the kept
            weights of a block move to make up for its pruned ones; unstructured ``"1x1"`` only).
        target_sparsity_ratio: final fraction of zeros, in [0, 1).
        initial_sparsity_ratio: fraction of zeros at the start of the ramp, at most the target.
        epoch_range: inclusive ``[first, last]`` epochs of the ramp; masks update at epoch starts and
            the target is reached at the start of ``last``.
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
            empty selects every Linear and Conv weight but the model's last one (its output head).
        excluded_names: expressions of the same form removed from the selection.
        parameters: algorithm settings, e.g. ``{"alpha": 1e-4}`` for GroupLasso; for OBS ``block_size`` (consecutive
            weights of a row per Fisher block, dividing every weight's in_features; the Fisher holds ``block_size``
            floats per weight until the ramp ends, and its inverse as many during a mask update), ``fisher_decay``
            (of its running mean) and ``damping`` (added to its diagonal, relative to the diagonal's mean).
        min_sparsity_ratio_per_layer: no weight is pruned less than this (or than the current scheduled
            ratio, if lower) when ``scope="global"`` spreads the ratio unevenly; INC's ``min_sparsity_ratio_per_op``.
        max_sparsity_ratio_per_layer: no weight is pruned more than this, in either scope; at least the target.
    """

    prune_type: PruneType = "BasicMagnitude"
    target_sparsity_ratio: float = 0.97
    initial_sparsity_ratio: float = 0.0
    epoch_range: list[int] = field(default_factory=lambda: [0, 4])
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
        _check_choice("prune_type", self.prune_type, PRUNE_TYPES)
        _check_choice("method", self.method, METHODS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("scope", self.scope, SCOPES)
        try:
            parsed = parse_pattern(self.pattern)
        except ValueError as error:
            raise ValueError(f"Pruner.{error}") from None
        target = _check_ratio("target_sparsity_ratio", self.target_sparsity_ratio)
        initial = _check_ratio("initial_sparsity_ratio", self.initial_sparsity_ratio)
        if initial > target:
            raise ValueError(
                f"Pruner.initial_sparsity_ratio={initial} is above target_sparsity_ratio={target}: "
                "the initial ratio must be <= the target"
            )
        if parsed.is_n_of_m and target > parsed.max_sparsity:
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
        if self.prune_type == "OBS" and self.pattern != "1x1":
            raise ValueError(f'Pruner.pattern={self.pattern!r} does not suit prune_type="OBS": use pattern="1x1"')
        if self.prune_type == "GroupLasso" and (parsed.is_n_of_m or parsed.is_structured):
            raise ValueError(
                f'Pruner.pattern={self.pattern!r} does not suit prune_type="GroupLasso": use a block pattern "NxM"'
            )
        self._check_layer_bounds(target, parsed)
        self.epoch_range = _check_range("epoch_range", self.epoch_range)
        if self.step_range is not None:
            self.step_range = _check_range("step_range", self.step_range)
        if not _is_int(self.update_frequency) or self.update_frequency < 1:
            raise ValueError(f"Pruner.update_frequency must be an integer >= 1, got {self.update_frequency!r}")
        self.names = _check_regexes("names", self.names)
        self.excluded_names = _check_regexes("excluded_names", self.excluded_names)
        self.parameters = self._check_parameters()

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def algorithm_settings(self) -> dict[str, float]:
        """``parameters`` merged over the prune type's defaults."""
        return {**ALGORITHM_DEFAULTS[self.prune_type], **(self.parameters or {})}

    def _check_layer_bounds(self, target: float, parsed: Pattern) -> None:
        low, high = self.min_sparsity_ratio_per_layer, self.max_sparsity_ratio_per_layer
        for name, value in (("min_sparsity_ratio_per_layer", low), ("max_sparsity_ratio_per_layer", high)):
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"Pruner.{name} must be a number in [0, 1], got {value!r}")
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

    def _check_parameters(self) -> Optional[dict[str, float]]:
        if self.parameters is None:
            return None
        if not isinstance(self.parameters, dict):
            raise ValueError(f"Pruner.parameters must be a mapping or None, got {self.parameters!r}")
        allowed = ALGORITHM_DEFAULTS[self.prune_type]
        for key, value in self.parameters.items():
            if key not in allowed:
                raise ValueError(
                    f"Pruner.parameters has unknown key {key!r} for prune_type={self.prune_type!r}; "
                    f"allowed keys: {sorted(allowed) or 'none'}"
                )
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Pruner.parameters[{key!r}] must be a finite number >= 0, got {value!r}")
        for key in ("momentum", "fisher_decay"):
            if self.parameters.get(key, 0.0) >= 1:
                raise ValueError(f"Pruner.parameters[{key!r}] must be in [0, 1), got {self.parameters[key]}")
        if self.parameters.get("damping", 1.0) <= 0:
            raise ValueError(f"Pruner.parameters['damping'] must be > 0, got {self.parameters['damping']}")
        block_size = self.parameters.get("block_size", 1)
        if block_size < 1 or not float(block_size).is_integer():
            raise ValueError(f"Pruner.parameters['block_size'] must be an integer >= 1, got {block_size}")
        return dict(self.parameters)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Pruner.{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}")


def _check_ratio(name: str, value: Any) -> float:
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"Pruner.{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_range(name: str, value: Any) -> list[int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(_is_int(v) and v >= 0 for v in value)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

"""Model structure for the ``head`` and ``neuron`` patterns, found from the model itself.

- :mod:`~lightning_sparsity.structure.groups`: :class:`StructuredGroup` and the pure functions that score and
  mask its units;
- :mod:`~lightning_sparsity.structure.analysis`: the dependency analysis that finds the groups of any model;
- :func:`structured_groups`: the groups a pruner binds to (used by ``PruningCallback``).

Pattern names: ``head`` prunes attention heads (under grouped-query attention, a key/value head together with
every query head that reads it); ``neuron`` prunes single features across the weights that make and read them:
FFN and gated-MLP neurons, conv channels (with their BatchNorm, depthwise convs and residual partners).
``channel`` is the old name of ``neuron`` and still works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from lightning_sparsity.structure.groups import (
    StructuredGroup,
    live_units,
    structured_masks,
    unit_masks,
    unit_scores,
)

if TYPE_CHECKING:
    from lightning_sparsity.structure.analysis import Analysis, Coupling, Member, analyze, example_input

_ANALYSIS = ("Analysis", "Coupling", "Member", "analyze", "example_input")

#: What each structured pattern name prunes (``channel`` is the old name of ``neuron``).
UNITS = {"head": "head", "neuron": "neuron", "channel": "neuron"}
_DESCRIPTIONS = {"head": "attention heads", "neuron": "FFN neurons or conv channels"}

__all__ = [
    "UNITS",
    "Analysis",
    "Coupling",
    "Member",
    "StructuredGroup",
    "analyze",
    "analyze_parts",
    "example_input",
    "live_units",
    "structured_groups",
    "structured_masks",
    "unit_masks",
    "unit_scores",
]


def __getattr__(name: str) -> Any:
    """The analysis loads on first use (it imports transformers): importing the engine stays light."""
    if name in _ANALYSIS:
        from lightning_sparsity.structure import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'lightning_sparsity.structure' has no attribute {name!r}")


def analyze_parts(model: nn.Module) -> Analysis:
    """:func:`analyze` on ``model`` when it has an ``example_input_array``, else on each outermost transformers
    model inside it (a LightningModule wrapping one), with full parameter names either way."""
    from transformers import PreTrainedModel

    from lightning_sparsity.structure.analysis import Analysis, analyze

    if getattr(model, "example_input_array", None) is not None or isinstance(model, PreTrainedModel):
        return analyze(model)
    parts = [(name, m) for name, m in model.named_modules() if isinstance(m, PreTrainedModel)]
    parts = [(name, m) for name, m in parts if not any(name.startswith(f"{other}.") for other, _ in parts)]
    if not parts:
        analyze(model)  # raises: says how to give an example input
    couplings, unfollowed = [], []
    for prefix, part in parts:
        found = analyze(part)
        couplings += [_prefixed(coupling, prefix) for coupling in found.couplings]
        unfollowed += [f"{prefix}.{what}" for what in found.unfollowed]
    return Analysis(tuple(couplings), tuple(unfollowed))


def structured_groups(
    model: nn.Module, structure: str, selected: Mapping[str, nn.Parameter], explicit: bool
) -> list[StructuredGroup]:
    """The groups of ``structure`` whose weights are all in ``selected``.

    Raises a ValueError when the model has no such groups, when none is wholly selected, or when ``explicit``
    names select weights outside the bound groups.
    """
    unit = UNITS[structure]
    analysis = analyze_parts(model)
    groups = [coupling.group for coupling in analysis.couplings if coupling.structure == unit]
    if not groups:
        unfollowed = (
            f"; features it could not follow: {', '.join(analysis.unfollowed[:3])}" if analysis.unfollowed else ""
        )
        raise ValueError(
            f"Pruner.pattern={structure!r} prunes {_DESCRIPTIONS[unit]}, and the dependency analysis found none "
            f"that can be removed in {type(model).__name__}{unfollowed}: use a block pattern such as '1x1' or "
            "'4x1' instead"
        )
    bound = [g for g in groups if all(name in selected for name in g.names)]
    if not bound:
        example = ", ".join(groups[0].names)
        raise ValueError(
            f"Pruner.names select no complete {structure} group: pattern={structure!r} prunes the weights "
            f"{example} together, so names must select all of them"
        )
    covered = {name for g in bound for name in g.names}
    outside = [name for name in selected if name not in covered]
    if explicit and outside:
        raise ValueError(
            f"Pruner.names select weights that are not part of a complete {structure} group: {outside[:4]}; "
            f"pattern={structure!r} prunes only {_DESCRIPTIONS[unit]}"
        )
    return bound


def _prefixed(coupling: Coupling, prefix: str) -> Coupling:
    from lightning_sparsity.structure.analysis import Coupling, Member

    group = coupling.group
    group = StructuredGroup(
        tuple(f"{prefix}.{name}" for name in group.rows),
        tuple(f"{prefix}.{name}" for name in group.columns),
        group.units,
        group.unit_size,
        tuple((f"{prefix}.{name}", dim, segments) for name, dim, segments in group.layouts),
    )
    members = tuple(
        Member(f"{prefix}.{m.module}" if m.module else prefix, m.kind, m.side, m.segments) for m in coupling.members
    )
    return Coupling(coupling.structure, coupling.units, members, group)

"""Model structure for the ``head`` and ``channel`` patterns: attention blocks and FFN pairs of BERT-family models.

A *structured group* is a set of units pruned together. Each unit is ``unit_size`` consecutive output rows of
every ``rows`` weight plus the matching input columns of every ``columns`` weight:

- ``head``: one attention head = its query, key and value rows + its columns of the attention output projection;
- ``channel``: one FFN neuron = its row of the intermediate projection + its column of the output projection.

Zeroing a unit's columns removes its contribution exactly, which is what lets ``export.slim`` delete it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_sparsity.functional.patterns import Blocks, Scope, pattern_masks

Structure = Literal["head", "channel"]
SUPPORTED_MODELS = "BERT-family models (BERT, RoBERTa, XLM-R, ELECTRA, DistilBERT, MiniLM)"


@dataclass(frozen=True)
class Layout:
    """Where a transformer layer keeps its projections (paths relative to the layer)."""

    query: str
    key: str
    value: str
    attention_output: str
    attention: str  # the module holding the head count
    heads_attribute: str
    intermediate: str
    output: str


LAYOUTS: tuple[Layout, ...] = (
    Layout(  # BERT, RoBERTa, XLM-R, ELECTRA, CamemBERT, MiniLM
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.self",
        "num_attention_heads",
        "intermediate.dense",
        "output.dense",
    ),
    Layout(  # DistilBERT
        "attention.q_lin",
        "attention.k_lin",
        "attention.v_lin",
        "attention.out_lin",
        "attention",
        "n_heads",
        "ffn.lin1",
        "ffn.lin2",
    ),
)


@dataclass(frozen=True)
class StructuredGroup:
    """``units`` units of ``unit_size`` rows of each ``rows`` weight and as many columns of each ``columns`` weight."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    units: int
    unit_size: int

    @property
    def names(self) -> tuple[str, ...]:
        return self.rows + self.columns


@dataclass(frozen=True)
class TransformerLayer:
    """One encoder layer of a BERT-family model: its module name and layout."""

    name: str
    layout: Layout

    def path(self, relative: str) -> str:
        return f"{self.name}.{relative}" if self.name else relative

    def num_heads(self, model: nn.Module) -> int:
        return int(getattr(model.get_submodule(self.path(self.layout.attention)), self.layout.heads_attribute))

    def group(self, model: nn.Module, structure: Structure) -> StructuredGroup:
        layout = self.layout
        if structure == "head":
            rows, columns = (layout.query, layout.key, layout.value), (layout.attention_output,)
            units = self.num_heads(model)
        else:
            rows, columns = (layout.intermediate,), (layout.output,)
            units = model.get_submodule(self.path(layout.intermediate)).out_features
        width = model.get_submodule(self.path(rows[0])).out_features
        return StructuredGroup(
            rows=tuple(self.path(f"{r}.weight") for r in rows),
            columns=tuple(self.path(f"{c}.weight") for c in columns),
            units=units,
            unit_size=width // units,
        )


def transformer_layers(model: nn.Module) -> list[TransformerLayer]:
    """The BERT-family encoder layers of ``model``, in module order (empty for other models)."""
    layers = []
    for name, module in model.named_modules():
        for layout in LAYOUTS:
            if all(isinstance(_find(module, path), nn.Linear) for path in _linear_paths(layout)):
                layers.append(TransformerLayer(name, layout))
                break
    return layers


def structured_groups(
    model: nn.Module, structure: Structure, selected: Mapping[str, nn.Parameter], explicit: bool
) -> list[StructuredGroup]:
    """The groups of ``structure`` whose weights are all in ``selected``.

    Raises a ValueError when the model has no such groups (not BERT-family), when none is wholly selected,
    or when ``explicit`` names select weights outside the bound groups.
    """
    layers = transformer_layers(model)
    if not layers:
        raise ValueError(
            f"Pruner.pattern={structure!r} needs the structure of {SUPPORTED_MODELS}; no attention block or FFN "
            f"of those was found in {type(model).__name__}: use a block pattern such as '1x1' or '4x1' instead"
        )
    groups = [layer.group(model, structure) for layer in layers]
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
            f"pattern={structure!r} prunes only attention heads ('head') or FFN neurons ('channel')"
        )
    return bound


def unit_scores(group: StructuredGroup, scores: Mapping[str, Tensor]) -> Tensor:
    """One score per unit: the sum of its rows' and columns' element scores."""
    total = torch.zeros(group.units, dtype=torch.float32, device=scores[group.names[0]].device)
    for name in group.rows:
        total += scores[name].float().reshape(group.units, -1).sum(dim=1)
    for name in group.columns:
        total += scores[name].float().reshape(scores[name].shape[0], group.units, -1).sum(dim=(0, 2))
    return total


def unit_masks(group: StructuredGroup, keep: Tensor, shapes: Mapping[str, torch.Size]) -> dict[str, Tensor]:
    """Weight keep-masks of the group from one boolean per unit."""
    per_feature = keep.repeat_interleave(group.unit_size)
    masks = {name: per_feature[:, None].expand(shapes[name]).clone() for name in group.rows}
    masks.update({name: per_feature[None, :].expand(shapes[name]).clone() for name in group.columns})
    return masks


def structured_masks(
    groups: Sequence[StructuredGroup], scores: Mapping[str, Tensor], sparsity: float, scope: Scope = "local"
) -> dict[str, Tensor]:
    """Keep-masks pruning a ``sparsity`` fraction of units: of each group (``local``) or of all (``global``)."""
    units = [unit_scores(g, scores)[:, None] for g in groups]
    keeps = pattern_masks(units, sparsity, Blocks(), scope=scope)
    shapes = {name: scores[name].shape for name in scores}
    masks: dict[str, Tensor] = {}
    for group, keep in zip(groups, keeps, strict=True):
        masks.update(unit_masks(group, keep[:, 0], shapes))
    return masks


def live_units(group: StructuredGroup, weights: Mapping[str, Tensor]) -> Tensor:
    """Which units still contribute: those with a non-zero weight in their columns."""
    nonzero = {name: (weights[name] != 0).float() for name in group.columns}
    return unit_scores(StructuredGroup((), group.columns, group.units, group.unit_size), nonzero) > 0


def _linear_paths(layout: Layout) -> tuple[str, ...]:
    return (layout.query, layout.key, layout.value, layout.attention_output, layout.intermediate, layout.output)


def _find(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None

"""Dependency analysis: the structured groups of a model, found by running it once, not from a table of layouts.

The model runs once on an example input with the autograd graph cut at the output of every Linear,
transformers ``Conv1D``, convolution and BatchNorm (the *boundaries*). Each boundary's output is replaced by
random values in ``[0.1, 1)``: what a feature depends on is then found whatever the weights are (pruned, zero
weights hide nothing) and no activation sits where its derivative is zero (ReLU below 0, ReLU6 above 6).
For every boundary input, backward passes find which output features of the nearest boundaries each of its
features depends on: the example is repeated along its batch dimension and each copy asks about another feature,
so one pass answers for ``COPIES`` features (one pass in all when the first depends on everything, as after a
LayerNorm);
features joined by these dependencies form connected components. A component is a unit that can be removed when
it has features read by a weight (columns), features produced by a weight (rows), and none that reach the
model's output. Components with the same members form a group (one of a single unit is left out: a residual
stream of a transformer is one component). Attention heads (a key/value head with every query head that reads
it under grouped-query attention), gated-MLP and FFN neurons, conv channels with their BatchNorm and depthwise
convs, and channels coupled by residual additions all come out of the same rule.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.autograd.graph import Node
from transformers import PreTrainedModel

from lightning_sparsity.layers import is_conv1d
from lightning_sparsity.structure.groups import StructuredGroup

Kind = Literal["linear", "conv1d", "conv", "depthwise", "norm", "unsupported"]
Side = Literal["in", "out", "both"]
Unit = Literal["head", "neuron"]
CHANNELWISE: tuple[Kind, ...] = ("depthwise", "norm")  # output feature i reads input feature i only
EXAMPLE_SEQUENCE = 8  # tokens per example sequence (fewer if the model has fewer positions)
EXAMPLE_BATCH = 1  # random values at the cut: one sequence or image shows every dependency
COPIES = 32  # copies of the example traced at once: features whose dependencies one backward pass finds


@dataclass(frozen=True)
class Member:
    """One module's share of a coupling: its input or output features (``both`` for BatchNorm and depthwise
    convs), ``segments`` blocks of ``units x size`` features."""

    module: str
    kind: Kind
    side: Side
    segments: int


@dataclass(frozen=True)
class Coupling:
    """Units that must be removed together: ``structure`` says whether a unit is an attention head (several
    features per module) or a neuron / channel (one feature per module and segment)."""

    structure: Unit
    units: int
    members: tuple[Member, ...]
    group: StructuredGroup


@dataclass(frozen=True)
class Analysis:
    """The couplings found, and the modules whose features couple in a way no group can express."""

    couplings: tuple[Coupling, ...]
    unfollowed: tuple[str, ...]


def module_kind(module: nn.Module) -> Kind | None:
    """How the analysis treats ``module``: a boundary kind, or None for a module it traces through."""
    if is_conv1d(module):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "unsupported"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == 1:
            return "conv"
        if module.groups == module.in_channels == module.out_channels:
            return "depthwise"
        return "unsupported"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "norm"
    return None


def feature_axis(kind: Kind) -> int:
    """The dimension of a boundary's input and output tensors that holds its features."""
    return -1 if kind in ("linear", "conv1d") else 1


def weight_dim(kind: Kind, side: Side) -> int:
    """The dimension of a boundary's weight that holds its input (``in``) or output features."""
    if kind == "conv1d":
        return 1 if side == "out" else 0
    return 1 if side == "in" else 0


_WIDTHS: dict[Kind, tuple[str, str]] = {
    "conv1d": ("nx", "nf"),
    "linear": ("in_features", "out_features"),
    "norm": ("num_features", "num_features"),
}


def widths(module: nn.Module, kind: Kind) -> tuple[int, int]:
    """``(input features, output features)`` of a boundary."""
    inputs, outputs = _WIDTHS.get(kind, ("in_channels", "out_channels"))
    return getattr(module, inputs), getattr(module, outputs)


def example_input(model: nn.Module) -> Any:
    """An input to trace ``model`` with: its ``example_input_array``, or random ids / pixels for a transformers
    model (from its config); a ValueError otherwise."""
    example = getattr(model, "example_input_array", None)
    if example is not None:
        return example
    if isinstance(model, PreTrainedModel):
        generator = torch.Generator().manual_seed(0)
        config = model.config
        if model.main_input_name == "input_ids":
            positions = getattr(config, "max_position_embeddings", None) or 2 * EXAMPLE_SEQUENCE
            sequence = max(2, min(EXAMPLE_SEQUENCE, positions // 2))  # half: RoBERTa's positions start past padding
            vocab = cast(int, model.get_input_embeddings().num_embeddings)  # typed as a Module's attribute
            return {"input_ids": torch.randint(0, vocab, (EXAMPLE_BATCH, sequence), generator=generator)}
        if model.main_input_name == "pixel_values":
            size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)[0]
            shape = (EXAMPLE_BATCH, config.num_channels, size, size)
            return {"pixel_values": torch.randn(shape, generator=generator)}
    raise ValueError(
        f"the structure of {type(model).__name__} is found by running it once: set its example_input_array "
        "(an input it accepts) or pass example_input"
    )


def call(model: nn.Module, example: Any) -> Any:
    """``model`` applied to ``example``: keyword arguments for a dict, positional ones for a tuple."""
    if isinstance(example, Mapping):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


def analyze(model: nn.Module, example: Any = None) -> Analysis:
    """The couplings of ``model``, traced on ``example`` (default: :func:`example_input`); names are full
    module paths. Raises a ValueError naming what it could not follow when the model cannot be traced."""
    example = on_device(example_input(model) if example is None else example, model)
    trace = _Trace(model, example)
    order = {name: index for index, (name, _) in enumerate(model.named_modules())}
    couplings, unfollowed = [], list(trace.unfollowed)
    for signature, components in _by_signature(trace.components()).items():
        coupling = _coupling(trace, signature, components, order)
        if isinstance(coupling, str):
            unfollowed.append(coupling)
        elif coupling.units > 1:  # one unit: features that only go all together, such as a residual stream
            couplings.append(coupling)
    base = _base_prefix(model)
    if base:  # a transformers task model: its head (classifier, LM head) stays whole, as in a dense model
        couplings = [c for c in couplings if all(m.module.startswith(f"{base}.") for m in c.members)]
    couplings.sort(key=lambda c: order[c.members[0].module])
    return Analysis(tuple(couplings), tuple(unfollowed))


def _base_prefix(model: nn.Module) -> str:
    """The module path of a transformers task model's base model ("" when there is none)."""
    if not isinstance(model, PreTrainedModel) or model.base_model is model:
        return ""
    return next(name for name, module in model.named_modules() if module is model.base_model)


class _Trace:
    """One run of a random-weight copy of the model with the graph cut at every boundary, and the union of
    the features that depend on each other."""

    def __init__(self, model: nn.Module, example: Any) -> None:
        self.kinds = {name: kind for name, m in model.named_modules() if (kind := module_kind(m)) is not None}
        self.widths = {name: widths(model.get_submodule(name), kind) for name, kind in self.kinds.items()}
        try:  # the example repeated along its batch dimension: one backward pass reads a feature per copy
            self.copies, outputs = COPIES, self._run(model, _repeated(example, COPIES))
        except Exception:  # noqa: BLE001 - a model that takes no bigger batch: traced on the example as it is
            try:
                self.copies, outputs = 1, self._run(model, example)
            except Exception as error:  # the model's own error, reported with what was being traced
                raise ValueError(f"could not trace {type(model).__name__} on its example input: {error}") from error
        self.offsets: dict[tuple[str, str], int] = {}
        total = 0
        for name, (inputs, outputs_) in self.widths.items():
            for side, width in (("in", inputs), ("out", outputs_)):
                self.offsets[name, side] = total
                total += width
        self.parent = list(range(total))
        self.frozen: set[int] = set()
        self.unfollowed: list[str] = []
        self._link(model, outputs)

    def _run(self, model: nn.Module, example: Any) -> list[Tensor]:
        """Runs ``model`` in eval mode with every boundary's input recorded and its output cut."""
        self.generator = torch.Generator().manual_seed(0)
        self.inputs: dict[str, Tensor] = {}
        self.leaves: dict[str, Tensor] = {}
        self.calls: dict[str, int] = defaultdict(int)
        handles = []
        for name in self.kinds:
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(self._read(name)))
            handles.append(module.register_forward_hook(self._cut(name)))
        modes = {module: module.training for module in model.modules()}
        try:
            with torch.enable_grad():
                return list(_tensors(call(model.eval(), example)))
        finally:
            for handle in handles:
                handle.remove()
            for module, training in modes.items():
                module.training = training

    def _read(self, name: str):
        def hook(module: nn.Module, args: tuple) -> tuple:
            self.calls[name] += 1
            if not args or not isinstance(args[0], Tensor) or not args[0].is_floating_point():
                return args
            features = args[0] * 1.0  # the boundary's own copy: later in-place ops on the input leave it alone
            self.inputs[name] = features
            return (features, *args[1:])

        return hook

    def _cut(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if not isinstance(output, Tensor):
                return output
            values = torch.rand(output.shape, generator=self.generator) * 0.9 + 0.1
            leaf = values.to(device=output.device, dtype=output.dtype).requires_grad_()
            self.leaves[name] = leaf
            return leaf.clone()  # in-place ops downstream (ReLU(inplace=True), +=) act on the clone

        return hook

    def node(self, name: str, side: str, feature: int) -> int:
        return self.offsets[name, side] + feature

    def find(self, node: int) -> int:
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def _link(self, model: nn.Module, outputs: Sequence[Tensor]) -> None:
        owners = {id(leaf): name for name, leaf in self.leaves.items()}
        for name, kind in self.kinds.items():
            if self.calls[name] > 1 or kind == "unsupported":  # shared or unsupported: its features stay
                self._freeze(name, "in")
                self._freeze(name, "out")
                reason = "runs more than once per forward pass" if self.calls[name] > 1 else "is not supported"
                self.unfollowed.append(f"{name} ({type(model.get_submodule(name)).__name__} {reason})")
            elif kind in CHANNELWISE:
                for feature in range(self.widths[name][0]):
                    self.union(self.node(name, "in", feature), self.node(name, "out", feature))
            features = self.inputs.get(name)
            if features is not None and (sources := _reached(features, owners)):
                self._link_input(name, features, sources)
        for output in outputs:
            reached = _reached(output, owners)
            if reached:
                for source, channels in _reach_all(output, reached, self.leaves, self.kinds):
                    self.frozen.update(self.node(source, "out", int(c)) for c in channels)

    def _link_input(self, name: str, features: Tensor, sources: list[str]) -> None:
        axis = feature_axis(self.kinds[name])
        count = features.shape[axis]
        tensors = [(features, axis)] + [(self.leaves[source], feature_axis(self.kinds[source])) for source in sources]
        copies = self.copies if all(_splits(t.shape, a, self.copies) for t, a in tensors) else 1
        first = _reach_each(features, axis, [0], copies, sources, self.leaves, self.kinds)
        if any(channels.numel() for found in first[1:] for _, channels in found):
            copies = 1  # the copies of the example are not independent here: one feature per pass
            first = _reach_each(features, axis, [0], 1, sources, self.leaves, self.kinds)
        if all(len(channels) == self.widths[source][1] for source, channels in first[0]) and count > 1:
            anchor = self.node(name, "in", 0)  # every feature reads every source feature: one component
            for feature in range(count):
                self.union(self.node(name, "in", feature), anchor)
            for source in sources:
                for channel in range(self.widths[source][1]):
                    self.union(self.node(source, "out", channel), anchor)
            return
        for start in range(0, count, copies):
            selection = list(range(start, min(start + copies, count)))
            found = (
                first
                if start == 0 and copies == 1
                else _reach_each(features, axis, selection, copies, sources, self.leaves, self.kinds)
            )
            for feature, reached in zip(selection, found, strict=False):
                node = self.node(name, "in", feature)
                for source, channels in reached:
                    for channel in channels.tolist():
                        self.union(node, self.node(source, "out", channel))

    def _freeze(self, name: str, side: str) -> None:
        width = self.widths[name][0 if side == "in" else 1]
        self.frozen.update(self.node(name, side, feature) for feature in range(width))

    def components(self) -> list[dict[tuple[str, str], list[int]]]:
        """The removable components: features by ``(module, side)``, with a reading and a producing weight
        and no feature that reaches the output or belongs to a shared or unsupported module."""
        frozen_roots = {self.find(node) for node in self.frozen}
        by_root: dict[int, dict[tuple[str, str], list[int]]] = defaultdict(lambda: defaultdict(list))
        for (name, side), offset in self.offsets.items():
            width = self.widths[name][0 if side == "in" else 1]
            for feature in range(width):
                by_root[self.find(offset + feature)][name, side].append(feature)
        removable = []
        for root, members in by_root.items():
            if root in frozen_roots:
                continue
            reads = any(side == "in" and self.kinds[name] not in CHANNELWISE for name, side in members)
            writes = any(side == "out" and self.kinds[name] not in CHANNELWISE for name, side in members)
            if reads and writes:
                removable.append(dict(members))
        return removable


def _by_signature(
    components: list[dict[tuple[str, str], list[int]]],
) -> dict[tuple[tuple[str, str, int], ...], list[dict[tuple[str, str], list[int]]]]:
    grouped: dict[tuple[tuple[str, str, int], ...], list] = defaultdict(list)
    for component in components:
        grouped[tuple(sorted((name, side, len(f)) for (name, side), f in component.items()))].append(component)
    return grouped


def _coupling(
    trace: _Trace, signature: tuple[tuple[str, str, int], ...], components: list, order: Mapping[str, int]
) -> Coupling | str:
    """The coupling of components with the same members, or why its features are too irregular for one."""
    keys = sorted({(name, side) for name, side, _ in signature}, key=lambda k: (order[k[0]], k[1]))
    components = sorted(components, key=lambda c: min(c[keys[0]]))
    units = len(components)
    members, per_unit = [], {}
    for name, side in keys:
        count = len(components[0][name, side])
        width = trace.widths[name][0 if side == "in" else 1]
        unit_of = torch.full((width,), -1)
        for unit, component in enumerate(components):
            unit_of[component[name, side]] = unit
        segments = _segments(unit_of, units, count)
        if segments is None:
            return f"{name} ({side}put features of {units} coupled units, not in regular blocks)"
        kind = trace.kinds[name]
        if kind in CHANNELWISE and side == "out":
            continue
        member_side = "both" if kind in CHANNELWISE else cast(Side, side)  # a trace's sides are "in" or "out"
        members.append(Member(name, kind, member_side, segments))
        per_unit[name] = count // segments
    structure: Unit = "neuron" if all(size == 1 for size in per_unit.values()) else "head"
    return Coupling(structure, units, tuple(members), _weights_group(members, units, per_unit))


def _segments(unit_of: Tensor, units: int, count: int) -> int | None:
    """The number of ``units x size`` blocks that lay out ``unit_of`` (each feature's unit), or None."""
    if bool((unit_of < 0).any()):
        return None
    for segments in range(1, count + 1):
        if count % segments == 0:
            expected = torch.arange(units).repeat_interleave(count // segments).repeat(segments)
            if torch.equal(unit_of, expected):
                return segments
    return None


def _weights_group(members: Sequence[Member], units: int, per_unit: Mapping[str, int]) -> StructuredGroup:
    rows: list[str] = []
    columns: list[str] = []
    layouts: list[tuple[str, int, int]] = []
    for member in members:
        if member.kind == "norm":
            continue  # BatchNorm scales features; it is not a pruned weight
        weight = f"{member.module}.weight" if member.module else "weight"
        dim = 0 if member.side == "both" else weight_dim(member.kind, member.side)
        (columns if member.side == "in" else rows).append(weight)
        if (dim, member.segments) != ((1, 1) if member.side == "in" else (0, 1)):
            layouts.append((weight, dim, member.segments))
    first = next(m.module for m in members if m.kind != "norm" and m.side != "in")
    return StructuredGroup(tuple(rows), tuple(columns), units, per_unit[first], tuple(layouts))


def _reach_all(
    tensor: Tensor, sources: Sequence[str], leaves: Mapping[str, Tensor], kinds: Mapping[str, Kind]
) -> list[tuple[str, Tensor]]:
    """The output features of each source that any element of ``tensor`` reads: one backward pass (the random
    values at the cut make an exact cancellation of dependencies as unlikely as a random tie)."""
    weights = torch.ones_like(tensor)
    grads = torch.autograd.grad(
        tensor, [leaves[name] for name in sources], weights, retain_graph=True, allow_unused=True
    )
    found = []
    for name, grad in zip(sources, grads, strict=True):
        if grad is not None:
            per_feature = (
                grad.abs().movedim(feature_axis(kinds[name]), -1).reshape(-1, grad.shape[feature_axis(kinds[name])])
            )
            found.append((name, per_feature.sum(dim=0).nonzero()[:, 0]))
    return found


def _reach_each(
    tensor: Tensor,
    axis: int,
    selection: Sequence[int],
    copies: int,
    sources: Sequence[str],
    leaves: Mapping[str, Tensor],
    kinds: Mapping[str, Kind],
) -> list[list[tuple[str, Tensor]]]:
    """For each copy of the example, the output features of each source that feature ``selection[copy]`` of
    ``tensor`` reads (empty for the copies past the selection): one backward pass for all of them, the
    copies being independent (the example repeated along its batch dimension)."""
    view = _by_copy(tensor.shape, axis, copies)
    select = torch.zeros(copies, 1, view[2], 1, dtype=tensor.dtype, device=tensor.device)
    select[torch.arange(len(selection)), 0, torch.tensor(list(selection)), 0] = 1.0
    weights = select.expand(view).reshape(tensor.shape)
    grads = torch.autograd.grad(
        tensor, [leaves[name] for name in sources], weights, retain_graph=True, allow_unused=True
    )
    found: list[list[tuple[str, Tensor]]] = [[] for _ in range(copies)]
    for name, grad in zip(sources, grads, strict=True):
        if grad is not None:
            per_copy = grad.reshape(_by_copy(grad.shape, feature_axis(kinds[name]), copies))
            reached = (torch.linalg.vector_norm(per_copy, ord=1, dim=(1, 3)) > 0).cpu()  # one pass, no temporary
            for copy_index in range(copies):
                found[copy_index].append((name, reached[copy_index].nonzero()[:, 0]))
    return found


def _by_copy(shape: torch.Size, axis: int, copies: int) -> tuple[int, int, int, int]:
    """``(copies, rows per copy, features, trailing)``: a view of a tensor of ``shape``, features on ``axis``, by
    copy of the example (rows are copy-major: the copies are stacked along the first dimension)."""
    axis %= len(shape)
    return copies, math.prod(shape[:axis]) // copies, shape[axis], math.prod(shape[axis + 1 :])


def _splits(shape: torch.Size, axis: int, copies: int) -> bool:
    return math.prod(shape[: axis % len(shape)]) % copies == 0


def _reached(tensor: Tensor, owners: Mapping[int, str]) -> list[str]:
    """The boundaries whose (cut) outputs ``tensor`` was computed from, nearest only."""
    if tensor.grad_fn is None:
        return []
    found, seen = [], set()
    stack: list[Node | None] = [tensor.grad_fn]
    while stack:
        function = stack.pop()
        if function is None or id(function) in seen:
            continue
        seen.add(id(function))
        variable = getattr(function, "variable", None)
        if variable is not None and id(variable) in owners:
            found.append(owners[id(variable)])
        stack.extend(next_function for next_function, _ in function.next_functions)
    return sorted(set(found))


def on_device(example: Any, model: nn.Module) -> Any:
    """``example`` with its tensors on the device of ``model``'s first parameter."""
    device = next((p.device for p in model.parameters()), None)
    if device is None or isinstance(example, Tensor):
        return example if device is None else example.to(device)
    if isinstance(example, Mapping):
        return {key: on_device(value, model) for key, value in example.items()}
    if isinstance(example, tuple):
        return tuple(on_device(value, model) for value in example)
    return example


def _repeated(example: Any, copies: int) -> Any:
    """``example`` with every tensor repeated ``copies`` times along its first (batch) dimension."""
    if isinstance(example, Tensor):
        return example.repeat(copies, *([1] * (example.dim() - 1))) if example.dim() else example
    if isinstance(example, Mapping):
        return {key: _repeated(value, copies) for key, value in example.items()}
    if isinstance(example, tuple):
        return tuple(_repeated(value, copies) for value in example)
    return example


def _tensors(value: Any) -> Iterator[Tensor]:
    """Every floating-point tensor with a graph in a model's output (tensors, tuples, dicts, ModelOutputs)."""
    if isinstance(value, Tensor):
        if value.grad_fn is not None:
            yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)

"""Which layers hold prunable weights, how each stores them, and finding the weights a pruner's ``names`` select."""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import Tensor, nn

PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): a Linear whose weight is stored ``in x out``. Recognised by
    name, so that this module does not import transformers."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_MODULES) or is_conv1d(module)


def as_out_in(tensor: Tensor, module: nn.Module) -> Tensor:
    """``tensor`` (a weight of ``module``, or its gradient, scores or mask) with output features first: a view,
    transposed for Conv1D (stored ``in x out``) and transposed convolutions (``in x out x kernel``)."""
    if is_conv1d(module):
        return tensor.t()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return tensor.transpose(0, 1)
    return tensor


def input_features_of(module: nn.Module, inputs: Tensor) -> Tensor:
    """A layer's input as ``(positions, in_features)``: a convolution's input channels, a Linear's last dimension."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return inputs.transpose(0, 1).reshape(inputs.shape[1], -1).t()
    return inputs.reshape(-1, inputs.shape[-1])


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of Linear, Conv1D and Conv layers by full parameter name, in registration order, shared ones once,
    empty ones left out (nothing to prune)."""
    found: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if is_prunable(module) and isinstance(weight, nn.Parameter) and id(weight) not in seen and weight.numel():
            seen.add(id(weight))
            found[f"{module_name}.weight" if module_name else "weight"] = weight
    return found


def owning_module(model: nn.Module, parameter_name: str) -> nn.Module:
    """The module that registers ``parameter_name`` (e.g. ``encoder.layer.0.query`` for ``...query.weight``)."""
    module_name, _, _ = parameter_name.rpartition(".")
    return model.get_submodule(module_name)


def tied_names(model: nn.Module, weights: dict[str, nn.Parameter]) -> dict[str, list[str]]:
    """For each weight that the model registers under more than one name, its other names (tied weights)."""
    names_by_id: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_by_id.setdefault(id(parameter), []).append(name)
    return {
        name: [other for other in names_by_id.get(id(weight), []) if other != name]
        for name, weight in weights.items()
        if len(names_by_id.get(id(weight), [])) > 1
    }


def name_matches(name: str, expression: str) -> bool:
    """Whether ``expression`` full-matches ``name`` or one of its dotted suffixes."""
    parts = name.split(".")
    return any(re.fullmatch(expression, ".".join(parts[i:])) for i in range(len(parts)))


def select_weights(model: nn.Module, names: Iterable[str], excluded_names: Iterable[str]) -> dict[str, nn.Parameter]:
    """The prunable weights that ``names`` select (all but the last, the output head, when empty),
    minus ``excluded_names``.

    A name that matches no prunable weight is a ValueError that says what it matched instead.
    """
    candidates = prunable_weights(model)
    names, excluded_names = list(names), list(excluded_names)
    if not candidates:
        raise ValueError(
            f"{type(model).__name__} has no prunable weights: PruningCallback prunes the weights of torch.nn.Linear, "
            f"Conv and transformers' Conv1D layers; this model's weights are in {_weight_layer_types(model)}"
        )
    if names:
        for expression in names:
            if not any(name_matches(name, expression) for name in candidates):
                raise ValueError(_unmatched_message("names", expression, model, candidates))
        selected = {n: p for n, p in candidates.items() if any(name_matches(n, e) for e in names)}
    else:
        selected = dict(list(candidates.items())[:-1])
    for expression in excluded_names:
        if not any(name_matches(name, expression) for name in candidates):
            raise ValueError(_unmatched_message("excluded_names", expression, model, candidates))
    return {n: p for n, p in selected.items() if not any(name_matches(n, e) for e in excluded_names)}


def _weight_layer_types(model: nn.Module) -> str:
    types = sorted({type(m).__name__ for m in model.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)})
    return ", ".join(types) or "no layer (it has no weights)"


def _unmatched_message(field: str, expression: str, model: nn.Module, candidates: dict[str, nn.Parameter]) -> str:
    others = [name for name, _ in model.named_parameters() if name_matches(name, expression)]
    if others:
        hint = f"it matches only parameters that are not Linear/Conv weights, e.g. {others[0]!r}"
    else:
        hint = f"prunable weights look like {list(candidates)[:3]}"
    return f"Pruner.{field} entry {expression!r} matches no prunable weight: {hint}"

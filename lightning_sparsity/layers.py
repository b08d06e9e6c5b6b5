"""Finding the weights a pruner's ``names`` select in a model."""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn
from transformers.pytorch_utils import Conv1D

PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, Conv1D)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of Linear and Conv layers by full parameter name, in registration order, shared ones once."""
    found: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, PRUNABLE_MODULES) and isinstance(weight, nn.Parameter) and id(weight) not in seen:
            seen.add(id(weight))
            found[f"{module_name}.weight" if module_name else "weight"] = weight
    return found


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
            f"{type(model).__name__} has no prunable weights: PruningCallback prunes the weights of "
            "torch.nn.Linear and Conv layers, and this model has none"
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


def _unmatched_message(field: str, expression: str, model: nn.Module, candidates: dict[str, nn.Parameter]) -> str:
    others = [name for name, _ in model.named_parameters() if name_matches(name, expression)]
    if others:
        hint = f"it matches only parameters that are not Linear/Conv weights, e.g. {others[0]!r}"
    else:
        hint = f"prunable weights look like {list(candidates)[:3]}"
    return f"Pruner.{field} entry {expression!r} matches no prunable weight: {hint}"

"""Intel Neural Compressor pruning configurations (``WeightPruningConfig``) run on the native engine.

:func:`pruners_from_inc` reads INC 2.x/3.x pruning settings, either the ``WeightPruningConfig`` object or its
keyword arguments as a dict, fills in INC's defaults, validates them as INC does (as ``ValueError`` s that
name the field) and returns one :class:`~lightning_sparsity.Pruner` per pruning group. The differences that
remain are listed in the INC migration guide.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional

from lightning_sparsity.functional.patterns import parse_pattern
from lightning_sparsity.numbers import is_integer, is_real
from lightning_sparsity.pruner import Pruner

#: INC's defaults (``process_and_check_config``) for every key a pruning group may set.
INC_DEFAULTS: dict[str, Any] = {
    "target_sparsity": 0.9,
    "pruning_type": "snip_momentum",
    "pattern": "4x1",
    "op_names": [],
    "excluded_op_names": [],
    "start_step": 0,
    "end_step": 0,
    "pruning_scope": "global",
    "pruning_frequency": 1,
    "min_sparsity_ratio_per_op": 0.0,
    "max_sparsity_ratio_per_op": 0.98,
    "sparsity_decay_type": "exp",
    "pruning_op_types": ["Conv", "Linear"],
    "reg_type": None,
    "reg_coeff": 0.0,
    "parameters": {"reg_coeff": 0.0},
    "resume_from_pruned_checkpoint": False,
    # accepted and without effect here: INC's memory switch, kernel backend, and keys it derives itself
    "low_memory_usage": False,
    "backend": None,
    "criterion_type": None,
    "criterion_reduce_type": "mean",
}

#: INC criteria and the Pruner settings that reproduce them (``snip`` is SNIP-momentum without memory).
CRITERIA: dict[str, tuple[str, Optional[dict[str, float]]]] = {
    "magnitude": ("BasicMagnitude", None),
    "gradient": ("Gradient", None),
    "snip": ("SnipMomentum", {"momentum": 0.0}),
    "snip_momentum": ("SnipMomentum", None),
}
PRUNING_TYPES = (*CRITERIA, *(f"{name}_progressive" for name in CRITERIA), "pattern_lock")
UNSUPPORTED_PRUNING_TYPES = ("block_mask", "retrain_free", "sparse_gpt", "wanda")
DECAY_TYPES = ("exp", "cos", "linear", "cube")
PROGRESSIVE_STEPS = 4  # INC's fixed number of progressive sub-steps per pruning interval


def pruners_from_inc(config: Any) -> list[Pruner]:
    """One :class:`Pruner` per INC pruning group of ``config``.

    ``config`` is a ``neural_compressor.WeightPruningConfig`` (INC need not be installed to convert a
    dict) or a mapping of the same keyword arguments, e.g. ``{"target_sparsity": 0.8, "pattern": "4x1",
    "pruning_configs": [{"op_names": ["query"], "pattern": "2:4"}]}``. Each entry of ``pruning_configs``
    overrides the global settings for its layers; the steps count optimizer steps, so the returned pruners
    use ``step_range``.
    """
    global_settings, groups = _read(config)
    _check_keys(global_settings, "WeightPruningConfig")
    merged = {**INC_DEFAULTS, **{k: v for k, v in global_settings.items() if v is not None}}
    pruners = []
    for index, group in enumerate(groups or [{}]):
        where = f"WeightPruningConfig.pruning_configs[{index}]" if groups else "WeightPruningConfig"
        if not isinstance(group, Mapping):
            raise ValueError(f"{where} must be a dict of pruning settings, got {type(group).__name__}")
        _check_keys(group, where)
        settings = {**merged, **{k: v for k, v in group.items() if v is not None}}
        pruners.append(_pruner(settings, where))
    return pruners


def _read(config: Any) -> tuple[Mapping[str, Any], list[Any]]:
    """The global settings and the per-group list, from a WeightPruningConfig or a dict."""
    if hasattr(config, "weight_compression") and hasattr(config, "pruning_configs"):
        return dict(config.weight_compression), list(config.pruning_configs or [])
    if isinstance(config, Mapping):
        settings = dict(config)
        groups = settings.pop("pruning_configs", None) or []
        if not isinstance(groups, (list, tuple)):
            raise ValueError(f"WeightPruningConfig.pruning_configs must be a list of dicts, got {groups!r}")
        return settings, list(groups)
    raise ValueError(
        f"pruners_from_inc expects a neural_compressor WeightPruningConfig or a dict of its arguments, "
        f"got {type(config).__name__}"
    )


def _check_keys(settings: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(settings) - set(INC_DEFAULTS))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; INC pruning keys are: {', '.join(INC_DEFAULTS)}")


def _pruner(settings: dict[str, Any], where: str) -> Pruner:
    """INC's ``check_config`` and ``get_pruner`` for one group, then the equivalent Pruner."""
    start, end, frequency = settings["start_step"], settings["end_step"], settings["pruning_frequency"]
    for key, value in (("start_step", start), ("end_step", end), ("pruning_frequency", frequency)):
        if not is_integer(value):
            raise ValueError(f"{where}.{key} must be an integer, got {value!r}")
    if start < 0:
        raise ValueError(f"{where}.start_step must be >= 0, got {start}")
    if end < start:
        raise ValueError(f"{where}.end_step={end} must be >= start_step={start}")
    if frequency < 1:
        raise ValueError(f"{where}.pruning_frequency must be >= 1, got {frequency}")
    target = _ratio(settings, "target_sparsity", where, upper_open=True)
    highest = _ratio(settings, "max_sparsity_ratio_per_op", where, upper_open=True)
    lowest = _ratio(settings, "min_sparsity_ratio_per_op", where, upper_open=False)
    _choice(settings, "pruning_scope", ("global", "local"), where)
    _choice(settings, "sparsity_decay_type", DECAY_TYPES, where)
    pruning_type = _pruning_type(settings["pruning_type"], where)
    pattern = _pattern(settings["pattern"], where)
    if parse_pattern(pattern).is_n_of_m:
        most = parse_pattern(pattern).max_sparsity
        if target > most and pruning_type != "pattern_lock":
            raise ValueError(
                f"{where}.target_sparsity={target} is above {most:g}, the most that pattern={pattern!r} allows "
                "(N zeros in every M): lower it or use an N:M with larger N/M"
            )
        highest = min(highest, most)
    if lowest > highest:
        raise ValueError(f"{where}.min_sparsity_ratio_per_op={lowest} must be <= max_sparsity_ratio_per_op={highest}")
    if lowest > target:
        raise ValueError(
            f"{where}.min_sparsity_ratio_per_op={lowest} is above target_sparsity={target}: every layer would "
            "be pruned past the target; lower it"
        )
    _check_op_types(settings["pruning_op_types"], where)
    if settings["resume_from_pruned_checkpoint"]:
        raise ValueError(
            f"{where}.resume_from_pruned_checkpoint=True is not supported: resume from the Lightning checkpoint "
            '(its masks are restored), or keep existing zeros with pruning_type="pattern_lock"'
        )
    prune_type, parameters = _algorithm(settings, pruning_type, pattern, where)
    progressive = pruning_type.endswith("_progressive")
    return Pruner(
        prune_type=prune_type,
        target_sparsity_ratio=min(target, highest),  # INC's scheduler caps the target the same way
        step_range=[start, end],
        update_frequency=_progressive_frequency(start, end, frequency) if progressive else frequency,
        pattern=pattern,
        schedule=settings["sparsity_decay_type"],
        scope=settings["pruning_scope"],
        names=_module_expressions(settings["op_names"], f"{where}.op_names", everything_is_empty=True),
        excluded_names=_module_expressions(settings["excluded_op_names"], f"{where}.excluded_op_names"),
        parameters=parameters,
        min_sparsity_ratio_per_layer=lowest,
        max_sparsity_ratio_per_layer=highest,
    )


def _ratio(settings: Mapping[str, Any], key: str, where: str, upper_open: bool) -> float:
    value = settings[key]
    if not is_real(value) or not (0.0 <= value < 1.0 if upper_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{where}.{key} must be a number in [0, 1{')' if upper_open else ']'}, got {value!r}")
    return float(value)


def _choice(settings: Mapping[str, Any], key: str, allowed: tuple[str, ...], where: str) -> None:
    if settings[key] not in allowed:
        raise ValueError(f"{where}.{key}={settings[key]!r} is not valid; allowed values: {', '.join(allowed)}")


def _pruning_type(value: Any, where: str) -> str:
    if value in PRUNING_TYPES:
        return value
    if isinstance(value, str) and value.removesuffix("_progressive") in UNSUPPORTED_PRUNING_TYPES:
        raise ValueError(
            f"{where}.pruning_type={value!r} is an INC pruner lightning-sparsity does not provide; "
            f"supported: {', '.join(PRUNING_TYPES)}"
        )
    raise ValueError(f"{where}.pruning_type={value!r} is not valid; allowed values: {', '.join(PRUNING_TYPES)}")


def _pattern(value: Any, where: str) -> str:
    """INC's pattern string without its optional ``prefix_`` (as INC reads it), checked by the engine."""
    pattern = value.split("_")[-1] if isinstance(value, str) else value
    if isinstance(pattern, str) and "mha" in pattern:
        raise ValueError(f"{where}.pattern={value!r}: multi-head-attention pruning (mha) is not supported")
    try:
        if not ("x" in pattern or ":" in pattern):  # INC's own test; keeps the engine's "head"/"channel" out
            raise ValueError(pattern)
        parse_pattern(pattern)
    except (ValueError, TypeError):
        raise ValueError(
            f'{where}.pattern={value!r} is not valid; use "NxM" (e.g. "4x1"), "channelx1", "1xchannel" or '
            '"N:M" (e.g. "2:4") with 1 <= N < M'
        ) from None
    return pattern


def _check_op_types(value: Any, where: str) -> None:
    if not isinstance(value, (list, tuple)) or sorted(value) != ["Conv", "Linear"]:
        raise ValueError(
            f"{where}.pruning_op_types={value!r} is not supported: lightning-sparsity prunes Linear and Conv "
            'weights together, so keep ["Conv", "Linear"] and leave layers out with excluded_op_names'
        )


def _algorithm(
    settings: Mapping[str, Any], pruning_type: str, pattern: str, where: str
) -> tuple[str, Optional[dict[str, float]]]:
    """The Pruner's ``prune_type`` and ``parameters`` for INC's criterion and regulariser."""
    parameters = settings["parameters"] if isinstance(settings["parameters"], Mapping) else {}
    unknown = sorted(set(parameters) - {"reg_coeff"})
    if unknown:
        raise ValueError(f"{where}.parameters has unknown keys {unknown}; INC pruning reads only 'reg_coeff'")
    coefficient = parameters.get("reg_coeff", settings["reg_coeff"])  # INC copies parameters over the top level
    if not is_real(coefficient) or coefficient < 0:
        raise ValueError(f"{where}.reg_coeff must be a number >= 0, got {coefficient!r}")
    criterion = pruning_type.removesuffix("_progressive")
    reg_type = settings["reg_type"]
    if reg_type is None:
        return ("PatternLock", None) if pruning_type == "pattern_lock" else CRITERIA[criterion]
    if reg_type != "group_lasso":
        raise ValueError(f"{where}.reg_type={reg_type!r} is not valid; allowed values: None, 'group_lasso'")
    if "x" not in pattern:
        raise ValueError(f"{where}.reg_type='group_lasso' needs an NxM pattern, got pattern={pattern!r}")
    if criterion != "magnitude":
        raise ValueError(
            f"{where}.reg_type='group_lasso' is supported with pruning_type='magnitude' (or its progressive "
            f"variant) only, got {pruning_type!r}: lightning-sparsity's GroupLasso scores blocks by magnitude"
        )
    return "GroupLasso", {"alpha": float(coefficient)}


def _progressive_frequency(start: int, end: int, frequency: int) -> int:
    """INC's progressive pruning splits every pruning interval into ``PROGRESSIVE_STEPS`` smaller updates
    (and falls back to plain pruning for short ramps or ``pruning_frequency < 4``); here the schedule is
    evaluated at those finer update points."""
    if end - start <= PROGRESSIVE_STEPS or frequency < PROGRESSIVE_STEPS:
        return frequency
    return frequency // PROGRESSIVE_STEPS


def _module_expressions(value: Any, where: str, everything_is_empty: bool = False) -> list[str]:
    """INC's module-name regexes (``re.search`` on module names) as Pruner expressions on weight names.

    ``"query"`` becomes ``.*(?:query).*\\.weight``; a leading ``^`` or trailing ``$`` anchors at the
    start or end of the module name. An empty list (or ``[".*"]``) selects all weights but the output head.
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{where} must be a list of regular expressions, got {value!r}")
    if everything_is_empty and list(value) in ([], [".*"]):
        return []
    expressions = []
    for raw in value:
        try:
            re.compile(raw)
        except (re.error, TypeError):
            raise ValueError(f"{where} has an invalid regular expression {raw!r}") from None
        anchored_start = raw.startswith("^")
        anchored_end = raw.endswith("$") and not raw.endswith("\\$")
        core = raw[1:] if anchored_start else raw
        core = core[:-1] if anchored_end else core
        expressions.append(f"{'' if anchored_start else '.*'}(?:{core}){'' if anchored_end else '.*'}\\.weight")
    return expressions

"""``prune_one_shot``: prune a model once from calibration data, block by block, with no training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lightning_sparsity.functional.patterns import METHODS, Method, NOfM, Pattern, parse_pattern
from lightning_sparsity.layers import select_weights
from lightning_sparsity.oneshot.blocks import Forward, capture_inputs, default_forward, repeated_blocks
from lightning_sparsity.oneshot.methods import ONE_SHOT_METHODS, ONE_SHOT_TYPES, OneShotType, prune_weight_
from lightning_sparsity.oneshot.statistics import InputStatistic, StatisticFactory, recording_inputs

Targets = dict[str, tuple[nn.Module, str]]


def prune_one_shot(
    model: nn.Module,
    calibration_batches: Iterable[Any],
    prune_type: OneShotType = "SparseGPT",
    sparsity: float = 0.5,
    pattern: str = "1x1",
    method: Optional[Method] = None,
    names: Sequence[str] = (),
    excluded_names: Sequence[str] = (),
    forward: Optional[Forward] = None,
    parameters: Optional[Mapping[str, float]] = None,
) -> dict[str, Tensor]:
    """Prunes the selected Linear weights of ``model`` in place, once, and returns their keep-masks (True = kept)
    by parameter name; pruned weights are exactly +0.0.

    The model's repeated blocks (the ``ModuleList`` of transformer layers) are calibrated one at a time: the
    first block's inputs are captured from ``forward(model, batch)`` on every calibration batch, each block's
    selected weights are pruned from the statistics of the inputs they see, and the pruned block's outputs
    become the next block's inputs. Selected weights outside the blocks (a pooler, a head) are pruned last, from
    a full forward pass of the pruned model. Peak memory holds the captured hidden states and one block's
    statistics. The model runs in eval mode without gradients, and gets its training mode back at the end.

    Args:
        model: any module; transformers encoders and decoders are found their layers.
        calibration_batches: batches ``forward`` takes, e.g. a DataLoader (read once; unused by BasicMagnitude).
            Every token counts, padding included: pad-free batches (one sentence each) calibrate on text only.
        prune_type: ``SparseGPT`` (Hessian of the layer's reconstruction error, OBS updates of the kept weights),
            ``Wanda`` (``|w| x ||X_j||₂``, no weight update) or ``BasicMagnitude`` (``|w|``, no data).
        sparsity: fraction of each weight's values pruned, in [0, 1) (at most N/M for ``"N:M"``).
        pattern: ``"1x1"`` (unstructured), ``"N:M"`` such as ``"2:4"`` (N zeros in every M inputs), or for Wanda
            and BasicMagnitude also ``"NxM"`` blocks such as ``"1xchannel"``.
        method: ``per_tensor`` (each weight reaches ``sparsity``) or ``per_channel`` (each output row does); None
            takes the prune type's own (``per_channel`` for Wanda, as in its paper; ``per_tensor`` otherwise).
        names: regular expressions full-matched against parameter names or their dotted suffixes; empty
            selects the Linear weights of the repeated blocks (of the whole model but its last Linear if it has
            none).
        excluded_names: expressions of the same form removed from the selection.
        forward: ``forward(model, batch)`` runs the model on a batch; None calls ``model(**batch)`` for a
            mapping, ``model(*batch)`` for a tuple or list, else ``model(batch)``.
        parameters: SparseGPT's ``block_size`` (columns per lazy-update block, default 128, a multiple of M
            for N:M) and ``damping`` (added to the Hessian's diagonal relative to its mean, default 0.01).
    """
    settings = _check_settings(prune_type, sparsity, pattern, method, parameters, forward)
    parsed = parse_pattern(pattern)
    method = method or ONE_SHOT_METHODS[prune_type].default_method
    targets = _targets(model, list(names), list(excluded_names), parsed)
    statistic = ONE_SHOT_METHODS[prune_type].statistic
    masks: dict[str, Tensor] = {}

    def prune(statistics: Mapping[str, Optional[InputStatistic]]) -> None:
        for key, recorded in statistics.items():
            if recorded is not None and recorded.tokens == 0:
                raise ValueError(
                    f"prune_one_shot: weight {key!r} saw no calibration input (its layer never ran in forward); "
                    "exclude it with excluded_names"
                )
            module, parameter_name = targets[key]
            value = None if recorded is None else recorded.value()
            weight = getattr(module, parameter_name)
            masks[key] = prune_weight_(prune_type, weight, value, sparsity, parsed, method, settings)

    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if statistic is None:
                prune(dict.fromkeys(targets))
            else:
                batches = list(calibration_batches)
                if not batches:
                    raise ValueError(f"prune_one_shot: calibration_batches is empty; {prune_type} needs data")
                _calibrate(model, targets, batches, forward or default_forward, statistic, prune)
    finally:
        model.train(training)
    return {key: masks[key] for key in targets}


def _calibrate(
    model: nn.Module,
    targets: Targets,
    batches: list[Any],
    forward: Forward,
    statistic: StatisticFactory,
    prune: Callable[[Mapping[str, Optional[InputStatistic]]], None],
) -> None:
    """Prunes the targets block by block, then those outside the blocks from full forward passes."""
    block_name, blocks = repeated_blocks(model, targets)
    prefixes = [f"{block_name}.{index}." if block_name else f"{index}." for index in range(len(blocks))]
    per_block = [{key: t for key, t in targets.items() if key.startswith(prefix)} for prefix in prefixes]
    rest = {key: t for key, t in targets.items() if not any(key in block for block in per_block)}
    last = max((index for index, block in enumerate(per_block) if block), default=-1)
    if last >= 0:
        inputs = capture_inputs(model, blocks[0], batches, forward)
        for index, block in enumerate(blocks[: last + 1]):
            if per_block[index]:
                with recording_inputs(per_block[index], statistic) as statistics:
                    inputs.run(block)
                prune(statistics)
            if index < last:
                inputs.advance(block)
        del inputs
    if rest:
        with recording_inputs(rest, statistic) as statistics:
            for batch in batches:
                forward(model, batch)
        prune(statistics)


def _targets(model: nn.Module, names: list[str], excluded_names: list[str], pattern: Pattern) -> Targets:
    """The selected weights as ``(Linear, "weight")`` by parameter name: ``names`` if given, else every Linear
    weight of the repeated blocks (else of the model, but its last Linear), less ``excluded_names``."""
    selected = select_weights(model, names, excluded_names)
    if not names:
        linear = [key for key in selected if isinstance(_owner(model, key)[0], nn.Linear)]
        block_name, blocks = repeated_blocks(model, linear)
        prefix = f"{block_name}." if block_name else ""
        selected = {key: selected[key] for key in linear if not blocks or key.startswith(prefix)}
    targets: Targets = {}
    for key, weight in selected.items():
        module, parameter_name = _owner(model, key)
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"prune_one_shot: names select {key!r}, the weight of a {type(module).__name__}; one-shot pruning "
                "calibrates torch.nn.Linear weights only: narrow names or add excluded_names"
            )
        if not pattern.divides(weight.shape):
            raise ValueError(
                f"prune_one_shot: pattern does not divide weight {key!r} of shape {tuple(weight.shape)}; "
                "exclude it or use another pattern"
            )
        targets[key] = (module, parameter_name)
    if not targets:
        raise ValueError("prune_one_shot: names select no Linear weight once excluded_names are removed")
    return targets


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    module_name, _, parameter_name = key.rpartition(".")
    return model.get_submodule(module_name), parameter_name


def _check_settings(
    prune_type: Any, sparsity: Any, pattern: Any, method: Any, parameters: Any, forward: Any
) -> dict[str, float]:
    """The prune type's settings (``parameters`` over its defaults); a ValueError naming the field for bad input."""
    if prune_type not in ONE_SHOT_TYPES:
        raise ValueError(
            f"prune_type={prune_type!r} is not valid for one-shot pruning; allowed values: "
            f"{', '.join(map(repr, ONE_SHOT_TYPES))}"
        )
    parsed = parse_pattern(pattern)
    kind = ONE_SHOT_METHODS[prune_type]
    if parsed.is_structured or (not kind.takes_blocks and parsed.kind == "blocks"):
        allowed = '"1x1", "N:M"' + (', "NxM" blocks' if kind.takes_blocks else "")
        raise ValueError(f"pattern={pattern!r} does not suit one-shot {prune_type}: use {allowed}")
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if sparsity > parsed.max_sparsity:
        raise ValueError(
            f"sparsity={sparsity} is above {parsed.max_sparsity:g}, the most that pattern={pattern!r} allows"
        )
    if method is not None and method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; allowed values: None, {', '.join(map(repr, METHODS))}")
    if forward is not None and not callable(forward):
        raise ValueError(f"forward must be a callable forward(model, batch) or None, got {forward!r}")
    settings = dict(kind.defaults)
    for key, value in (parameters or {}).items():
        if key not in kind.defaults:
            raise ValueError(
                f"parameters has unknown key {key!r} for prune_type={prune_type!r}; allowed keys: "
                f"{sorted(kind.defaults) or 'none'}"
            )
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"parameters[{key!r}] must be a finite number > 0, got {value!r}")
        settings[key] = value
    block_size = settings.get("block_size")
    if block_size is not None and (
        not float(block_size).is_integer() or (isinstance(parsed, NOfM) and block_size % parsed.m)
    ):
        raise ValueError(
            f"parameters['block_size'] must be a whole number{' and a multiple of M' if parsed.is_n_of_m else ''}, "
            f"got {block_size}"
        )
    return settings

"""Layer-sequential calibration: the model's repeated blocks (transformer layers) and their inputs.

The inputs of the first block are captured by running the model on each calibration batch up to that block;
every later block's inputs are the outputs of the block before it, run on the inputs it was given. So when
blocks are pruned in order, each one is calibrated on what the already-pruned blocks before it produce.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

Forward = Callable[[nn.Module, Any], Any]

#: Keyword arguments a block is called with that hold a key/value cache: a replayed block runs without one,
#: so that the captured call can be run again and again.
_CACHE_ARGUMENTS = ("cache", "past_key_value", "past_key_values", "layer_past")


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping, ``model(*batch)`` for a list or tuple, else ``model(batch)``."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


def repeated_blocks(model: nn.Module, weight_names: Collection[str]) -> tuple[str, list[nn.Module]]:
    """The name and members of the ``ModuleList`` of same-typed modules (the transformer layers) holding the
    most of ``weight_names``; ``("", [])`` when no such list holds any."""
    best: tuple[int, str, list[nn.Module]] = (0, "", [])
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        prefix = f"{name}." if name else ""
        held = sum(weight.startswith(prefix) for weight in weight_names)
        if held > best[0]:
            best = (held, name, list(module))
    return best[1], best[2]


class _Captured(Exception):
    """Raised by the capture hook to stop the model's forward at the first block."""


@dataclass
class BlockInputs:
    """The positional and keyword arguments of one call of a block, per calibration batch."""

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)

    def run(self, block: nn.Module) -> None:
        """Runs ``block`` on every call, for the hooks it triggers (the outputs are dropped)."""
        for args, kwargs in self.calls:
            block(*args, **kwargs)

    def advance(self, block: nn.Module) -> None:
        """Replaces each call's hidden states by what ``block`` outputs for it: the next block's inputs."""
        for index, (args, kwargs) in enumerate(self.calls):
            hidden = _hidden_states(block(*args, **kwargs))
            if args:
                args = (hidden, *args[1:])
            else:
                kwargs = {**kwargs, "hidden_states": hidden}
            self.calls[index] = (args, kwargs)


def capture_inputs(model: nn.Module, block: nn.Module, batches: Iterable[Any], forward: Forward) -> BlockInputs:
    """Runs ``forward(model, batch)`` for each batch up to ``block`` and keeps the arguments ``block`` gets."""
    inputs = BlockInputs()

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kwargs = {key: (None if key in _CACHE_ARGUMENTS else value) for key, value in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        inputs.calls.append((args, kwargs))
        raise _Captured

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                forward(model, batch)
            except _Captured:
                continue
            raise ValueError(
                "prune_one_shot: the forward pass of a calibration batch never reached the model's first "
                f"{type(block).__name__}; check that forward(model, batch) runs the model"
            )
    finally:
        handle.remove()
    return inputs


def _hidden_states(output: Any) -> Tensor:
    """A block's output hidden states: the output itself, or the first element of a tuple of outputs."""
    hidden: Optional[Any] = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(hidden, torch.Tensor):
        raise ValueError(
            f"prune_one_shot: a block returned {type(output).__name__}, not hidden states (a tensor or a tuple "
            "starting with one); layer-sequential calibration cannot feed it to the next block"
        )
    return hidden

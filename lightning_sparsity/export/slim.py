"""``slim()``: physically removes the attention heads, neurons and channels whose contribution is exactly zero.

A unit contributes nothing when every weight that reads it (its columns) is zero there, which is what the
``head``/``neuron`` patterns produce. The units come from the dependency analysis
(:func:`lightning_sparsity.structure.analyze`), so the same code slims BERT, Llama/Qwen2/Mistral, GPT-2, ViT,
ResNets and MobileNets. The modules holding dead units are shrunk in place in a copy (Linear, ``Conv1D``,
convolutions and BatchNorm), and integer sizes that attention modules keep for their reshapes (``num_heads``,
``all_head_size``, ``split_size``...) are scaled with the heads kept; the copy's outputs are then checked against
the model's on the example input.

Layers may end with different widths, which transformers configs cannot describe (``num_key_value_heads`` and
``intermediate_size`` are one number for all layers): the new sizes are recorded in ``config.slimmed`` (a plain
model keeps them in ``slimmed.json`` beside its weights) and :func:`build_model` / :func:`load_slimmed` apply
them to a freshly built model before loading the weights.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union, cast, overload

import torch
import transformers
from safetensors.torch import load_file, load_model, save_model
from torch import Tensor, nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from lightning_sparsity.structure import Coupling, analyze, example_input, live_units
from lightning_sparsity.structure.analysis import Kind, call, module_kind, on_device, weight_dim, widths

#: The config attribute (and, for a plain model, the file) holding the new sizes:
#: ``{"modules": {path: [in, out]}, "attributes": {path: {name: value}}}``.
SIZES_KEY = "slimmed"
SIZES_FILE = "slimmed.json"
SIZES_ATTRIBUTE = "slimmed_sizes"  # where a plain model keeps its sizes
#: Integer attributes of attention modules that may hold a head count or width (a name must contain one).
SIZE_WORDS = ("head", "dim", "size", "embed")


def slim(model: nn.Module, example: Any = None) -> nn.Module:
    """A copy of ``model`` without its dead units, of the same class, with the same outputs.

    ``example`` is an input for the dependency analysis (default: the model's ``example_input_array``, or random
    ids / pixels for a transformers model). Every coupling keeps at least one unit (a zero-width layer would break
    the model's reshapes). The copy records its sizes (``config.slimmed`` for a transformers model, the attribute
    ``slimmed_sizes`` otherwise), so :func:`save_slimmed` + :func:`load_slimmed` round-trip it. Raises a
    ValueError when the copy's outputs differ from the model's, naming the attention modules it resized.
    """
    example = on_device(example_input(model) if example is None else example, model)
    analysis = analyze(model, example)
    slimmed = copy.deepcopy(model)
    weights = dict(slimmed.named_parameters())
    features: dict[str, dict[str, Tensor]] = defaultdict(dict)
    kinds: dict[str, Kind] = {}
    attributes: dict[str, dict[str, int]] = {}
    for coupling in analysis.couplings:
        keep = _at_least_one(live_units(coupling.group, weights))
        if bool(keep.all()):
            continue
        for member in coupling.members:
            module = slimmed.get_submodule(member.module)
            sides = ("in", "out") if member.side == "both" else (member.side,)
            for side in sides:
                width = widths(module, member.kind)[side == "out"]
                kept = torch.arange(width).reshape(member.segments, coupling.units, -1)[:, keep].reshape(-1)
                features[member.module][side] = kept
            kinds[member.module] = member.kind
        if coupling.structure == "head":
            _merge(attributes, _head_attributes(slimmed, coupling, int(keep.sum())))
    sizes = {}
    for path, kept_features in features.items():
        module = slimmed.get_submodule(path)
        _shrink(module, kinds[path], kept_features.get("in"), kept_features.get("out"))
        sizes[path] = list(widths(module, kinds[path]))
    _set_attributes(slimmed, attributes)
    record = {"modules": sizes, "attributes": attributes}
    if isinstance(slimmed, PreTrainedModel):
        setattr(slimmed.config, SIZES_KEY, record)
    else:
        setattr(slimmed, SIZES_ATTRIBUTE, record)
    _check_outputs(model, slimmed, example, sorted(attributes))
    return slimmed


def save_slimmed(model: nn.Module, folder: Union[str, Path], example: Any = None) -> nn.Module:
    """Slims ``model`` and saves it into ``folder``: ``save_pretrained`` for a transformers model, else
    ``model.safetensors`` and ``slimmed.json``; returns the slimmed model."""
    slimmed = slim(model, example)
    if isinstance(slimmed, PreTrainedModel):  # the weights under the module names that the sizes refer to
        slimmed.save_pretrained(folder, save_original_format=False)
    else:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(slimmed, str(folder / "model.safetensors"))
        (folder / SIZES_FILE).write_text(json.dumps(getattr(slimmed, SIZES_ATTRIBUTE), indent=1))
    return slimmed


@overload
def load_slimmed(folder: Union[str, Path], model: None = None) -> PreTrainedModel: ...
@overload
def load_slimmed(folder: Union[str, Path], model: nn.Module) -> nn.Module: ...
def load_slimmed(folder: Union[str, Path], model: Optional[nn.Module] = None) -> nn.Module:
    """Loads a model saved by :func:`save_slimmed` (or any ``save_pretrained`` folder), in eval mode.

    A plain (non-transformers) model is rebuilt from ``model``, a fresh instance of its dense architecture,
    which is resized in place and returned.
    """
    folder = Path(folder)
    if model is not None:
        sizes = folder / SIZES_FILE
        if not sizes.exists():
            raise ValueError(f"{folder} holds no {SIZES_FILE}: save the model with save_slimmed")
        record = json.loads(sizes.read_text())
        _resize(model, record)
        setattr(model, SIZES_ATTRIBUTE, record)
        missing, unexpected = load_model(model, str(folder / "model.safetensors"), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"the weights in {folder} do not fit {type(model).__name__}: missing {sorted(missing)[:4]}, "
                f"unexpected {sorted(unexpected)[:4]}"
            )
        return model.eval()
    config = AutoConfig.from_pretrained(folder)
    if not config.architectures:
        raise ValueError(f"{folder}/config.json names no architecture; save the model with save_pretrained")
    return build_model(config, config.architectures[0], _load_folder_weights(folder))


def build_model(config: PretrainedConfig, architecture: str, state_dict: Mapping[str, Tensor]) -> PreTrainedModel:
    """A transformers model of class ``architecture`` resized to the config's slimmed sizes, holding
    ``state_dict`` (its tensors are used as they are, so the weights are bit-exact), in eval mode."""
    model_class = getattr(transformers, architecture, None)
    if not (isinstance(model_class, type) and issubclass(model_class, PreTrainedModel)):
        raise ValueError(f"architecture {architecture!r} is not a transformers model class")
    model = model_class(config)
    record = getattr(config, SIZES_KEY, None)
    if record is not None:
        _resize(model, record)
    missing, unexpected = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"the weights do not fit {architecture}: missing {sorted(set(missing) - tied)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}"
        )
    model.tie_weights()
    return model.eval()


def _resize(model: nn.Module, record: Mapping[str, Any]) -> None:
    """Shrinks the modules of a freshly built model to the recorded sizes (the weights are loaded after)."""
    for path, (inputs, outputs) in record["modules"].items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"the slimmed sizes name module {path!r}, which {type(model).__name__} lacks") from None
        kind = module_kind(module)
        if kind is None or kind == "unsupported":
            raise ValueError(f"the slimmed sizes name module {path!r}, a {type(module).__name__}, which slim() keeps")
        _shrink(module, kind, torch.arange(inputs), torch.arange(outputs))
    _set_attributes(model, record["attributes"])


def _shrink(module: nn.Module, kind: Kind, inputs: Optional[Tensor], outputs: Optional[Tensor]) -> None:
    """Keeps the ``inputs`` input features and ``outputs`` output features of a boundary module, in place."""
    with torch.no_grad():
        if kind == "norm":
            assert outputs is not None  # a BatchNorm's side is "both": its kept outputs are always given
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(module, name, None)
                if tensor is not None:
                    kept = tensor.index_select(0, outputs.to(tensor.device))
                    setattr(
                        module, name, nn.Parameter(kept, tensor.requires_grad) if name in module._parameters else kept
                    )
            _set_sizes(module, {"num_features": len(outputs)})
            return
        if kind == "depthwise":
            inputs = None  # one input per output: the kept outputs say it all
        weight = cast(Tensor, module.weight)  # every boundary but BatchNorm (returned above) has a weight
        kept = weight
        if outputs is not None:
            kept = kept.index_select(weight_dim(kind, "out"), outputs.to(weight.device))
        if inputs is not None:
            kept = kept.index_select(weight_dim(kind, "in"), inputs.to(weight.device))
        new_weight = nn.Parameter(kept.clone(), weight.requires_grad)
        module.weight = new_weight
        bias = getattr(module, "bias", None)
        if outputs is not None and bias is not None:
            module.bias = nn.Parameter(bias.index_select(0, outputs.to(bias.device)), bias.requires_grad)
    shape = new_weight.shape
    new_in, new_out = shape[weight_dim(kind, "in")], shape[weight_dim(kind, "out")]
    if kind == "conv1d":
        _set_sizes(module, {"nx": new_in, "nf": new_out})
    elif kind == "linear":
        _set_sizes(module, {"in_features": new_in, "out_features": new_out})
    elif kind == "depthwise":
        _set_sizes(module, {"in_channels": new_out, "out_channels": new_out, "groups": new_out})
    else:
        _set_sizes(module, {"in_channels": new_in, "out_channels": new_out})


def _head_attributes(model: nn.Module, coupling: Coupling, kept: int) -> dict[str, dict[str, int]]:
    """The integer sizes to scale in the attention module around a head coupling: any attribute named like a
    size (:data:`SIZE_WORDS`) whose value is a width or head count of the coupling, but not the head size."""
    paths = [member.module.split(".") for member in coupling.members]
    common = []
    for parts in zip(*paths, strict=False):  # up to the shortest path
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    scope = ".".join(common)
    head_size, counts = None, set()
    for member in coupling.members:
        if member.side == "both":
            continue  # BatchNorm, depthwise convs: one feature per unit
        module = model.get_submodule(member.module)
        width = widths(module, member.kind)[member.side == "out"] // member.segments
        size = width // coupling.units
        head_size = size if head_size is None else min(head_size, size)
        counts.add(width)
    assert head_size is not None  # a head coupling has several features per unit: not all its members are "both"
    counts |= {count // head_size for count in counts}
    found: dict[str, dict[str, int]] = {}
    for name, module in model.get_submodule(scope).named_modules(prefix=scope):
        if module_kind(module) is not None:
            continue
        for attribute, value in vars(module).items():
            if (
                type(value) is int
                and any(word in attribute for word in SIZE_WORDS)
                and value in counts
                and value != head_size
                and value % coupling.units == 0
            ):
                found.setdefault(name, {})[attribute] = value // coupling.units * kept
    return found


def _merge(into: dict[str, dict[str, int]], found: Mapping[str, Mapping[str, int]]) -> None:
    for path, values in found.items():
        into.setdefault(path, {}).update(values)


def _set_attributes(model: nn.Module, attributes: Mapping[str, Mapping[str, int]]) -> None:
    for path, values in attributes.items():
        _set_sizes(model.get_submodule(path), values)


def _set_sizes(module: nn.Module, sizes: Mapping[str, int]) -> None:
    """Sets integer attributes of ``module`` (torch types a module's attributes as tensors or modules only)."""
    for attribute, value in sizes.items():
        setattr(module, attribute, value)


def _check_outputs(model: nn.Module, slimmed: nn.Module, example: Any, resized: list[str]) -> None:
    """Raises a ValueError unless ``slimmed`` computes ``model``'s outputs on ``example`` within float tolerance."""
    expected, actual = (_outputs(m, example) for m in (model, slimmed))
    for before, after in zip(expected, actual, strict=True):
        scale = max(1.0, float(before.abs().max())) if before.numel() else 1.0
        if before.shape != after.shape or not torch.allclose(before, after, rtol=1e-4, atol=1e-4 * scale):
            where = f"; the attention modules it resized: {resized[:4]}" if resized else ""
            raise ValueError(
                f"slim() changed the outputs of {type(model).__name__}: a module it shrank keeps a size it "
                f"could not find{where}"
            )


def _outputs(model: nn.Module, example: Any) -> list[Tensor]:
    modes = {module: module.training for module in model.modules()}
    try:
        with torch.no_grad():
            result = call(model.eval(), example)
    finally:
        for module, training in modes.items():
            module.training = training
    return list(_float_tensors(result))


def _float_tensors(value: Any):
    if isinstance(value, Tensor):
        if value.is_floating_point():
            yield value.float()
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _float_tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _float_tensors(item)


def _at_least_one(keep: Tensor) -> Tensor:
    if not keep.any():
        keep = keep.clone()
        keep[0] = True
    return keep


def _load_folder_weights(folder: Path) -> dict[str, Tensor]:
    single = folder / "model.safetensors"
    if single.exists():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if not index.exists():
        raise ValueError(f"{folder} holds no model.safetensors (or its index): save the model with save_pretrained")
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return {name: tensor for file in files for name, tensor in load_file(folder / file).items()}

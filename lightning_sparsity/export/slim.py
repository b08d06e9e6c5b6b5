"""``slim()``: physically removes the attention heads and FFN neurons whose contribution is exactly zero.

A head or neuron contributes nothing when its columns of the output projection are all zero (what the
``head``/``channel`` patterns produce). Removing it shrinks the projections, so the model is smaller and
faster with the same outputs. transformers 5 has no ``prune_heads``, and its configs cannot describe
layers of different widths, so the kept sizes are recorded per layer in ``config.slimmed_layers`` and
:func:`build_model` (used by :func:`load_slimmed` and ``load_sparse_model``) rebuilds the model from them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch
import transformers
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from lightning_sparsity.structure import SUPPORTED_MODELS, TransformerLayer, live_units, transformer_layers

#: The config attribute holding the kept sizes: one ``{"num_heads", "intermediate_size"}`` per layer.
SIZES_KEY = "slimmed_layers"


def slim(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of ``model`` without its dead heads and FFN neurons, of the same class, with the same outputs.

    Every layer keeps at least one head and one neuron (a zero-width layer would break the model's
    reshapes). The copy's config records the kept sizes, so ``save_pretrained`` + :func:`load_slimmed`
    round-trip it.
    """
    layers = _layers_of(model)
    slimmed = copy.deepcopy(model)
    weights = dict(slimmed.named_parameters())
    sizes = []
    for layer in layers:
        heads = _at_least_one(live_units(layer.group(slimmed, "head"), weights))
        neurons = _at_least_one(live_units(layer.group(slimmed, "channel"), weights))
        _shrink_layer(slimmed, layer, heads, neurons)
        sizes.append({"num_heads": int(heads.sum()), "intermediate_size": int(neurons.sum())})
    setattr(slimmed.config, SIZES_KEY, sizes)
    return slimmed


def save_slimmed(model: PreTrainedModel, folder: Union[str, Path]) -> PreTrainedModel:
    """Slims ``model`` and saves it with ``save_pretrained`` into ``folder``; returns the slimmed model."""
    slimmed = slim(model)
    slimmed.save_pretrained(folder)
    return slimmed


def load_slimmed(folder: Union[str, Path]) -> PreTrainedModel:
    """Loads a model saved by :func:`save_slimmed` (or any ``save_pretrained`` folder), in eval mode."""
    folder = Path(folder)
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
    sizes = getattr(config, SIZES_KEY, None)
    if sizes is not None:
        _resize(model, sizes)
    missing, unexpected = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"the weights do not fit {architecture}: missing {sorted(set(missing) - tied)[:4]}, "
            f"unexpected {sorted(unexpected)[:4]}"
        )
    model.tie_weights()
    return model.eval()


def _layers_of(model: nn.Module) -> list[TransformerLayer]:
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"slim() takes a transformers PreTrainedModel, got {type(model).__name__}")
    layers = transformer_layers(model)
    if not layers:
        raise ValueError(f"slim() supports {SUPPORTED_MODELS}; {type(model).__name__} has no such layers")
    return layers


def _resize(model: PreTrainedModel, sizes: list[dict[str, int]]) -> None:
    """Shrinks each layer to its recorded sizes, keeping the first heads and neurons (weights come later)."""
    layers = _layers_of(model)
    if len(sizes) != len(layers):
        raise ValueError(f"config.{SIZES_KEY} has {len(sizes)} layers, the model {len(layers)}")
    for layer, size in zip(layers, sizes, strict=True):
        heads = torch.arange(layer.num_heads(model)) < size["num_heads"]
        width = model.get_submodule(layer.path(layer.layout.intermediate)).out_features
        _shrink_layer(model, layer, heads, torch.arange(width) < size["intermediate_size"])


def _shrink_layer(model: nn.Module, layer: TransformerLayer, heads: Tensor, neurons: Tensor) -> None:
    for structure, keep in (("head", heads), ("channel", neurons)):
        group = layer.group(model, structure)
        features = (keep.nonzero()[:, :1] * group.unit_size + torch.arange(group.unit_size)).reshape(-1)
        for name in group.rows:
            _shrink_linear(model, name.removesuffix(".weight"), features, dim=0)
        for name in group.columns:
            _shrink_linear(model, name.removesuffix(".weight"), features, dim=1)
    attention = model.get_submodule(layer.path(layer.layout.attention))
    setattr(attention, layer.layout.heads_attribute, int(heads.sum()))
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = model.get_submodule(layer.path(layer.layout.query)).out_features


def _shrink_linear(model: nn.Module, path: str, features: Tensor, dim: int) -> None:
    """Replaces the Linear at ``path`` by one keeping only ``features`` of its outputs (0) or inputs (1)."""
    old: nn.Linear = model.get_submodule(path)
    features = features.to(old.weight.device)
    size = len(features)
    shape = (old.in_features, size) if dim == 0 else (size, old.out_features)
    kind = {"device": old.weight.device, "dtype": old.weight.dtype}
    new = nn.utils.skip_init(nn.Linear, *shape, bias=old.bias is not None, **kind)
    with torch.no_grad():
        new.weight.copy_(old.weight.index_select(dim, features))
        if old.bias is not None:
            new.bias.copy_(old.bias.index_select(0, features) if dim == 0 else old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    if old.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    new.train(old.training)
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


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

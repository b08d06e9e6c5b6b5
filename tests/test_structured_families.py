"""Structured pruning beyond BERT: the dependency analysis, slim() and training on Llama/Qwen2/Mistral (grouped-
query attention), GPT-2 (``Conv1D``), ViT, ResNets (basic and bottleneck blocks) and MobileNetV2."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import pytest
import torch
from helpers import make_trainer, tiny_bert_config, toy_loader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import (
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)
from vision_models import mobilenet_v2, resnet_basic, resnet_bottleneck

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.export import load_slimmed, save_slimmed, slim
from lightning_sparsity.structure import analyze, example_input, live_units, structured_masks, unit_masks
from lightning_sparsity.structure.analysis import call

DECODER = dict(
    vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=4
)


def seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build()

    return make


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "bert": seeded(lambda: BertForSequenceClassification(tiny_bert_config())),
    "llama": seeded(lambda: LlamaForCausalLM(LlamaConfig(intermediate_size=48, **DECODER))),
    "qwen2": seeded(lambda: Qwen2ForCausalLM(Qwen2Config(intermediate_size=48, **DECODER))),  # q/k/v biases
    "mistral": seeded(lambda: MistralForCausalLM(MistralConfig(intermediate_size=48, **DECODER))),
    "gpt2": seeded(lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32))),
    "vit": seeded(
        lambda: ViTForImageClassification(
            ViTConfig(
                image_size=16,
                patch_size=4,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=48,
                num_labels=3,
            )
        )
    ),
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "mobilenet_v2": mobilenet_v2,
}

# (structure, units) of every coupling found, in module order
EXPECTED_UNITS = {
    "bert": [("head", 4), ("neuron", 64)] * 2,
    "llama": [("head", 2), ("neuron", 48)] * 2,  # 2 KV heads, each with its 4 query heads
    "qwen2": [("head", 2), ("neuron", 48)] * 2,
    "mistral": [("head", 2), ("neuron", 48)] * 2,
    "gpt2": [("head", 4), ("neuron", 128)] * 2,
    "vit": [("head", 4), ("neuron", 48)] * 2,
    # stem + stage-1 residual stream, 4 block-internal channel sets, stage-2 stream (read by fc)
    "resnet_basic": [("neuron", 8)] * 3 + [("neuron", 16)] * 3,
    # stem, 2 x 2 block-internal sets per stage, the stage-1 stream (16), the stage-2 stream (32, read by fc)
    "resnet_bottleneck": [("neuron", 4)] * 5 + [("neuron", 16)] + [("neuron", 8)] * 4 + [("neuron", 32)],
    "mobilenet_v2": [("neuron", n) for n in (8, 48, 12, 72, 72, 16, 96, 32)],
}


def first_output(model: nn.Module, example) -> torch.Tensor:
    result = call(model, example)
    return result if isinstance(result, torch.Tensor) else result[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_analysis_finds_each_familys_units(family):
    couplings = analyze(FAMILIES[family]()).couplings
    assert sorted((c.structure, c.units) for c in couplings) == sorted(EXPECTED_UNITS[family])


def test_grouped_query_attention_groups_a_kv_head_with_its_query_heads():
    model = FAMILIES["llama"]()
    head = analyze(model).couplings[0].group
    layer = "model.layers.0.self_attn"
    assert head.rows == tuple(f"{layer}.{p}_proj.weight" for p in "qkv") and head.columns == (f"{layer}.o_proj.weight",)
    scores = {name: torch.ones(model.get_parameter(name).shape) for name in head.names}
    scores[f"{layer}.k_proj.weight"][:4] = 0.0  # KV head 0 scores lowest
    masks = structured_masks([head], scores, 0.5)
    assert torch.equal(masks[f"{layer}.q_proj.weight"][:, 0], torch.arange(32) >= 16)  # query heads 0-3 go with it
    assert torch.equal(masks[f"{layer}.k_proj.weight"][:, 0], torch.arange(8) >= 4)
    assert torch.equal(masks[f"{layer}.o_proj.weight"][0], torch.arange(32) >= 16)


def test_gpt2s_fused_transposed_projection_holds_query_key_and_value_segments():
    model = FAMILIES["gpt2"]()
    head, neuron = analyze(model).couplings[:2]
    assert head.group.layouts == (
        ("transformer.h.0.attn.c_attn.weight", 1, 3),
        ("transformer.h.0.attn.c_proj.weight", 0, 1),
    )
    keep = torch.tensor([False, True, True, False])
    shapes = {name: model.get_parameter(name).shape for name in head.group.names}
    mask = unit_masks(head.group, keep, shapes)["transformer.h.0.attn.c_attn.weight"]
    per_head = keep.repeat_interleave(8)
    assert torch.equal(mask[0], per_head.repeat(3))  # (in, out): query, key and value of each head
    assert neuron.group.layouts[0] == ("transformer.h.0.mlp.c_fc.weight", 1, 1)


def test_residual_channels_couple_every_block_of_a_stage_with_its_shortcut():
    couplings = analyze(FAMILIES["resnet_bottleneck"]()).couplings
    stream = next(c for c in couplings if c.units == 32)
    members = {(m.module, m.side) for m in stream.members}
    assert {("layers.1.0.conv3", "out"), ("layers.1.0.downsample.0", "out"), ("layers.1.1.conv3", "out")} <= members
    assert {("layers.1.0.bn3", "both"), ("layers.1.0.downsample.1", "both"), ("fc", "in")} <= members
    assert ("layers.1.1.conv1", "in") in members
    depthwise = analyze(FAMILIES["mobilenet_v2"]()).couplings[1]
    assert [(m.module, m.kind, m.side) for m in depthwise.members][:3] == [
        ("features.4.conv.0", "conv", "out"),
        ("features.4.conv.1", "norm", "both"),
        ("features.4.conv.3", "depthwise", "both"),
    ]


def prune_half_of_every_coupling(model: nn.Module) -> None:
    """Zeroes half the units of every coupling (random scores), as the head/neuron patterns would."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for coupling in analyze(model).couplings:
            group = coupling.group
            scores = {n: torch.rand(model.get_parameter(n).shape, generator=generator) for n in group.names}
            for name, mask in structured_masks([group], scores, 0.5).items():
                model.get_parameter(name).mul_(mask)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_slim_removes_half_the_units_with_the_same_outputs_reloads_and_trains_on(family, tmp_path):
    model = FAMILIES[family]().eval()
    prune_half_of_every_coupling(model)
    example = example_input(model)
    with torch.no_grad():
        expected = first_output(model, example)
    slimmed = save_slimmed(model, tmp_path)
    dense = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in slimmed.parameters()) < dense
    with torch.no_grad():
        torch.testing.assert_close(first_output(slimmed, example), expected, rtol=1e-4, atol=1e-5)
    left = analyze(slimmed).couplings
    halves = [(structure, units // 2) for structure, units in EXPECTED_UNITS[family] if units // 2 > 1]
    assert sorted((c.structure, c.units) for c in left) == sorted(halves)  # a single unit is no longer a group

    fresh = None if hasattr(model, "config") else FAMILIES[family]()
    reloaded = load_slimmed(tmp_path, fresh)
    assert type(reloaded) is type(model) and not reloaded.training
    assert all(torch.equal(t, reloaded.state_dict()[k]) for k, t in slimmed.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(first_output(reloaded, example), expected, rtol=1e-4, atol=1e-5)

    reloaded.train()
    before = {n: p.detach().clone() for n, p in reloaded.named_parameters()}
    optimizer = torch.optim.SGD(reloaded.parameters(), lr=0.1)
    first_output(reloaded, example).float().pow(2).mean().backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())
    assert any(not torch.equal(p, before[n]) for n, p in reloaded.named_parameters())


class TinyCausalLM(pl.LightningModule):
    def __init__(self, family: str) -> None:
        super().__init__()
        self.model = FAMILIES[family]()

    def training_step(self, batch, batch_idx):
        input_ids, _ = batch
        return self.model(input_ids=input_ids, labels=input_ids).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoders_lose_half_their_kv_heads_and_neurons_in_training_and_slim(family):
    module = TinyCausalLM(family)
    schedule = dict(target_sparsity_ratio=0.5, step_range=[2, 4], prune_type="SnipMomentum")
    callback = PruningCallback(pruners=[Pruner(pattern="head", **schedule), Pruner(pattern="neuron", **schedule)])
    make_trainer(max_steps=6, callbacks=[callback]).fit(module, toy_loader(size=48))
    model = module.model.eval()
    for coupling in analyze(model).couplings:
        group = coupling.group
        dead = ~live_units(group, dict(model.named_parameters()))
        assert int(dead.sum()) == group.units // 2
    ids = toy_loader().dataset.tensors[0][:4]
    slimmed = slim(model)
    torch.testing.assert_close(slimmed(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    if family == "llama":
        attention = slimmed.model.layers[0].self_attn
        assert (attention.k_proj.out_features, attention.q_proj.out_features) == (4, 16)  # 1 KV head, its 4 queries


class TinyClassifier(pl.LightningModule):
    """A CNN trained on random images; its example_input_array is the network's."""

    def __init__(self, family: str) -> None:
        super().__init__()
        self.net = FAMILIES[family]()
        self.example_input_array = self.net.example_input_array

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self(images), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def image_loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 3, 32, 32, generator=generator), torch.randint(0, 10, (16,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=8)


@pytest.mark.parametrize("family", ["resnet_bottleneck", "mobilenet_v2"])
def test_cnns_lose_half_their_channels_in_training_and_slim(family):
    module = TinyClassifier(family)
    callback = PruningCallback(pruners=[Pruner(pattern="channel", target_sparsity_ratio=0.5, epoch_range=[0, 0])])
    make_trainer(max_epochs=1, callbacks=[callback]).fit(module, image_loader())
    net = module.net.eval()
    stem = net.conv1.weight if family == "resnet_bottleneck" else net.features[0].weight
    assert int((stem == 0).flatten(1).all(dim=1).sum()) == stem.shape[0] // 2
    slimmed = slim(net)
    images = net.example_input_array
    torch.testing.assert_close(slimmed(images), net(images), rtol=1e-4, atol=1e-5)
    weights = dict(net.named_parameters())
    couplings = analyze(net).couplings
    assert [int((~live_units(c.group, weights)).sum()) for c in couplings] == [c.units // 2 for c in couplings]
    assert sum(p.numel() for p in slimmed.parameters()) < sum(p.numel() for p in net.parameters())


class SharedLayer(nn.Module):
    """One Linear applied twice: its features are read and written in two places."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.example_input_array = torch.randn(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.relu(self.inner(x)))


class PermutedFeatures(nn.Module):
    """An MLP whose hidden features are interleaved between its two Linears: no block layout describes them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 4)
        self.example_input_array = torch.randn(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.fc1(x)).view(2, 2, 4).transpose(1, 2).reshape(2, 8)
        return self.fc2(hidden)


class Wrapped(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.example_input_array = net.example_input_array

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("net", "message"),
    [(SharedLayer, r"net\.inner \(Linear runs more than once"), (PermutedFeatures, r"net\.fc2 \(input features")],
)
def test_models_the_analysis_cannot_follow_fail_before_training_naming_the_module(net, message):
    module = Wrapped(net())
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    loader = DataLoader(TensorDataset(torch.randn(4, 8)), batch_size=2)
    with pytest.raises(ValueError, match=message):
        make_trainer(max_epochs=1, callbacks=[PruningCallback(pruners=[Pruner(pattern="neuron")])]).fit(module, loader)
    assert all(torch.equal(p, before[name]) for name, p in module.named_parameters())

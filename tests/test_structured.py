"""The ``head`` and ``neuron``/``channel`` patterns on BERT-family models: structure discovery, unit scoring,
targets reached in training, and failures before training (other families: test_structured_families.py)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import TinyBert, make_trainer, toy_loader
from torch import nn
from transformers import DistilBertConfig, DistilBertModel

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.export import slim
from lightning_sparsity.structure import StructuredGroup, analyze, structured_masks, unit_scores


def dead_heads(module: TinyBert, layer: int) -> list[int]:
    """Heads whose query/key/value rows and output columns are all zero (checked to agree)."""
    attention = module.model.bert.encoder.layer[layer].attention
    head_size = attention.self.attention_head_size
    dead = []
    for head in range(attention.self.num_attention_heads):
        rows = slice(head * head_size, (head + 1) * head_size)
        parts = [attention.self.query.weight[rows], attention.self.key.weight[rows], attention.self.value.weight[rows]]
        parts.append(attention.output.dense.weight[:, rows])
        zero = [bool((part == 0).all()) for part in parts]
        assert len(set(zero)) == 1, f"head {head} of layer {layer} is only partly pruned"
        if zero[0]:
            dead.append(head)
    return dead


def dead_neurons(module: TinyBert, layer: int) -> torch.Tensor:
    block = module.model.bert.encoder.layer[layer]
    rows = (block.intermediate.dense.weight == 0).all(dim=1)
    columns = (block.output.dense.weight == 0).all(dim=0)
    assert torch.equal(rows, columns), "FFN rows and columns pruned apart"
    return rows


def test_structured_patterns_parse_and_reject_unsuitable_settings():
    assert Pruner(pattern="head").parsed_pattern.is_structured
    assert Pruner(pattern="channel").parsed_pattern.structure == "channel"
    with pytest.raises(ValueError, match="per_channel"):
        Pruner(pattern="head", method="per_channel")
    with pytest.raises(ValueError, match="GroupLasso"):
        Pruner(pattern="channel", prune_type="GroupLasso")
    with pytest.raises(ValueError, match="'head'.*'channel'|\"head\".*\"channel\""):
        Pruner(pattern="heads")


def test_heads_and_neurons_are_found_in_bert_and_distilbert():
    couplings = analyze(TinyBert().model).couplings  # the classifier and its pooler (the task head) stay whole
    assert [(c.structure, c.units) for c in couplings] == [("head", 4), ("neuron", 64)] * 2
    head = couplings[0].group
    layer = "bert.encoder.layer.0.attention"
    assert head.rows == tuple(f"{layer}.self.{p}.weight" for p in ("query", "key", "value"))
    assert head.columns == (f"{layer}.output.dense.weight",) and (head.units, head.unit_size) == (4, 8)
    distil = DistilBertModel(DistilBertConfig(vocab_size=64, dim=32, n_layers=3, n_heads=2, hidden_dim=48))
    couplings = analyze(distil).couplings
    assert len(couplings) == 6
    assert couplings[5].group == StructuredGroup(
        ("transformer.layer.2.ffn.lin1.weight",), ("transformer.layer.2.ffn.lin2.weight",), 48, 1
    )
    assert couplings[0].group.unit_size == 16


def test_a_unit_is_scored_over_all_its_rows_and_columns():
    group = StructuredGroup(rows=("q", "k"), columns=("o",), units=2, unit_size=2)
    scores = {"q": torch.ones(4, 3), "k": torch.ones(4, 3), "o": torch.ones(5, 4)}
    scores["o"][:, :2] = 10.0  # unit 0 has small rows but large output columns
    scores["q"][2:] = 0.0
    assert torch.equal(unit_scores(group, scores), torch.tensor([6 + 6 + 100.0, 0 + 6 + 10.0]))
    masks = structured_masks([group], scores, 0.5)
    assert torch.equal(masks["q"][:, 0], torch.tensor([True, True, False, False]))
    assert torch.equal(masks["o"][0], torch.tensor([True, True, False, False]))
    assert masks["k"].shape == (4, 3) and masks["o"].shape == (5, 4)


def test_global_scope_pools_the_units_of_all_groups():
    groups = [StructuredGroup(("a",), ("b",), 4, 1), StructuredGroup(("c",), ("d",), 4, 1)]
    scores = {"a": torch.full((4, 2), 5.0), "b": torch.ones(2, 4), "c": torch.zeros(4, 2), "d": torch.zeros(2, 4)}
    scores["a"][2] = 1.0
    scores["c"][0] = 100.0
    masks = structured_masks(groups, scores, 0.5, scope="global")  # 4 of the 8 units, wherever they are
    assert torch.equal(masks["a"][:, 0], torch.tensor([True, True, False, True]))
    assert torch.equal(masks["c"][:, 0], torch.tensor([True, False, False, False]))
    assert torch.equal(masks["d"][0], masks["c"][:, 0])


def test_head_and_channel_patterns_reach_their_targets_in_training():
    module = TinyBert()
    callback = PruningCallback(
        pruners=[
            Pruner(pattern="head", target_sparsity_ratio=0.5, epoch_range=[0, 1]),
            Pruner(pattern="channel", target_sparsity_ratio=0.75, epoch_range=[0, 1], scope="global"),
        ]
    )
    make_trainer(max_epochs=2, callbacks=[callback]).fit(module, toy_loader())
    assert [len(dead_heads(module, layer)) for layer in (0, 1)] == [2, 2]
    assert int(sum(dead_neurons(module, layer).sum() for layer in (0, 1))) == 96  # 75% of 2 x 64 neurons
    rows = {row.name: row for row in callback.report()}
    assert rows["model.bert.encoder.layer.1.attention.self.value.weight"].sparsity == 0.5
    assert not any("pooler" in name or "classifier" in name for name in rows)
    module.model.eval()
    slimmed = slim(module.model)
    ids = toy_loader().dataset.tensors[0][:8]
    torch.testing.assert_close(slimmed(input_ids=ids).logits, module.model(input_ids=ids).logits)
    layers = slimmed.bert.encoder.layer
    assert [layer.attention.self.num_attention_heads for layer in layers] == [2, 2]
    assert [layer.attention.self.query.out_features for layer in layers] == [16, 16]
    assert sum(layer.intermediate.dense.out_features for layer in layers) == 32


def test_gradient_scored_heads_reach_the_target_by_steps():
    module = TinyBert()
    pruner = Pruner(prune_type="SnipMomentum", pattern="head", target_sparsity_ratio=0.75, step_range=[2, 6])
    callback = PruningCallback(pruners=[pruner])
    make_trainer(max_steps=8, callbacks=[callback]).fit(module, toy_loader())
    assert [len(dead_heads(module, layer)) for layer in (0, 1)] == [3, 3]


class TinyDistilBert(pl.LightningModule):
    """A bare DistilBertModel: its last Linear is the last layer's FFN output projection."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = DistilBertModel(DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64))

    def training_step(self, batch, batch_idx):
        input_ids, labels = batch
        logits = self.model(input_ids=input_ids).last_hidden_state[:, 0, :2]
        return nn.functional.cross_entropy(logits, labels)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_default_names_prune_every_layer_of_distilbert_even_the_last_linear():
    module = TinyDistilBert()
    callback = PruningCallback(pruners=[Pruner(pattern="channel", target_sparsity_ratio=0.5, epoch_range=[0, 0])])
    make_trainer(max_epochs=1, callbacks=[callback]).fit(module, toy_loader(size=16))
    for layer in module.model.transformer.layer:
        rows = (layer.ffn.lin1.weight == 0).all(dim=1)
        assert torch.equal(rows, (layer.ffn.lin2.weight == 0).all(dim=0)) and int(rows.sum()) == 32
    slimmed = slim(module.model)
    assert [(layer.attention.n_heads, layer.ffn.lin1.out_features) for layer in slimmed.transformer.layer] == [
        (4, 32)
    ] * 2


class PlainMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Embedding(64, 16), nn.Flatten(), nn.Linear(128, 16), nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        input_ids, labels = batch
        return nn.functional.cross_entropy(self.net(input_ids), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class PlainMLPWithExample(PlainMLP):
    """Two Linears: their 16 features are neurons, and there is no attention."""

    def __init__(self) -> None:
        super().__init__()
        self.example_input_array = torch.zeros(2, 8, dtype=torch.long)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids)


def test_neurons_of_any_model_with_an_example_input_are_pruned():
    module = PlainMLPWithExample()
    callback = PruningCallback(pruners=[Pruner(pattern="neuron", target_sparsity_ratio=0.25, epoch_range=[0, 0])])
    make_trainer(max_epochs=1, callbacks=[callback]).fit(module, toy_loader(size=16))
    first, second = module.net[2].weight, module.net[3].weight
    dead = (second == 0).all(dim=0)
    assert int(dead.sum()) == 4 and torch.equal((first == 0).all(dim=1), dead)


@pytest.mark.parametrize(
    ("module", "pruner", "message"),
    [
        (PlainMLP, Pruner(pattern="head"), "set its example_input_array"),
        (PlainMLPWithExample, Pruner(pattern="head"), "prunes attention heads, and the dependency analysis found none"),
        (TinyBert, Pruner(pattern="head", names=[r".*query\.weight"]), "no complete head group"),
        (TinyBert, Pruner(pattern="channel", names=[r".*dense\.weight"]), "not part of a complete channel group"),
    ],
)
def test_unsuitable_models_and_names_fail_before_training(module, pruner, message):
    model = module()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        make_trainer(max_epochs=1, callbacks=[PruningCallback(pruners=[pruner])]).fit(model, toy_loader())
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())

"""Export: slim() exactness on BERT-family models, compressed checkpoints, and weight conversions."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import tiny_bert_config
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertModel,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from lightning_sparsity import Pruner
from lightning_sparsity.export import (
    is_two_four_sparse,
    load_slimmed,
    load_sparse,
    load_sparse_model,
    make_permanent,
    save_slimmed,
    save_sparse,
    semi_structured_unavailable,
    slim,
    to_dense,
    to_semi_structured,
)
from lightning_sparsity.functional.bits import pack_bits, unpack_bits
from lightning_sparsity.sparsifier import Sparsifier
from lightning_sparsity.structure import analyze, unit_masks

# (heads, neurons) to kill per layer: layer 1 loses every head, so slim() must keep one.
DEAD = [([0, 2], list(range(0, 64, 3))), ([0, 1, 2, 3], list(range(40)))]


def tiny_models() -> list[nn.Module]:
    torch.manual_seed(0)
    roberta = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    roberta.intermediate_size, roberta.max_position_embeddings = 64, 16
    return [
        BertForSequenceClassification(tiny_bert_config()),
        RobertaForSequenceClassification(roberta),
        DistilBertModel(DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, hidden_dim=64)),
    ]


def kill_units(model: nn.Module) -> None:
    """Zeroes the output-projection columns of the DEAD heads and neurons (what head/neuron pruning leaves)."""
    couplings = analyze(model).couplings
    assert [c.structure for c in couplings] == ["head", "neuron"] * 2
    with torch.no_grad():
        for coupling, units in zip(couplings, [units for layer in DEAD for units in layer], strict=True):
            group = coupling.group
            keep = torch.ones(group.units, dtype=torch.bool)
            keep[units] = False
            shapes = {name: model.get_parameter(name).shape for name in group.columns}
            for name, mask in unit_masks(dataclasses.replace(group, rows=()), keep, shapes).items():
                model.get_parameter(name).mul_(mask)


def outputs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=(input_ids != 2).long())[0]


@pytest.fixture
def input_ids() -> torch.Tensor:
    ids = torch.randint(3, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    ids[0, 5:] = 2  # padding, masked out
    return ids


@pytest.mark.parametrize("model", tiny_models(), ids=lambda m: type(m).__name__)
def test_slim_removes_dead_heads_and_neurons_with_the_same_outputs(model, input_ids, tmp_path):
    kill_units(model.eval())
    expected = outputs(model, input_ids)
    couplings = analyze(model).couplings
    slimmed = slim(model)
    assert type(slimmed) is type(model)
    kept = [slimmed.get_parameter(c.group.rows[0]).shape[0] // c.group.unit_size for c in couplings]
    assert kept == [2, 64 - 22, 1, 24]  # heads, neurons of each layer
    first = couplings[0].group
    assert slimmed.get_parameter(first.rows[0]).shape == (16, 32)  # 2 heads of 8
    assert sum(p.numel() for p in slimmed.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(outputs(slimmed, input_ids), expected, rtol=1e-5, atol=1e-6)
    assert model.get_parameter(first.rows[0]).shape == (32, 32), "slim() must leave the original model whole"

    save_slimmed(model, tmp_path)
    reloaded = load_slimmed(tmp_path)
    assert type(reloaded) is type(model) and not reloaded.training
    assert reloaded.config.slimmed == slimmed.config.slimmed
    assert all(torch.equal(t, reloaded.state_dict()[k]) for k, t in slimmed.state_dict().items())
    torch.testing.assert_close(outputs(reloaded, input_ids), expected, rtol=1e-5, atol=1e-6)


def test_slim_keeps_live_models_whole_and_ties_weights_on_reload(input_ids, tmp_path):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config()).eval()
    slimmed = slim(model)
    assert slimmed.config.slimmed == {"modules": {}, "attributes": {}}
    torch.testing.assert_close(outputs(slimmed, input_ids), outputs(model, input_ids), rtol=0, atol=0)
    save_slimmed(model, tmp_path)
    reloaded = load_slimmed(tmp_path)
    assert reloaded.cls.predictions.decoder.weight is reloaded.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(outputs(reloaded, input_ids), outputs(model, input_ids), rtol=0, atol=0)


class UnrecognisedHeadCount(nn.Module):
    """Attention whose head count is an attribute slim() cannot recognise (``h``): slimming must fail loudly."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.h = 4
        self.qkv = nn.ModuleList(nn.Linear(16, 16) for _ in range(3))
        self.out = nn.Linear(16, 16)
        with torch.no_grad():
            self.out.weight[:, :8] = 0.0  # two dead heads of 4
        self.example_input_array = torch.randn(2, 5, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (p(x).view(*x.shape[:2], self.h, -1).transpose(1, 2) for p in self.qkv)
        mixed = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return self.out(mixed.transpose(1, 2).reshape(*x.shape[:2], -1))


@pytest.mark.parametrize(
    ("model", "message"),
    [(nn.Linear(4, 4), "example_input_array"), (UnrecognisedHeadCount(), "changed the outputs")],
)
def test_slim_rejects_other_models(model, message):
    with pytest.raises(ValueError, match=message):
        slim(model)


def sample_state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    sparse = torch.randn(33, 17, generator=generator) * (torch.rand(33, 17, generator=generator) < 0.1)
    sparse[0, :3] = torch.tensor([-0.0, float("nan"), float("-inf")])
    return {
        "sparse": sparse,
        "half": (torch.randn(8, 16, generator=generator) * (torch.arange(16) % 5 == 0)).half(),
        "bf16": torch.zeros(3, 5, dtype=torch.bfloat16),
        "dense": torch.randn(10, generator=generator),
        "scalar": torch.tensor(0.0),
        "ids": torch.zeros(7, dtype=torch.long),
        "empty": torch.zeros(0, 4),
    }


def bits(tensor: torch.Tensor) -> torch.Tensor:
    views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return tensor.view(views[tensor.element_size()]) if tensor.is_floating_point() else tensor


def test_save_sparse_round_trips_bit_exact_and_compresses(tmp_path):
    state = sample_state_dict()
    save_sparse(state, tmp_path / "sparse.safetensors")
    save_file(state, str(tmp_path / "dense.safetensors"))
    loaded = load_sparse(tmp_path / "sparse.safetensors")
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(bits(loaded[name]), bits(tensor)), name
    assert (tmp_path / "sparse.safetensors").stat().st_size < (tmp_path / "dense.safetensors").stat().st_size


@pytest.mark.parametrize("size", [1, 7, 8, 9, 100])
def test_bitmask_packing_round_trips(size):
    mask = torch.rand(size, generator=torch.Generator().manual_seed(size)) < 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (size + 7) // 8
    assert torch.equal(unpack_bits(packed, [size]), mask)


def test_sparse_checkpoint_rebuilds_a_slimmed_transformers_model(input_ids, tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    kill_units(model)
    slimmed = slim(model)
    with torch.no_grad():  # unstructured zeros on top, so the checkpoint has something to compress
        for parameter in slimmed.parameters():
            parameter.mul_(torch.rand_like(parameter) < 0.3)
    save_sparse(slimmed, tmp_path / "model.safetensors")
    rebuilt = load_sparse_model(tmp_path / "model.safetensors")
    assert type(rebuilt) is BertForSequenceClassification
    assert all(torch.equal(t, rebuilt.state_dict()[k]) for k, t in slimmed.state_dict().items())
    torch.testing.assert_close(outputs(rebuilt, input_ids), outputs(slimmed, input_ids), rtol=0, atol=0)


def test_loaders_reject_other_files(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a save_sparse checkpoint"):
        load_sparse(tmp_path / "plain.safetensors")
    save_sparse({"w": torch.zeros(2)}, tmp_path / "state.safetensors")
    with pytest.raises(ValueError, match="plain state dict"):
        load_sparse_model(tmp_path / "state.safetensors")
    with pytest.raises(ValueError, match="stores tensors only"):
        save_sparse({"step": 3}, tmp_path / "bad.safetensors")


def test_engine_pruned_weights_store_a_bitmask_and_their_kept_values(tmp_path):
    torch.manual_seed(0)
    weights = {"w": nn.Parameter(torch.randn(64, 64))}
    Sparsifier(Pruner(target_sparsity_ratio=0.9), weights).update_masks(0.9)
    weight = weights["w"].detach()
    assert not torch.signbit(weight[weight == 0]).any(), "pruned weights must be +0.0"
    save_sparse({"w": weight}, tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as file:
        stored = {key: file.get_tensor(key).nbytes for key in file.keys()}
    assert stored == {"sparse_mask/w": 4096 // 8, "sparse_values/w": (4096 - round(0.9 * 4096)) * 4}
    assert torch.equal(load_sparse(tmp_path / "w.safetensors")["w"], weight)


def test_make_permanent_folds_torch_prune_masks():
    layer = nn.Linear(8, 4)
    prune.l1_unstructured(layer, "weight", amount=0.5)
    expected = layer.weight.detach().clone()
    make_permanent(nn.Sequential(layer))
    assert not hasattr(layer, "weight_orig") and not prune.is_pruned(layer)
    assert isinstance(layer.weight, nn.Parameter) and torch.equal(layer.weight, expected)
    zeros = layer.weight[layer.weight == 0]
    assert zeros.numel() == 16 and not torch.signbit(zeros).any()


def test_two_four_sparsity_is_recognised():
    weight = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 0.0]])
    assert is_two_four_sparse(weight)
    weight[0, 0] = 5.0
    assert not is_two_four_sparse(weight)
    assert not is_two_four_sparse(torch.zeros(2, 6))


@pytest.mark.skipif(semi_structured_unavailable() == "", reason="this machine can run 2:4 sparse kernels")
def test_semi_structured_conversion_says_why_it_cannot_run_here():
    with pytest.raises(RuntimeError, match="2:4 semi-structured sparsity needs"):
        to_semi_structured(nn.Linear(64, 64))


@pytest.mark.skipif(semi_structured_unavailable() != "", reason=semi_structured_unavailable() or "GPU available")
def test_semi_structured_weights_compute_the_same_outputs_on_gpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 64)).half().cuda()
    with torch.no_grad():
        for layer in model:
            layer.weight.view(-1, 4)[:, :2] = 0.0
    inputs = torch.randn(64, 128, dtype=torch.half, device="cuda")
    expected = model(inputs)
    assert to_semi_structured(model) == ["0", "1"]
    torch.testing.assert_close(model(inputs), expected, rtol=1e-3, atol=1e-3)
    to_dense(model)
    assert not isinstance(model[0].weight.data, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(model(inputs), expected, rtol=1e-3, atol=1e-3)

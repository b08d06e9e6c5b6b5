"""The one-shot functional core: input statistics, the SparseGPT update, Wanda scores, exact masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_sparsity.export import is_two_four_sparse
from lightning_sparsity.functional.criteria import wanda_scores
from lightning_sparsity.functional.patterns import parse_pattern
from lightning_sparsity.oneshot import (
    FeatureNormStatistic,
    HessianStatistic,
    prune_weight_,
    recording_inputs,
    sparsegpt_prune_,
)


def correlated_inputs(features: int, tokens: int, seed: int = 0) -> torch.Tensor:
    """``tokens x features`` inputs with correlated features, as hidden states have (a Hessian far from diagonal)."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator)
    scales = torch.rand(features, generator=generator) * 3 + 0.1
    return (torch.randn(tokens, features, generator=generator) @ mixing) * scales


def hessian_of(inputs: torch.Tensor) -> torch.Tensor:
    return 2.0 * inputs.T @ inputs / inputs.shape[0]


def random_weight(rows: int, columns: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))


def output_error(dense: torch.Tensor, pruned: torch.Tensor, inputs: torch.Tensor) -> float:
    return (inputs @ (dense - pruned).T).square().sum().item()


def test_statistics_from_hooks_equal_their_formulas_over_batches_of_any_size():
    layer = nn.Linear(6, 3)
    batches = [torch.randn(2, 5, 6), torch.randn(1, 3, 6), torch.randn(4, 6)]
    with recording_inputs({"w": (layer, "weight")}, HessianStatistic) as hessians:
        for batch in batches:
            layer(batch)
    with recording_inputs({"w": (layer, "weight")}, FeatureNormStatistic) as norms:
        for batch in batches:
            layer(batch)
    tokens = torch.cat([batch.reshape(-1, 6) for batch in batches])
    assert hessians["w"].tokens == norms["w"].tokens == 17
    torch.testing.assert_close(hessians["w"].value(), hessian_of(tokens))
    torch.testing.assert_close(norms["w"].value(), tokens.square().sum(dim=0))
    layer(batches[0])  # the hooks are gone once the context closes
    assert hessians["w"].tokens == 17


def test_wanda_scores_are_weight_magnitude_times_input_feature_norm():
    weight = random_weight(4, 6)
    squared_norms = torch.rand(6) * 5
    expected = torch.tensor(
        [[abs(weight[i, j].item()) * squared_norms[j].item() ** 0.5 for j in range(6)] for i in range(4)]
    )
    torch.testing.assert_close(wanda_scores(weight, squared_norms.sqrt()), expected)


def test_wanda_prunes_the_lowest_scores_of_every_output_row():
    weight = random_weight(8, 16)
    squared_norms = torch.rand(16) * 4
    keep = prune_weight_("Wanda", weight.clone(), squared_norms, 0.25, parse_pattern("1x1"), "per_channel", {})
    scores = weight.abs() * squared_norms.sqrt()
    for row in range(8):
        pruned = set(torch.nonzero(~keep[row]).flatten().tolist())
        assert pruned == set(scores[row].topk(4, largest=False).indices.tolist())


def test_sparsegpt_pruning_the_first_column_is_the_exact_obs_update():
    """Column 0 is processed first with every other column free: SparseGPT's update is then the OBS formula
    ``w - w_0 / [H⁻¹]_00 x H⁻¹[0, :]`` on the damped Hessian."""
    inputs = correlated_inputs(8, 64)
    hessian = hessian_of(inputs)
    weight = random_weight(1, 8)
    weight[0, 0] = 1e-3  # the lowest saliency by far: the one weight a 1/8 sparsity prunes
    damping = 0.01
    damped = hessian + damping * hessian.diagonal().mean() * torch.eye(8)
    inverse = torch.linalg.inv(damped.double()).float()
    expected = weight - weight[0, 0] / inverse[0, 0] * inverse[0]
    pruned = weight.clone()
    keep = sparsegpt_prune_(pruned, hessian, 1 / 8, parse_pattern("1x1"), damping=damping)
    assert keep.tolist() == [[False] + [True] * 7]
    assert pruned[0, 0].item() == 0.0
    torch.testing.assert_close(pruned[0, 1:], expected[0, 1:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pattern", ["1x1", "2:4"])
def test_sparsegpt_reconstructs_outputs_better_than_magnitude_and_than_its_own_mask_without_updates(pattern):
    inputs = correlated_inputs(64, 512)
    weight = random_weight(16, 64)
    parsed = parse_pattern(pattern)
    pruned = weight.clone()
    keep = sparsegpt_prune_(pruned, hessian_of(inputs), 0.5, parsed, block_size=16)
    magnitude = weight.clone()
    prune_weight_("BasicMagnitude", magnitude, None, 0.5, parsed, "per_tensor", {})
    same_mask_no_update = weight * keep
    sparsegpt_error = output_error(weight, pruned, inputs)
    assert sparsegpt_error < 0.8 * output_error(weight, magnitude, inputs)
    assert sparsegpt_error < 0.8 * output_error(weight, same_mask_no_update, inputs)


@pytest.mark.parametrize("prune_type", ["SparseGPT", "Wanda", "BasicMagnitude"])
@pytest.mark.parametrize(
    ("sparsity", "method", "columns"), [(0.3, "per_tensor", 200), (0.7, "per_tensor", 96), (0.55, "per_channel", 200)]
)
def test_sparsity_is_exact_per_tensor_and_per_row(prune_type, sparsity, method, columns):
    inputs = correlated_inputs(columns, 300)
    weight = random_weight(12, columns)
    statistic = {"SparseGPT": hessian_of(inputs), "Wanda": inputs.square().sum(dim=0), "BasicMagnitude": None}
    settings = {"block_size": 64, "damping": 0.01}  # blocks that do not divide the columns evenly
    keep = prune_weight_(prune_type, weight, statistic[prune_type], sparsity, parse_pattern("1x1"), method, settings)
    pruned_per_row = (~keep).sum(dim=1)
    if method == "per_channel":
        assert pruned_per_row.tolist() == [round(sparsity * columns)] * 12
    else:
        assert pruned_per_row.sum().item() == round(sparsity * 12 * columns)
    assert torch.equal(weight == 0, ~keep)


@pytest.mark.parametrize("prune_type", ["SparseGPT", "Wanda", "BasicMagnitude"])
def test_two_four_keeps_exactly_two_of_every_four_inputs(prune_type):
    inputs = correlated_inputs(32, 200)
    weight = random_weight(8, 32)
    statistic = {"SparseGPT": hessian_of(inputs), "Wanda": inputs.square().sum(dim=0), "BasicMagnitude": None}
    settings = {"block_size": 8, "damping": 0.01}
    keep = prune_weight_(prune_type, weight, statistic[prune_type], 0.5, parse_pattern("2:4"), "per_tensor", settings)
    assert keep.reshape(8, 8, 4).sum(dim=-1).eq(2).all()
    assert is_two_four_sparse(weight)


@pytest.mark.parametrize("prune_type", ["SparseGPT", "Wanda", "BasicMagnitude"])
def test_pruned_weights_are_positive_zero(prune_type):
    inputs = correlated_inputs(16, 100)
    weight = -random_weight(8, 16).abs()  # all negative: a product or update could leave -0.0
    statistic = {"SparseGPT": hessian_of(inputs), "Wanda": inputs.square().sum(dim=0), "BasicMagnitude": None}
    settings = {"block_size": 8, "damping": 0.01}
    keep = prune_weight_(prune_type, weight, statistic[prune_type], 0.5, parse_pattern("1x1"), "per_tensor", settings)
    assert not torch.signbit(weight[~keep]).any()


@pytest.mark.parametrize("prune_type", ["SparseGPT", "Wanda"])
def test_a_prune_type_that_needs_a_statistic_names_it_when_given_none(prune_type):
    weight = random_weight(4, 8)
    with pytest.raises(ValueError, match=f"prune_type='{prune_type}' needs its input statistic"):
        prune_weight_(
            prune_type, weight, None, 0.5, parse_pattern("1x1"), "per_tensor", {"block_size": 8, "damping": 0.01}
        )


def test_sparsegpt_decouples_inputs_that_never_fire():
    inputs = correlated_inputs(16, 100)
    inputs[:, 3] = 0.0  # a dead input feature: a zero row and column in the Hessian
    weight = random_weight(4, 16)
    sparsegpt_prune_(weight, hessian_of(inputs), 0.5, parse_pattern("1x1"), block_size=8)
    assert torch.isfinite(weight).all()
    assert (weight == 0).sum().item() == 32

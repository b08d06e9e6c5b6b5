"""The fast exact selection: the same masks as a full sort, on the paths the bracket takes."""

from __future__ import annotations

import pytest
import torch

from lightning_sparsity import Pruner
from lightning_sparsity.functional import selection
from lightning_sparsity.functional.selection import kth_smallest, smallest_k_mask
from lightning_sparsity.sparsifier import Sparsifier


def sort_mask(values: list[torch.Tensor], k: int) -> torch.Tensor:
    """Keep-mask of a stable full sort: the first k in (value, position) order are pruned."""
    flat = torch.cat([v.reshape(-1) for v in values])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[flat.sort(stable=True).indices[:k]] = False
    return keep


def flat_keep(keeps: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([keep.reshape(-1) for keep in keeps])


def pruned_marks(size: int, pruned: int, generator: torch.Generator) -> torch.Tensor:
    """Magnitude-like scores with ``pruned`` entries at -1, as the Sparsifier marks pruned weights."""
    scores = torch.rand(size, generator=generator)
    scores[torch.randperm(size, generator=generator)[:pruned]] = -1.0
    return scores


@pytest.mark.parametrize(
    "make",
    [
        lambda g: [torch.randn(300, 300, generator=g), torch.randn(30_000, generator=g)],  # distinct values
        lambda g: [torch.randint(0, 7, (150_000,), generator=g).float()],  # heavy ties everywhere
        lambda g: [pruned_marks(100_000, 40_000, g), pruned_marks(30_000, 10, g)],  # a block at -1
        lambda g: [torch.randn(150_000, generator=g).abs().half()],  # float16: many ties, another dtype
    ],
    ids=["distinct", "ties", "pruned-block", "float16"],
)
def test_masks_equal_a_stable_sort(make):
    generator = torch.Generator().manual_seed(0)
    values = make(generator)
    total = sum(v.numel() for v in values)
    for k in [1, 1000, 40_010, 40_011, total * 9 // 10, total - 1]:  # 40_010: the -1 block exactly
        keeps = smallest_k_mask(values, k)
        assert torch.equal(flat_keep(keeps), sort_mask(values, k)), f"k={k}"
        ordered = torch.cat([v.reshape(-1) for v in values]).sort().values
        assert kth_smallest(values, k) == ordered[k - 1]


def test_a_bracket_that_misses_still_gives_the_exact_answer(monkeypatch):
    generator = torch.Generator().manual_seed(2)
    values = [torch.randn(400_000, generator=generator)]
    wrong = (torch.tensor(2.0), torch.tensor(3.0))  # far above the 10% quantile
    monkeypatch.setattr(selection, "_bracket", lambda *args: wrong)
    keeps = smallest_k_mask(values, 40_000)
    assert torch.equal(flat_keep(keeps), sort_mask(values, 40_000))


def test_sparsifier_keeps_pruned_weights_pruned_and_writes_positive_zeros():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(400, 300))
    sparsifier = Sparsifier(Pruner(target_sparsity_ratio=0.9), {"w": weight})
    sparsifier.update_masks(0.5)
    first = sparsifier.masks["w"].clone()
    assert sparsifier.mask_sparsity() == 0.5
    with torch.no_grad():
        weight[~first] = 100.0  # the optimizer moved pruned weights far away
        weight[first] = torch.where(torch.rand(int(first.sum())) < 0.01, 0.0, weight[first])  # live exact zeros
    sparsifier.update_masks(0.7)
    second = sparsifier.masks["w"]
    assert not bool((second & ~first).any()), "a pruned weight came back"
    assert sparsifier.mask_sparsity() == 0.7 and int((weight == 0).sum()) == round(0.7 * weight.numel())
    assert not bool(torch.signbit(weight[~second]).any()), "pruned weights must be +0.0"
    expected = weight.detach().abs().masked_fill(~first, float("-inf"))
    assert torch.equal(second.reshape(-1), sort_mask([expected], round(0.7 * weight.numel())))


def test_mask_sparsity_follows_restored_masks():
    weight = torch.nn.Parameter(torch.randn(64, 32))
    sparsifier = Sparsifier(Pruner(target_sparsity_ratio=0.9), {"w": weight})
    sparsifier.update_masks(0.25)
    state = sparsifier.state_dict()
    sparsifier.update_masks(0.75)
    assert sparsifier.mask_sparsity() == 0.75
    sparsifier.load_state_dict(state)
    assert sparsifier.mask_sparsity() == 0.25


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(24, 16), (300, 256)], ids=["small", "large"])
def test_apply_masks_keeps_values_bit_for_bit_and_writes_positive_zeros(dtype, shape):
    """Small weights (one multi-tensor lerp towards zero) and large ones (mul by the uint8 mask, add 0.0) alike:
    kept values unchanged to the bit (subnormals included; a kept ``-0.0`` becomes ``+0.0``), pruned ones ``+0.0``."""
    generator = torch.Generator().manual_seed(3)
    weights = {name: torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype)) for name in "ab"}
    sparsifier = Sparsifier(Pruner(target_sparsity_ratio=0.9), weights)
    sparsifier.update_masks(0.5)
    with torch.no_grad():
        for weight in weights.values():
            weight.copy_(torch.randn(shape, generator=generator).to(dtype))  # an optimizer step moved every value
            weight.view(-1)[:3] = torch.tensor([-0.0, torch.finfo(dtype).tiny / 4, -1.0]).to(dtype)
    before = {name: weight.detach().clone().add_(0.0) for name, weight in weights.items()}  # -0.0 as +0.0
    sparsifier.apply_masks()
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.finfo(dtype).bits // 8]
    for name, weight in weights.items():
        keep = sparsifier.masks[name]
        assert torch.equal(weight[keep].view(bits), before[name][keep].view(bits))
        assert bool((weight[~keep] == 0).all()) and not bool(torch.signbit(weight[~keep]).any())

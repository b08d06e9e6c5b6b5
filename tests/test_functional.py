"""The pure functions: schedules, exact selection, pattern masks and criteria."""

import math

import pytest
import torch

from lightning_sparsity.functional import (
    group_lasso_grad_,
    kth_smallest,
    parse_pattern,
    pattern_masks,
    scheduled_sparsity,
    selection,
    smallest_k_each,
    smallest_k_mask,
    snip_momentum_scores_,
)
from lightning_sparsity.functional.schedules import SCHEDULES, is_update_point, last_update_point, ramp_progress
from lightning_sparsity.functional.selection import _select_all, _select_by_radix, _smallest_k_each_by_sort


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_start_at_initial_end_at_target_and_grow(schedule):
    values = [scheduled_sparsity(p / 20, 0.1, 0.9, schedule) for p in range(21)]
    assert values[0] == pytest.approx(0.1)
    assert values[-1] == 0.9
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_schedule_shapes():
    assert scheduled_sparsity(0.5, 0.0, 0.8, "linear") == pytest.approx(0.4)
    assert scheduled_sparsity(0.5, 0.0, 0.8, "cubic") == pytest.approx(0.8 * (1 - 0.5**3))
    assert scheduled_sparsity(0.5, 0.0, 0.8, "cos") == pytest.approx(0.8 * (1 - math.cos(math.pi / 4)))
    # exp: the density shrinks geometrically, so halfway it is the geometric mean of 1 and 0.2
    assert 1 - scheduled_sparsity(0.5, 0.0, 0.8, "exp") == pytest.approx(math.sqrt(0.2))
    with pytest.raises(ValueError, match="schedule"):
        scheduled_sparsity(0.5, 0.0, 0.8, "step")


def test_update_points_every_frequency_and_at_the_end():
    points = [s for s in range(0, 15) if is_update_point(s, 2, 11, 4)]
    assert points == [2, 6, 10, 11]
    assert last_update_point(1, 2, 11, 4) is None
    assert last_update_point(9, 2, 11, 4) == 6
    assert last_update_point(30, 2, 11, 4) == 11
    assert ramp_progress(6, 2, 10) == 0.5
    assert ramp_progress(3, 3, 3) == 1.0


@pytest.mark.parametrize("sizes", [[1000], [300_000], [200_000, 70_000, 900]])
def test_kth_smallest_equals_a_full_sort(sizes):
    generator = torch.Generator().manual_seed(0)
    values = [torch.randn(size, generator=generator) for size in sizes]
    ordered = torch.cat(values).sort().values
    for k in [1, 7, ordered.numel() // 3, ordered.numel() * 9 // 10, ordered.numel()]:
        assert kth_smallest(values, k) == ordered[k - 1]
    with pytest.raises(ValueError):
        kth_smallest(values, 0)


def test_smallest_k_mask_breaks_ties_to_exactly_k():
    values = [torch.zeros(400_000), torch.tensor([0.0, 1.0, 2.0])]
    for k in [5, 123_456, 400_001]:
        keeps = smallest_k_mask(values, k)
        assert sum(int((~keep).sum()) for keep in keeps) == k
    keeps = smallest_k_mask([torch.tensor([3.0, 1.0, 2.0, 1.0])], 2)
    assert keeps[0].tolist() == [True, False, True, False]


def test_smallest_k_mask_prunes_exactly_what_a_sort_prunes():
    generator = torch.Generator().manual_seed(1)
    values = [torch.randn(500, 700, generator=generator), torch.randn(64, 300, generator=generator)]
    k = 250_000
    keeps = smallest_k_mask(values, k)
    flat_keep = torch.cat([keep.reshape(-1) for keep in keeps])
    expected = torch.ones_like(flat_keep)
    expected[torch.cat([v.reshape(-1) for v in values]).argsort()[:k]] = False
    assert torch.equal(flat_keep, expected)


def _radix_cases() -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    edges = [1e-45, -1e-45, 0.0, -0.0, 3.4e38, -3.4e38, float("inf"), -float("inf")]
    return [
        [torch.randn(1000, generator=generator), torch.randn(77, generator=generator)],
        # ties at every threshold, and zeros of both signs, which tie with each other
        [torch.randint(-5, 5, (3000,), generator=generator).float(), torch.zeros(100), -torch.zeros(50)],
        [torch.randn(500, generator=generator).half(), torch.randn(300, generator=generator).half()],
        [torch.randn(500, generator=generator).bfloat16()],
        [torch.randn(800, generator=generator, dtype=torch.float64) * 1e-300, torch.tensor(edges, dtype=torch.float64)],
        [
            torch.randint(-(10**12), 10**12, (900,), generator=generator),
            torch.randint(-3, 3, (100,), generator=generator),
        ],
        [torch.tensor(edges)],  # subnormals, the largest floats and infinities
    ]


@pytest.mark.parametrize("chunk", [1 << 24, 256])
@pytest.mark.parametrize("case", range(len(_radix_cases())))
def test_radix_select_finds_the_kth_value_and_its_ties_as_a_full_sort_does(case, chunk, monkeypatch):
    """GPUs find the threshold by a radix select over the values' integer keys, a chunk of them at a time:
    every float type, integers, signed zeros and infinities."""
    monkeypatch.setattr(selection, "_CHUNK", chunk)
    values = _radix_cases()[case]
    everything = torch.cat([v.double() if v.is_floating_point() else v for v in values])
    ordered = everything.sort().values
    for k in sorted({1, 2, len(ordered) // 3, len(ordered) // 2, len(ordered) - 1, len(ordered)}):
        threshold, at_most = _select_by_radix(values, k)
        assert threshold.dtype == values[0].dtype
        assert threshold.item() == ordered[k - 1].item()
        assert at_most == int((everything <= ordered[k - 1]).sum())


def test_selection_on_gpus_prunes_what_the_cpu_selection_prunes():
    """GPUs select by a radix select: the same elements as the CPU's bracket, ties broken by position alike."""
    generator = torch.Generator().manual_seed(3)
    values = [
        torch.randint(0, 50, (300, 400), generator=generator).float(),  # many ties at every threshold
        torch.zeros(1000),
        torch.randn(70_000, generator=generator),
    ]
    for k in [1, 60_000, 123_457, 190_999]:
        expected = [keep.reshape(-1) for keep in smallest_k_mask(values, k)]
        flats = [v.reshape(-1) for v in values]
        assert _select_by_radix(flats, k) == _select_all(flats, k)
        if torch.cuda.is_available():
            on_gpu = smallest_k_mask([v.cuda() for v in values], k)
            assert all(torch.equal(keep.reshape(-1).cpu(), e) for keep, e in zip(on_gpu, expected, strict=True))
            assert kth_smallest([v.cuda() for v in values], k).item() == kth_smallest(values, k).item()


@pytest.mark.parametrize("chunk", [1 << 24, 96 * 128])
def test_local_selection_on_gpus_sorts_equal_sized_tensors_together_and_prunes_what_the_cpu_prunes(chunk, monkeypatch):
    """Tensor by tensor, GPUs rank tensors of equal size and k as rows of stable sorts of up to a chunk of elements:
    each tensor still loses exactly its own k smallest elements, ties broken by position as on the CPU."""
    monkeypatch.setattr(selection, "_SORT_ROWS", chunk)
    generator = torch.Generator().manual_seed(4)
    values = [
        torch.randint(0, 9, (96, 128), generator=generator).float(),  # many ties
        torch.randn(128, 96, generator=generator),  # as many elements as the first
        torch.randn(96, 128, generator=generator),
        torch.zeros(40, 30),  # all tied
        torch.randn(500, generator=generator),
    ]
    ks = [6000, 6000, 11000, 700, 0]
    expected = [smallest_k_mask([v], k)[0] for v, k in zip(values, ks, strict=True)]
    by_sort = _smallest_k_each_by_sort(values, ks)
    assert all(map(torch.equal, by_sort, expected))
    assert [int((~keep).sum()) for keep in by_sort] == ks
    if torch.cuda.is_available():
        on_gpu = smallest_k_each([v.cuda() for v in values], ks)
        assert all(torch.equal(keep.cpu(), e) for keep, e in zip(on_gpu, expected, strict=True))


def test_parse_pattern_forms_and_errors():
    assert parse_pattern("1x1").rows == 1
    assert (parse_pattern("4x1").rows, parse_pattern("4x1").cols) == (4, 1)
    assert (parse_pattern("2:4").n, parse_pattern("2:4").m, parse_pattern("2:4").max_sparsity) == (2, 4, 0.5)
    for bad in ["4x0", "4:4", "0:4", "block", "2:4:8", ""]:
        with pytest.raises(ValueError, match="pattern"):
            parse_pattern(bad)


def _scores(*shapes):
    generator = torch.Generator().manual_seed(2)
    return [torch.rand(shape, generator=generator) for shape in shapes]


def test_unstructured_local_masks_hit_the_ratio_per_tensor():
    scores = _scores((64, 32), (48, 16))
    keeps = pattern_masks(scores, 0.7, parse_pattern("1x1"))
    for score, keep in zip(scores, keeps, strict=True):
        assert int((~keep).sum()) == round(0.7 * score.numel())
        assert score[~keep].max() < score[keep].min()


def test_per_channel_masks_hit_the_ratio_in_every_row():
    (score,) = _scores((16, 40))
    (keep,) = pattern_masks([score], 0.25, parse_pattern("1x1"), method="per_channel")
    assert ((~keep).sum(dim=1) == 10).all()


def test_block_masks_prune_whole_blocks():
    (score,) = _scores((32, 8))
    (keep,) = pattern_masks([score], 0.5, parse_pattern("4x1"))
    blocks = keep.reshape(8, 4, 8).permute(0, 2, 1)  # (block row, column, rows in block)
    assert (blocks.all(-1) | ~blocks.any(-1)).all()
    assert int((~keep).sum()) == 128


def test_n_of_m_masks_keep_the_group_structure():
    (score,) = _scores((8, 64))
    (keep,) = pattern_masks([score], 0.5, parse_pattern("2:4"))
    assert ((~keep).reshape(8, 16, 4).sum(-1) == 2).all()
    (partial,) = pattern_masks([score], 0.3, parse_pattern("2:4"))
    assert int((~partial).sum()) == round(0.3 * 512)
    assert ((~partial).reshape(8, 16, 4).sum(-1) <= 2).all()
    with pytest.raises(ValueError, match="sparsity"):
        pattern_masks([score], 0.6, parse_pattern("2:4"))


def test_global_scope_uses_one_threshold():
    small, large = _scores((32, 32), (32, 32))
    small = small * 0.1
    keeps = pattern_masks([small, large], 0.5, parse_pattern("1x1"), scope="global")
    assert sum(int((~k).sum()) for k in keeps) == 1024
    assert max(small[~keeps[0]].max(), large[~keeps[1]].max()) < min(small[keeps[0]].min(), large[keeps[1]].min())
    assert int((~keeps[0]).sum()) > int((~keeps[1]).sum())


def test_minus_infinity_scores_stay_pruned():
    (score,) = _scores((16, 16))
    score[0, :8] = float("-inf")
    score[0, 8:] = 10.0
    (keep,) = pattern_masks([score], 0.1, parse_pattern("1x1"))
    assert not keep[0, :8].any()


def test_snip_momentum_is_a_decayed_sum_of_weight_times_grad():
    weight, grad = torch.randn(4, 4), torch.randn(4, 4)
    scores = torch.ones(4, 4)
    snip_momentum_scores_(scores, weight, grad, momentum=0.9)
    assert torch.allclose(scores, 0.9 + (weight * grad).abs())


def test_group_lasso_grad_is_the_gradient_of_the_block_norm_penalty():
    weight = torch.randn(8, 6, requires_grad=True)
    penalty = 0.1 * weight.reshape(2, 4, 6, 1).square().sum(dim=(1, 3)).sqrt().sum()
    (expected,) = torch.autograd.grad(penalty, weight)
    grad = torch.zeros(8, 6)
    group_lasso_grad_(grad, weight, rows=4, cols=1, alpha=0.1)
    assert torch.allclose(grad, expected, atol=1e-6)

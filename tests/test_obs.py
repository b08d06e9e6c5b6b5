"""OBS (Optimal Brain Surgeon, oBERT-style): block Fisher scores, compensating weight updates, and its limits."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyBert, make_trainer, toy_loader

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.functional import fisher_blocks_update_, obs_inverse, obs_scores, obs_update_
from lightning_sparsity.sparsifier import Sparsifier

ENCODER = [r"encoder\..*"]


def test_fisher_blocks_are_a_running_mean_of_gradient_outer_products_per_block_of_a_row():
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 6, generator=generator) for _ in range(3)]
    fisher = torch.zeros(4, 3, 3)  # two rows of 6 weights: four blocks of 3
    for grad in grads:
        fisher_blocks_update_(fisher, grad, decay=0.8)
    for index in range(4):
        row, start = divmod(3 * index, 6)
        blocks = [grad[row, start : start + 3] for grad in grads]
        expected = sum(0.2 * 0.8 ** (2 - age) * torch.outer(g, g) for age, g in enumerate(blocks))
        torch.testing.assert_close(fisher[index], expected)


def test_obs_scores_and_update_follow_the_explicit_formulas():
    """Per block: the inverse of the damped Fisher over the kept weights, w² / (2 [F⁻¹]ᵢᵢ), and
    δw = -F⁻¹[:, Q] (F⁻¹[Q, Q])⁻¹ w_Q for the newly pruned Q, checked against matrix inverses block by block."""
    generator = torch.Generator().manual_seed(0)
    size, damping = 4, 0.1
    fisher = torch.zeros(6, size, size)
    for _ in range(10):
        fisher_blocks_update_(fisher, torch.randn(3, 8, generator=generator), decay=0.9)
    keep = torch.rand(3, 8, generator=generator) > 0.2
    weight = torch.randn(3, 8, generator=generator) * keep
    pruned = keep & (torch.rand(3, 8, generator=generator) > 0.5)
    inverse = obs_inverse(fisher, keep, damping)
    scores = obs_scores(weight, inverse)
    updated = obs_update_(weight.clone(), inverse, pruned)

    scale = fisher.diagonal(dim1=1, dim2=2).mean()
    blocks = zip(fisher, keep.reshape(-1, size), weight.reshape(-1, size), pruned.reshape(-1, size), strict=True)
    for index, (block, kept, w, q) in enumerate(blocks):
        on = kept.nonzero().squeeze(1)
        expected = torch.linalg.inv((block + damping * scale * torch.eye(size)).double()[on][:, on])
        torch.testing.assert_close(inverse[index][on][:, on].double(), expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            scores.reshape(-1, size)[index][on].double(), w[on].double() ** 2 / (2 * expected.diagonal())
        )
        full = torch.zeros(size, size, dtype=torch.float64)
        full[on.unsqueeze(1), on] = expected
        cut = q.nonzero().squeeze(1)
        delta = -full[:, cut] @ torch.linalg.solve(full[cut][:, cut], w[cut].double()) if len(cut) else 0.0
        torch.testing.assert_close(updated.reshape(-1, size)[index].double(), w.double() + delta, rtol=1e-4, atol=1e-5)
    assert updated[pruned].abs().max() < 1e-5  # the pruned weights land on zero
    assert torch.equal(updated[~keep], weight[~keep])  # weights pruned earlier stay out of it


def test_obs_under_an_identity_fisher_is_magnitude_pruning_and_moves_no_kept_weight():
    torch.manual_seed(0)
    weights = {name: torch.nn.Parameter(torch.randn(16, 32)) for name in ("a", "b")}
    original = {name: w.detach().clone() for name, w in weights.items()}
    obs = Sparsifier(Pruner(prune_type="OBS", scope="global", parameters={"block_size": 8}), weights)
    obs.criterion.fisher = {name: torch.eye(8).repeat(64, 1, 1) for name in weights}
    obs.update_masks(0.6)
    magnitude = Sparsifier(Pruner(scope="global"), {n: torch.nn.Parameter(w.clone()) for n, w in original.items()})
    magnitude.update_masks(0.6)
    for name, weight in weights.items():
        assert torch.equal(obs.masks[name], magnitude.masks[name])
        assert torch.equal(weight.detach(), original[name] * obs.masks[name])


ON_A_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@ON_A_GPU
def test_obs_on_a_gpu_computes_what_it_computes_on_the_cpu():
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(4, 16, generator=generator) for _ in range(5)]
    keep = torch.rand(4, 16, generator=generator) > 0.3
    weight = torch.randn(4, 16, generator=generator) * keep
    pruned = keep & (torch.rand(4, 16, generator=generator) > 0.5)
    results = {}
    for device in ("cpu", "cuda"):
        fisher = torch.zeros(8, 8, 8, device=device)
        for grad in grads:
            fisher_blocks_update_(fisher, grad.to(device), decay=0.9)
        inverse = obs_inverse(fisher, keep.to(device), 0.1)
        results[device] = [fisher, inverse, obs_scores(weight.to(device), inverse)]
        results[device].append(obs_update_(weight.to(device, copy=True), inverse, pruned.to(device)))
    for on_cpu, on_gpu in zip(results["cpu"], results["cuda"], strict=True):
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("accelerator", ["cpu", pytest.param("cuda", marks=ON_A_GPU)])
def test_obs_trains_to_the_exact_target_and_drops_its_fisher_after_the_ramp(accelerator):
    module = TinyBert(lr=1e-2)
    pruner = Pruner(
        prune_type="OBS",
        target_sparsity_ratio=0.75,
        step_range=[1, 6],
        update_frequency=2,
        names=ENCODER,
        parameters={"block_size": 8},
    )
    pruning = PruningCallback([pruner])
    make_trainer(max_steps=8, callbacks=[pruning], accelerator=accelerator).fit(module, toy_loader())
    sparsifier = pruning.sparsifiers[0]
    for name, mask in sparsifier.masks.items():
        weight = sparsifier.weights[name].to(mask.device)  # Lightning moves the model back to the CPU after fit
        assert int((~mask).sum()) == round(0.75 * mask.numel())
        assert bool((weight[~mask] == 0).all()) and bool((weight[mask] != 0).all())
    assert sparsifier.masks and sparsifier.criterion.fisher == {}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(pattern="4x1"), r"pattern='4x1' does not suit prune_type=\"OBS\""),
        (dict(parameters={"block_size": 0}), r"'block_size'\] must be an integer >= 1"),
        (dict(parameters={"block_size": 2.5}), r"'block_size'\] must be an integer >= 1"),
        (dict(parameters={"fisher_decay": 1.0}), r"'fisher_decay'\] must be in \[0, 1\)"),
        (dict(parameters={"damping": 0.0}), r"'damping'\] must be > 0"),
        (dict(parameters={"momentum": 0.9}), r"unknown key 'momentum' for prune_type='OBS'"),
    ],
)
def test_obs_settings_are_checked_when_the_pruner_is_built(settings, message):
    with pytest.raises(ValueError, match=message):
        Pruner(prune_type="OBS", **settings)


def test_a_block_size_that_does_not_divide_a_weight_fails_before_the_first_step():
    pruning = PruningCallback([Pruner(prune_type="OBS", names=ENCODER, parameters={"block_size": 24})])
    with pytest.raises(ValueError, match=r"'block_size'\]=24 does not divide the 32 in_features of weight"):
        make_trainer(callbacks=[pruning], max_steps=2).fit(TinyBert(), toy_loader())

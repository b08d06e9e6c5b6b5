"""One mask update of every Linear weight of a bert-base-sized model at 90%, beside the peers.

Ours (local: each tensor at 90%; global: one threshold), ``torch.nn.utils.prune`` (``l1_unstructured``
layer by layer and ``global_unstructured``) and a plain ``kthvalue`` threshold, interleaved round after
round from the same dense weights. Ours must prune exactly what a full sort prunes (up to ties).

    python -m benchmarks.mask_update [--rounds 3] [--threads 1] [--device cpu]

With ``--device cuda`` the weights live on the GPU, the clock waits for its work and the results go to
``mask_update_cuda.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune
from transformers import BertModel

from benchmarks.common import bert_config, interleaved, median, results_name, save, set_threads, table, timed
from lightning_sparsity import Pruner
from lightning_sparsity.sparsifier import Sparsifier

SPARSITY = 0.9


def pruned_count(tensors: list[torch.Tensor]) -> int:
    return round(SPARSITY * sum(t.numel() for t in tensors))


def plain_kthvalue_masks(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """The textbook global threshold: the k-th smallest |w| of all weights concatenated."""
    scores = [w.detach().abs() for w in weights]
    threshold = torch.cat([s.reshape(-1) for s in scores]).kthvalue(pruned_count(scores)).values
    return [s > threshold for s in scores]


def same_as_a_sort(masks: list[torch.Tensor], weights: list[torch.Tensor]) -> bool:
    """Whether ``masks`` prune exactly k weights, none above the k-th smallest |w| and none below it kept."""
    scores = [w.abs() for w in weights]
    k = pruned_count(scores)
    threshold = torch.cat([s.reshape(-1) for s in scores]).kthvalue(k).values
    pruned = sum(int((~m).sum()) for m in masks)
    kept_below = any(bool((s < threshold)[m].any()) for s, m in zip(scores, masks, strict=True))
    pruned_above = any(bool((s > threshold)[~m].any()) for s, m in zip(scores, masks, strict=True))
    return pruned == k and not kept_below and not pruned_above


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    set_threads(args.threads)

    torch.manual_seed(0)
    model = BertModel(bert_config("base")).requires_grad_(True).to(args.device)
    layers = [module for module in model.modules() if isinstance(module, nn.Linear)]
    weights = {name: module.weight for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    dense = [w.detach().clone() for w in weights.values()]
    numel = sum(w.numel() for w in dense)

    def from_dense(run: Callable[[], object], cleanup: Callable[[], object] = lambda: None) -> tuple[float, float]:
        for weight, values in zip(weights.values(), dense, strict=True):
            weight.data.copy_(values)
        times = timed(run, args.device)
        cleanup()
        return times

    def ours(scope: str) -> tuple[float, float]:
        sparsifier = Sparsifier(Pruner(target_sparsity_ratio=SPARSITY, scope=scope), weights)
        return from_dense(lambda: sparsifier.update_masks(SPARSITY))

    def remove_torch_pruning() -> None:
        for layer in layers:
            prune.remove(layer, "weight")

    variants = {
        "ours, local": lambda: ours("local"),
        "ours, global": lambda: ours("global"),
        "plain kthvalue, global": lambda: from_dense(lambda: plain_kthvalue_masks(list(weights.values()))),
        "torch.nn.utils.prune l1_unstructured, per layer": lambda: from_dense(
            lambda: [prune.l1_unstructured(layer, "weight", SPARSITY) for layer in layers], remove_torch_pruning
        ),
        "torch.nn.utils.prune global_unstructured": lambda: from_dense(
            lambda: prune.global_unstructured(
                [(layer, "weight") for layer in layers], prune.L1Unstructured, amount=SPARSITY
            ),
            remove_torch_pruning,
        ),
    }
    figures = interleaved(variants, args.rounds)

    sparsifier = Sparsifier(Pruner(target_sparsity_ratio=SPARSITY, scope="global"), weights)
    from_dense(lambda: sparsifier.update_masks(SPARSITY))
    exact = same_as_a_sort(list(sparsifier.masks.values()), dense)

    rows = [
        {"system": name, "cpu_s": median([c for _, c in times]), "wall_s": median([w for w, _ in times])}
        for name, times in figures.items()
    ]
    result = {
        "setup": f"BertModel(BertConfig()): {len(weights)} Linear weights, {numel:,} values, {SPARSITY:.0%} sparsity",
        "device": args.device,
        "threads": args.threads,
        "rounds": args.rounds,
        "ours_global_equals_sort": exact,
        "rows": rows,
        "raw": figures,
    }
    print(result["setup"])
    print(table(["system", "CPU s", "wall s"], [[r["system"], r["cpu_s"], r["wall_s"]] for r in rows]))
    print(f"ours (global) prunes exactly what a full sort prunes, up to ties: {exact}")
    save(results_name("mask_update", args.device), result)


if __name__ == "__main__":
    main()

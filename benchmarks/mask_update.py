"""One mask update of every Linear weight of a bert-base-sized (or ``--size large``) model at 90%, beside the peers.

Ours (local: each tensor at 90%; global: one threshold, also under INC's default limit of 98% per layer, which
no layer of these random weights reaches), ``torch.nn.utils.prune`` (``l1_unstructured`` layer by layer and
``global_unstructured``) and a plain ``kthvalue`` threshold, interleaved round after
round from the same dense weights. Ours must prune exactly what a full sort prunes (up to ties). On the CPU,
each system also runs once on a fresh model in a process of its own, to measure how far the update raises the
process's peak resident memory; on a GPU, once more from the dense weights, to measure how far it raises the peak
of allocated GPU memory.

    python -m benchmarks.mask_update [--rounds 3] [--threads 1] [--device cpu] [--size base]

With ``--device cuda`` the weights live on the GPU, the clock waits for its work and the results go to
``mask_update_cuda.json``. ``--size large`` (bert-large: 303M Linear weights; about 10 minutes and 20 GB of
memory, 16 GB of it for torch.nn.utils.prune's global update) shows how the costs grow with the model; its results
go to ``mask_update_large.json``.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune
from transformers import BertModel

from benchmarks.common import LAYER_CAP, bert_config, interleaved, median, results_name, save, set_threads, table, timed
from lightning_sparsity import Pruner
from lightning_sparsity.sparsifier import Sparsifier

SPARSITY = 0.9
LIMITED_GLOBAL = f"ours, global, {LAYER_CAP:.0%} limit per layer"  # INC's default limit
COLUMNS = {"system": "system", "cpu_s": "CPU s", "wall_s": "wall s", "peak_memory_gb": "peak memory growth (GB)"}


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


def bert_linear_weights(size: str, device: str) -> tuple[list[nn.Linear], dict[str, nn.Parameter]]:
    """A seeded random BERT of ``size``: its Linear layers and their weights by name."""
    torch.manual_seed(0)
    model = BertModel(bert_config(size)).requires_grad_(True).to(device)
    named = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return [module for _, module in named], {name: module.weight for name, module in named}


def mask_updates(
    layers: list[nn.Linear], weights: dict[str, nn.Parameter]
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Per system: one mask update of every weight at 90%, and what undoes its changes to the model's structure
    (torch.nn.utils.prune's ``weight_orig`` and mask; ours only zeroes weights in place)."""

    def ours(scope: str, layer_cap: float = 1.0) -> Callable[[], object]:  # fresh: earlier masks would count
        pruner = Pruner(target_sparsity_ratio=SPARSITY, scope=scope, max_sparsity_ratio_per_layer=layer_cap)
        return lambda: Sparsifier(pruner, weights).update_masks(SPARSITY)

    def remove_torch_pruning() -> None:
        for layer in layers:
            prune.remove(layer, "weight")

    def nothing() -> None:
        pass

    return {
        "ours, local": (ours("local"), nothing),
        "ours, global": (ours("global"), nothing),
        LIMITED_GLOBAL: (ours("global", LAYER_CAP), nothing),
        "plain kthvalue, global": (lambda: plain_kthvalue_masks(list(weights.values())), nothing),
        "torch.nn.utils.prune l1_unstructured, per layer": (
            lambda: [prune.l1_unstructured(layer, "weight", SPARSITY) for layer in layers],
            remove_torch_pruning,
        ),
        "torch.nn.utils.prune global_unstructured": (
            lambda: prune.global_unstructured(
                [(layer, "weight") for layer in layers], prune.L1Unstructured, amount=SPARSITY
            ),
            remove_torch_pruning,
        ),
    }


def peak_memory_growth(size: str, system: str) -> int:
    """Bytes by which ``system``'s mask update of a fresh bert-``size`` raises the peak resident memory above what
    the process held before it (Linux: the peak is reset through /proc; a process of its own per system, so that
    no memory freed by another system is reused unseen)."""
    set_threads(1)
    layers, weights = bert_linear_weights(size, "cpu")
    update, _ = mask_updates(layers, weights)[system]
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the resident memory now
    before = _status_bytes("VmRSS")
    update()
    return _status_bytes("VmHWM") - before


def cuda_peak_memory_growth(update: Callable[[], object]) -> int:
    """Bytes by which ``update`` raises the GPU's peak allocated memory above what was allocated before it."""
    gc.collect()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = update()
    growth = torch.cuda.max_memory_allocated() - before
    del result
    return growth


def _status_bytes(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1]) * 1024  # kB


def table_columns(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and cells of the columns the rows have."""
    keys = [key for key in COLUMNS if key in rows[0]]
    return [COLUMNS[key] for key in keys], [[row[key] for key in keys] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians over them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["base", "large"], default="base", help="bert-base or bert-large")
    args = parser.parse_args()
    set_threads(args.threads)

    layers, weights = bert_linear_weights(args.size, args.device)
    dense = [w.detach().clone() for w in weights.values()]
    numel = sum(w.numel() for w in dense)

    def from_dense(
        update: Callable[[], object], undo: Callable[[], object], measure: Callable[..., Any] | None = None
    ) -> Any:
        """``measure`` (by default: the times) of ``update`` run on the dense weights, then undone."""
        for weight, values in zip(weights.values(), dense, strict=True):
            weight.data.copy_(values)
        figure = measure(update) if measure else timed(update, args.device)
        undo()
        return figure

    updates = mask_updates(layers, weights)
    figures = interleaved({name: lambda pair=pair: from_dense(*pair) for name, pair in updates.items()}, args.rounds)

    sparsifier = Sparsifier(Pruner(target_sparsity_ratio=SPARSITY, scope="global"), weights)
    from_dense(lambda: sparsifier.update_masks(SPARSITY), lambda: None)
    exact = same_as_a_sort(list(sparsifier.masks.values()), dense)

    if args.device == "cpu":
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn, max_tasks_per_child=1) as pool:
            memory = {name: pool.submit(peak_memory_growth, args.size, name).result() for name in updates}
    else:
        memory = {name: from_dense(*pair, measure=cuda_peak_memory_growth) for name, pair in updates.items()}

    rows = [
        {
            "system": name,
            "cpu_s": median([c for _, c in times]),
            "wall_s": median([w for w, _ in times]),
            "peak_memory_gb": memory[name] / 1e9,
        }
        for name, times in figures.items()
    ]
    config = bert_config(args.size)
    result = {
        "size": args.size,
        "setup": f"bert-{args.size} (hidden {config.hidden_size}, {config.num_hidden_layers} layers): "
        f"{len(weights)} Linear weights, {numel:,} values, {SPARSITY:.0%} sparsity",
        "values": numel,
        "device": args.device,
        "threads": args.threads,
        "rounds": args.rounds,
        "ours_global_equals_sort": exact,
        "rows": rows,
        "raw": figures,
    }
    print(result["setup"])
    print(table(*table_columns(rows)))
    print(f"ours (global) prunes exactly what a full sort prunes, up to ties: {exact}")
    save(results_name("mask_update" if args.size == "base" else f"mask_update_{args.size}", args.device), result)


if __name__ == "__main__":
    main()

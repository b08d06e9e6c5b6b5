"""Pruning under FSDP2: one global mask update of MiniLM-sized weights split by rows over two processes, beside one
process updating the same whole weights, interleaved round after round.

The weights are DTensor parameters sharded by rows (``Shard(0)``, as ``fully_shard`` shards them) on a mesh of two
processes (gloo on the CPU, NCCL with ``--device cuda``); each process prunes its rows with a ``Sparsifier``, as
``PruningCallback`` does under ``ModelParallelStrategy``. Rank zero then runs the same update on the gathered
weights in one process while rank one waits. Figures: whether the masks are identical bit for bit, each rank's
mask memory against one process's, and the two ranks' update time (the slower rank's) against one process's.

    python -m benchmarks.fsdp2 [--rounds 7] [--device cpu] [--prune-type BasicMagnitude] [--scope global]

Each process runs one torch thread (two processes on a 2-core machine). The results go to ``fsdp2.json``
(``fsdp2_local.json`` with ``--scope local``; ``_cuda`` on GPUs, which needs two of them).
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from benchmarks.common import median, results_name, save, set_threads, synchronize
from lightning_sparsity import Pruner
from lightning_sparsity.sparsifier import Sparsifier

RANKS = 2
SPARSITY = 0.8
LAYERS = 6
HIDDEN, FFN = 384, 1536  # MiniLM-L6: six layers of four 384x384 projections and a 384x1536 feed-forward pair
GOALS = {"masks": "identical", "memory_ratio": 1.05 / RANKS, "time_ratio": 1.5}


def minilm_shapes() -> dict[str, tuple[int, int]]:
    shapes = {}
    for layer in range(LAYERS):
        for name in ("query", "key", "value", "attention_output"):
            shapes[f"layer{layer}.{name}"] = (HIDDEN, HIDDEN)
        shapes[f"layer{layer}.intermediate"] = (FFN, HIDDEN)
        shapes[f"layer{layer}.output"] = (HIDDEN, FFN)
    return shapes


def mask_bytes(sparsifier: Sparsifier) -> int:
    """Bytes of the masks, and of the pruned positions that small weights keep in their dtype for their ``lerp_``
    (a rank's shards are smaller, so more of them count as small)."""
    tensors = [*sparsifier.masks.values(), *sparsifier._small_drops]
    return sum(t.numel() * t.element_size() for t in tensors)


def timed_update(sparsifier: Sparsifier, dense: dict[str, torch.Tensor], device: str) -> float:
    """Seconds of one update from the dense weights (restored first, untimed)."""
    with torch.no_grad():
        for name, local in sparsifier.local.items():
            local.copy_(dense[name])
    sparsifier.masks = {}
    synchronize(device)
    began = time.perf_counter()
    sparsifier.update_masks(SPARSITY)
    synchronize(device)
    return time.perf_counter() - began


def run(rank: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(RANKS), RANK=str(rank))
    set_threads(1)
    backend = "nccl" if args.device == "cuda" else "gloo"
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend)
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    mesh = init_device_mesh(args.device, (RANKS,))
    generator = torch.Generator().manual_seed(0)
    whole = {name: torch.randn(shape, generator=generator).to(device) for name, shape in minilm_shapes().items()}
    pruner = Pruner(prune_type=args.prune_type, scope=args.scope, target_sparsity_ratio=SPARSITY, step_range=[0, 1])
    sharded_weights = {n: nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for n, w in whole.items()}
    sharded = Sparsifier(pruner, sharded_weights)
    sharded_dense = {name: local.clone() for name, local in sharded.local.items()}
    single = Sparsifier(pruner, {n: nn.Parameter(w.clone()) for n, w in whole.items()}) if rank == 0 else None
    times: dict[str, list[float]] = {"fsdp2": [], "single": []}
    identical = True
    for _ in range(args.rounds + 1):  # the first round warms up
        dist.barrier()
        seconds = torch.tensor([timed_update(sharded, sharded_dense, args.device)], device=device)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)  # the update ends when the slower rank ends
        times["fsdp2"].append(float(seconds))
        gathered = sharded.state_dict()["masks"]  # collective
        if single is not None:
            times["single"].append(timed_update(single, whole, args.device))
            reference = single.state_dict()["masks"]
            identical &= all(torch.equal(gathered[n], reference[n]) for n in reference)
        dist.barrier()
    if single is not None:
        fsdp2, one = median(times["fsdp2"][1:]), median(times["single"][1:])
        result = {
            "setup": (
                f"{len(whole)} weights of MiniLM-L6's shapes ({sum(w.numel() for w in whole.values()) / 1e6:.1f}M "
                f"values, random), {args.prune_type}, {args.scope} scope, {SPARSITY:.0%}, {RANKS} ranks ({backend}) "
                f"against one process, one torch thread each"
            ),
            "device": args.device,
            "scope": args.scope,
            "rounds": args.rounds,
            "masks_identical": identical,
            "mask_bytes_per_rank": mask_bytes(sharded),
            "mask_bytes_single": mask_bytes(single),
            "update_s_fsdp2": fsdp2,
            "update_s_single": one,
            "update_s_fsdp2_rounds": times["fsdp2"][1:],
            "update_s_single_rounds": times["single"][1:],
        }
        path = save(results_name(result_name(args.scope), args.device), result)
        print(f"masks identical: {identical}")
        print(f"mask memory per rank / one process: {result['mask_bytes_per_rank'] / result['mask_bytes_single']:.3f}")
        print(f"{args.scope} update: {fsdp2:.3f} s on {RANKS} ranks, {one:.3f} s in one process ({fsdp2 / one:.2f}x)")
        print(f"wrote {path}")
    dist.destroy_process_group()


def result_name(scope: str) -> str:
    return "fsdp2" if scope == "global" else f"fsdp2_{scope}"


def rows(result: dict[str, Any]) -> list[list[Any]]:
    """The goals table: figure, measured, goal, met or missed."""
    memory = result["mask_bytes_per_rank"] / result["mask_bytes_single"]
    fsdp2, single = result["update_s_fsdp2"], result["update_s_single"]
    identical = result["masks_identical"]
    return [
        ["masks on 2 ranks vs one process", "identical" if identical else "differ", "identical", _met(identical)],
        [
            "mask memory per rank / one process",
            f"{memory:.3f}",
            f"<= {GOALS['memory_ratio']:.3f}",
            _met(memory <= GOALS["memory_ratio"]),
        ],
        [
            f"{result.get('scope', 'global')} update, 2 ranks / one process",
            f"{fsdp2 / single:.2f}x ({fsdp2:.3f} s vs {single:.3f} s)",
            f"<= {GOALS['time_ratio']}x",
            _met(fsdp2 / single <= GOALS["time_ratio"]),
        ],
    ]


def _met(condition: bool) -> str:
    return "met" if condition else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--prune-type", default="BasicMagnitude")
    parser.add_argument("--scope", choices=["global", "local"], default="global")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(run, args=(port, args), nprocs=RANKS, join=True)


if __name__ == "__main__":
    main()

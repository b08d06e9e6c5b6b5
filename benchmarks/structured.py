"""Structured pruning that pays, beside Torch-Pruning: the same random-init model, the same units removed.

- ``llama``: the Llama-shaped decoder of ``structured_models.LLAMA`` (vocab 8000, hidden 512, 6 layers, 8 query /
  2 key-value heads, MLP 1536). Ours: half the key-value groups (each with its 4 query heads) and half the MLP
  neurons of every layer, by L1 magnitude, zeroed by ``structured_masks`` and removed by ``slim()``.
  Torch-Pruning (``structured_tp.py``, its own environment): half the heads and half the MLP neurons; under
  grouped-query attention it removes query heads within groups and keeps every key/value head.
- ``gpt2`` (``Conv1D``, fused query/key/value) and ``vit`` (ViT-S/16-like, 6 layers, 224^2 images): ours only,
  half the heads and half the FFN neurons of every layer.
- ``mobilenet_v2`` (torchvision's layout, width 1.0): ours only, half the channels of every group.
- ``resnet50``: ResNet-50-shaped, half the channels of every group (ours: every coupling the analysis finds, the
  residual streams included; Torch-Pruning: ``pruning_ratio=0.5``), the classifier's outputs kept.

Figures: seconds to find and remove the units, parameters and MACs after (``torch.utils.flop_counter``), the
forward speed-up over the dense model (batch 8 x 128 tokens or 8 x 224^2 images, 1 thread, the variants run
interleaved round after round; medians of per-round ratios of process CPU seconds, wall-clock beside them), and
the largest output difference between our masked model and its slimmed copy.

    python -m benchmarks.structured --model llama [--rounds 7] [--tp-python /work/venvs/tp/bin/python]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import ROOT, interleaved, median, save, set_threads, timed
from benchmarks.structured_models import build, example_for
from lightning_sparsity.export import slim
from lightning_sparsity.functional import magnitude_scores
from lightning_sparsity.structure import analyze, structured_masks

HALF = 0.5
TP_PYTHON = "/work/venvs/tp/bin/python"
TP_MODELS = ("llama", "resnet50")  # GPT-2's Conv1D and transformers 5's ViT are not in its examples


def prune_ours(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """Zeroes half the units of every coupling by L1 magnitude (in place) and returns the slimmed copy."""
    weights = dict(model.named_parameters())
    with torch.no_grad():
        for coupling in analyze(model, example).couplings:
            scores = {name: magnitude_scores(weights[name]) for name in coupling.group.names}
            for name, mask in structured_masks([coupling.group], scores, HALF).items():
                weights[name].mul_(mask)
    return slim(model, example)


def prune_torch_pruning(name: str, python: str) -> tuple[torch.nn.Module, float, str]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "pruned.pt"
        command = [python, "-m", "benchmarks.structured_tp", "--model", name, "--out", str(out)]
        subprocess.run(command, check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        saved = torch.load(out, weights_only=False)
    return saved["model"].eval(), saved["seconds"], saved["version"]


def batch_for(name: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    if name in ("llama", "gpt2"):
        return torch.randint(0, 8000, (8, 128), generator=generator)
    return torch.randn(8, 3, 224, 224, generator=generator)


def first_output(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    output = model(inputs)
    return output if isinstance(output, torch.Tensor) else output.logits


def macs(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        first_output(model, inputs)
    return counter.get_total_flops() // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["llama", "gpt2", "vit", "resnet50", "mobilenet_v2"], default="llama")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tp-python", default=TP_PYTHON, help="Torch-Pruning's python ('' skips; llama, resnet50)")
    args = parser.parse_args()
    set_threads(1)
    dense = build(args.model).eval()
    masked = copy.deepcopy(dense)
    start = time.perf_counter()
    ours = prune_ours(masked, example_for(args.model))
    ours_seconds = time.perf_counter() - start
    variants: dict[str, torch.nn.Module] = {"dense": dense, "ours": ours}
    result: dict[str, Any] = {"model": args.model, "rounds": args.rounds}
    result["seconds_to_find_and_remove"] = {"ours": ours_seconds}
    if args.tp_python and args.model in TP_MODELS:
        tp_model, tp_seconds, version = prune_torch_pruning(args.model, args.tp_python)
        variants["torch_pruning"] = tp_model
        result["seconds_to_find_and_remove"]["torch_pruning"] = tp_seconds
        result["torch_pruning_version"] = version
    inputs = batch_for(args.model)
    with torch.inference_mode():
        expected, actual = first_output(masked, inputs), first_output(ours, inputs)
    result["ours_max_abs_difference_masked_vs_slim"] = float((expected - actual).abs().max())
    result["parameters"] = {name: sum(p.numel() for p in m.parameters()) for name, m in variants.items()}
    result["macs"] = {name: macs(m, inputs) for name, m in variants.items()}

    def forward(model: torch.nn.Module):
        def run() -> tuple[float, float]:
            with torch.inference_mode():
                return timed(lambda: first_output(model, inputs))

        return run

    for model in variants.values():  # warm-up
        forward(model)()
    rounds = interleaved({name: forward(m) for name, m in variants.items()}, args.rounds)
    result["seconds_cpu"] = {name: median([cpu for _, cpu in r]) for name, r in rounds.items()}
    result["speedup_cpu"], result["speedup_wall"] = {}, {}
    for name in variants:
        if name != "dense":
            pairs = list(zip(rounds["dense"], rounds[name], strict=True))
            result["speedup_cpu"][name] = median([d[1] / v[1] for d, v in pairs])
            result["speedup_wall"][name] = median([d[0] / v[0] for d, v in pairs])
    dense_macs = result["macs"]["dense"]
    result["speedup_macs"] = {name: dense_macs / m for name, m in result["macs"].items() if name != "dense"}
    path = save(f"structured_{args.model}", result)
    print(f"{path}: {result}", file=sys.stderr)


if __name__ == "__main__":
    main()

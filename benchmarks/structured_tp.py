"""The Torch-Pruning side of ``benchmarks/structured.py``; runs in its own environment (``/work/venvs/tp``:
torch-pruning from PyPI, never a dependency of lightning-sparsity), imports neither lightning nor our package.

    /work/venvs/tp/bin/python -m benchmarks.structured_tp --model llama --out /tmp/tp_llama.pt

Builds the same random-init model as ``benchmarks/structured.py`` (same seed and config), prunes it with
``tp.pruner.BasePruner`` and L1 magnitude importance, and pickles the pruned model with the seconds that finding
and removing the units took. What it needs on these models (Torch-Pruning 1.6.1, transformers 5):

- Llama: its graph construction does not return while rotary embeddings are traced (its issue #527), so
  rotary embeddings are left out while it traces and prunes (the rotary module returns constants and
  ``apply_rotary_pos_emb`` returns the queries and keys as they are), then put back; under grouped-query
  attention it prunes query heads within each group and keeps every key/value head, and the attention modules
  and config are edited by hand afterwards (``num_key_value_groups``, ``num_attention_heads``,
  ``intermediate_size``), as in its LLM example. The hidden size stays (our pruning keeps it too).
- ResNet-50-shaped: half the channels of every prunable group, the classifier's outputs kept.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from pathlib import Path

import torch
import torch_pruning as tp
from transformers.models.llama import modeling_llama

from benchmarks.structured_models import build, example_for

HALF = 0.5


def prune_llama(model: torch.nn.Module, example: torch.Tensor) -> None:
    rotary = model.model.rotary_emb
    positions = torch.arange(example.shape[1])[None]
    with torch.no_grad():
        constants = tuple(t.detach() for t in rotary(model.model.embed_tokens(example), positions))
    rotary.forward = lambda x, position_ids=None, **kwargs: constants  # noqa: ARG005 - stub while tracing
    apply_rotary = modeling_llama.apply_rotary_pos_emb
    modeling_llama.apply_rotary_pos_emb = lambda q, k, cos, sin, *args, **kwargs: (q, k)  # noqa: ARG005
    num_heads = {}
    for module in model.modules():
        if hasattr(module, "q_proj"):
            num_heads[module.q_proj] = model.config.num_attention_heads
            num_heads[module.k_proj] = num_heads[module.v_proj] = model.config.num_key_value_heads
    hidden_layers = [m for n, m in model.named_modules() if n.endswith(("o_proj", "down_proj"))]
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=HALF,
        ignored_layers=[model.lm_head, *hidden_layers],  # the hidden size stays, as in ours
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=HALF,
        output_transform=lambda output: output.logits,
    )
    pruner.step()
    del rotary.forward  # the real rotary embeddings again
    modeling_llama.apply_rotary_pos_emb = apply_rotary
    for module in model.modules():
        if hasattr(module, "q_proj"):
            heads = module.q_proj.out_features // module.head_dim
            kv_heads = module.k_proj.out_features // module.head_dim
            module.num_key_value_groups = heads // kv_heads
            model.config.num_attention_heads, model.config.num_key_value_heads = heads, kv_heads
        if hasattr(module, "gate_proj"):
            model.config.intermediate_size = module.gate_proj.out_features


def prune_resnet(model: torch.nn.Module, example: torch.Tensor) -> None:
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=example,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=HALF,
        ignored_layers=[model.fc],
    )
    pruner.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["llama", "resnet50"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build(args.model).eval()
    example = example_for(args.model)
    start = time.perf_counter()
    (prune_llama if args.model == "llama" else prune_resnet)(model, example)
    seconds = time.perf_counter() - start
    version = importlib.metadata.version("torch-pruning")  # its __version__ says 1.6.0 in release 1.6.1
    torch.save({"model": model, "seconds": seconds, "version": version}, args.out)
    print(f"Torch-Pruning {version}: {args.model} pruned in {seconds:.1f} s")


if __name__ == "__main__":
    main()

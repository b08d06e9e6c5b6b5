"""Extra memory of the masks per pruned weight: ours beside ``torch.nn.utils.prune`` (which Lightning's
``ModelPruning`` uses), in memory and in the checkpoint.

A MiniLM-sized BERT (random init), every encoder Linear weight pruned to 90%. Bytes are counted from the
tensors' storages (shared storages once), so the figures are exact, not sampled.

    python -m benchmarks.memory
"""

from __future__ import annotations

import io

import torch
from torch import nn
from torch.nn.utils import prune
from transformers import BertModel

from benchmarks.common import ENCODER_LINEAR, bert_config, save, table
from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.sparsifier import Sparsifier

SPARSITY = 0.9


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def serialized_bytes(state: object) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def encoder_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.")}


def main() -> None:
    torch.manual_seed(0)
    model = BertModel(bert_config("minilm"))
    layers = encoder_layers(model)
    weights = {f"{name}.weight": layer.weight for name, layer in layers.items()}
    numel = sum(w.numel() for w in weights.values())
    dense_memory = storage_bytes(list(weights.values()))
    dense_checkpoint = serialized_bytes({n: w.detach() for n, w in weights.items()})

    pruner = Pruner(target_sparsity_ratio=SPARSITY, names=[ENCODER_LINEAR])
    callback = PruningCallback([pruner])
    sparsifier = Sparsifier(pruner, weights)
    callback.sparsifiers = [sparsifier]
    sparsifier.update_masks(SPARSITY)
    ours_memory = storage_bytes(
        list(sparsifier.masks.values()) + list(getattr(sparsifier.criterion, "stored", {}).values())
    )
    ours_checkpoint = serialized_bytes(callback.state_dict())

    for layer in layers.values():
        prune.l1_unstructured(layer, "weight", SPARSITY)
    held = [t for layer in layers.values() for t in (layer.weight, layer.weight_orig, layer.weight_mask)]
    torch_memory = storage_bytes(held) - dense_memory
    pruned_state = {f"{name}.{key}": t for name, layer in layers.items() for key, t in layer.state_dict().items()}
    torch_checkpoint = serialized_bytes({n: t for n, t in pruned_state.items() if not n.endswith(".bias")})
    torch_checkpoint -= dense_checkpoint

    rows = [
        {"system": "ours (PruningCallback)", "memory": ours_memory / numel, "checkpoint": ours_checkpoint / numel},
        {
            "system": "torch.nn.utils.prune / Lightning ModelPruning",
            "memory": torch_memory / numel,
            "checkpoint": torch_checkpoint / numel,
        },
    ]
    result = {"setup": f"MiniLM-sized BERT, {len(weights)} encoder Linear weights, {numel:,} values", "rows": rows}
    print(result["setup"])
    print(
        table(
            ["system", "extra bytes per pruned weight, in memory", "extra bytes per pruned weight, in the checkpoint"],
            [[r["system"], r["memory"], r["checkpoint"]] for r in rows],
        )
    )
    save("memory", result)


if __name__ == "__main__":
    main()

"""Weight representations for export: plain dense weights, and 2:4 semi-structured sparse weights on GPUs.

``PruningCallback`` keeps plain weights (masks are applied in place), so its models need no conversion;
:func:`make_permanent` is for models pruned with ``torch.nn.utils.prune`` (e.g. Lightning's
``ModelPruning``), whose weights are ``weight_orig * weight_mask`` reparametrizations.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

from lightning_sparsity.functional.patterns import as_matrix

#: The GPU generation 2:4 sparse kernels need (NVIDIA Ampere, compute capability 8.0).
SEMI_STRUCTURED_CAPABILITY = (8, 0)


def make_permanent(model: nn.Module) -> nn.Module:
    """Folds ``torch.nn.utils.prune`` masks into plain parameters, in place; pruned entries become +0.0."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                pruned = getattr(module, f"{hook._tensor_name}_mask") == 0
                prune.remove(module, hook._tensor_name)
                getattr(module, hook._tensor_name).data.masked_fill_(pruned, 0.0)
    return model


def semi_structured_unavailable() -> str:
    """Why 2:4 semi-structured sparse kernels cannot run here, or ``""`` when they can."""
    if not torch.cuda.is_available():
        return "2:4 semi-structured sparsity needs a CUDA GPU; none is available (on CPU keep the dense weights)"
    capability = torch.cuda.get_device_capability()
    if capability < SEMI_STRUCTURED_CAPABILITY:
        return (
            f"2:4 semi-structured sparsity needs an NVIDIA GPU of compute capability >= 8.0, this one has {capability}"
        )
    return ""


def is_two_four_sparse(weight: torch.Tensor) -> bool:
    """Whether every 4 consecutive inputs of every output row hold at least 2 zeros."""
    matrix = as_matrix(weight)
    if matrix.shape[1] % 4:
        return False
    return bool(((matrix.reshape(matrix.shape[0], -1, 4) == 0).sum(dim=-1) >= 2).all())


def to_semi_structured(model: nn.Module) -> list[str]:
    """Replaces the weights of the model's CUDA Linear layers that are 2:4 sparse by semi-structured sparse
    tensors (faster matmuls on Ampere+ GPUs), in place; returns the names of the converted layers.

    Raises a RuntimeError saying why when the GPU (or its absence) cannot run these kernels.
    """
    reason = semi_structured_unavailable()
    if reason:
        raise RuntimeError(reason)
    converted = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.weight.is_cuda and is_two_four_sparse(module.weight):
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            converted.append(name)
    return converted


def to_dense(model: nn.Module) -> nn.Module:
    """Turns semi-structured sparse weights back into ordinary dense parameters, in place."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and isinstance(weight.data, SparseSemiStructuredTensor):
            module.weight = nn.Parameter(weight.data.to_dense(), requires_grad=False)
    return model

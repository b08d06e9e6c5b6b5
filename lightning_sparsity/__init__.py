"""lightning-sparsity: pruning for PyTorch Lightning, exact, resumable and fast.

``import lightning_sparsity`` loads the engine (``PruningCallback``, ``Pruner``, the prune types) without transformers;
the classic facade (``NLPTrainer``, ``OptimizedModel``, ``NoTrainerOptimizer``, ...) loads on first use.
"""

from typing import TYPE_CHECKING, Any

from lightning_sparsity.callback import PruningCallback
from lightning_sparsity.config import PruningConfig
from lightning_sparsity.distillation import KnowledgeDistillation
from lightning_sparsity.distillation_config import Criterion, DistillationConfig
from lightning_sparsity.metrics import Metric
from lightning_sparsity.prune_types import PruneType, prune_types, register_prune_type
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import LayerSparsity, SparsityReport

if TYPE_CHECKING:
    from lightning_sparsity.compat.classic import (
        SUPPORTED_PRUNING_MODE,
        OptimizedModel,
        Provider,
        PrunerConfig,
        PruningMode,
    )
    from lightning_sparsity.compat.no_trainer import NoTrainerOptimizer
    from lightning_sparsity.trainer import NLPTrainer

__version__ = "0.1.0"

#: The classic facade, which imports transformers' Trainer machinery: loaded on first use.
_LAZY = {
    "NLPTrainer": "lightning_sparsity.trainer",
    "NoTrainerOptimizer": "lightning_sparsity.compat.no_trainer",
    **dict.fromkeys(
        ("OptimizedModel", "PruningMode", "PrunerConfig", "Provider", "SUPPORTED_PRUNING_MODE"),
        "lightning_sparsity.compat.classic",
    ),
}

__all__ = [
    "SUPPORTED_PRUNING_MODE",
    "Criterion",
    "DistillationConfig",
    "KnowledgeDistillation",
    "LayerSparsity",
    "Metric",
    "NLPTrainer",
    "NoTrainerOptimizer",
    "OptimizedModel",
    "PruneType",
    "Pruner",
    "PrunerConfig",
    "PruningCallback",
    "PruningConfig",
    "PruningMode",
    "Provider",
    "SparsityReport",
    "__version__",
    "prune_types",
    "register_prune_type",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_sparsity' has no attribute {name!r}")

"""lightning-sparsity: pruning for PyTorch Lightning, exact, resumable and fast."""

from lightning_sparsity.callback import PruningCallback
from lightning_sparsity.compat.classic import (
    SUPPORTED_PRUNING_MODE,
    OptimizedModel,
    Provider,
    PrunerConfig,
    PruningMode,
)
from lightning_sparsity.compat.no_trainer import NoTrainerOptimizer
from lightning_sparsity.config import PruningConfig
from lightning_sparsity.metrics import Metric
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import LayerSparsity, SparsityReport
from lightning_sparsity.trainer import NLPTrainer

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED_PRUNING_MODE",
    "LayerSparsity",
    "Metric",
    "NLPTrainer",
    "NoTrainerOptimizer",
    "OptimizedModel",
    "Pruner",
    "PrunerConfig",
    "PruningCallback",
    "PruningConfig",
    "PruningMode",
    "Provider",
    "SparsityReport",
    "__version__",
]

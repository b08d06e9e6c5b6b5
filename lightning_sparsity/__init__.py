"""lightning-sparsity: pruning for PyTorch Lightning, exact, resumable and fast."""

from lightning_sparsity.callback import PruningCallback
from lightning_sparsity.config import PruningConfig
from lightning_sparsity.distillation import KnowledgeDistillation
from lightning_sparsity.distillation_config import Criterion, DistillationConfig
from lightning_sparsity.metrics import Metric
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import LayerSparsity, SparsityReport
from lightning_sparsity.trainer import NLPTrainer

__version__ = "0.1.0"

__all__ = [
    "Criterion",
    "DistillationConfig",
    "KnowledgeDistillation",
    "LayerSparsity",
    "Metric",
    "NLPTrainer",
    "Pruner",
    "PruningCallback",
    "PruningConfig",
    "SparsityReport",
    "__version__",
]

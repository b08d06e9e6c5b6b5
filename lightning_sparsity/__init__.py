"""lightning-sparsity: pruning for PyTorch Lightning, exact, resumable and fast."""

from lightning_sparsity.callback import PruningCallback
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import LayerSparsity, SparsityReport

__version__ = "0.1.0"

__all__ = ["LayerSparsity", "Pruner", "PruningCallback", "SparsityReport", "__version__"]

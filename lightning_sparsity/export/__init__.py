"""Making sparsity pay: slim models, compressed checkpoints, and GPU 2:4 sparse weights.

- :func:`slim` removes the attention heads and FFN neurons pruned by the ``head``/``channel`` patterns;
  :func:`save_slimmed` / :func:`load_slimmed` save and rebuild the slimmed transformers model.
- :func:`save_sparse` / :func:`load_sparse` / :func:`load_sparse_model` write and read compressed
  checkpoints (bitmask + non-zero values, safetensors).
- :func:`make_permanent`, :func:`to_semi_structured` and :func:`to_dense` convert weight representations.
"""

from lightning_sparsity.export.slim import build_model, load_slimmed, save_slimmed, slim
from lightning_sparsity.export.sparse_io import load_sparse, load_sparse_model, save_sparse
from lightning_sparsity.export.weights import (
    is_two_four_sparse,
    make_permanent,
    semi_structured_unavailable,
    to_dense,
    to_semi_structured,
)

__all__ = [
    "build_model",
    "is_two_four_sparse",
    "load_slimmed",
    "load_sparse",
    "load_sparse_model",
    "make_permanent",
    "save_slimmed",
    "save_sparse",
    "semi_structured_unavailable",
    "slim",
    "to_dense",
    "to_semi_structured",
]

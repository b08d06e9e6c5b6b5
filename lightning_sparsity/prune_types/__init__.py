"""Prune types as plug-ins: one module per criterion, registered by name for ``Pruner(prune_type=...)``.

A new criterion is one file: a :class:`PruneType` subclass with a ``name`` (and a ``Settings`` dataclass if it
takes ``Pruner.parameters``), decorated with :func:`register_prune_type`.
"""

from lightning_sparsity.prune_types.base import (
    NoSettings,
    PruneType,
    check_setting,
    prune_type_class,
    prune_types,
    register_prune_type,
)

# isort: off
# registration order: the order in which error messages list the built-in types
from lightning_sparsity.prune_types.magnitude import BasicMagnitude
from lightning_sparsity.prune_types.pattern_lock import PatternLock
from lightning_sparsity.prune_types.group_lasso import GroupLasso
from lightning_sparsity.prune_types.snip_momentum import SnipMomentum
from lightning_sparsity.prune_types.gradient import Gradient
from lightning_sparsity.prune_types.obs import OBS
from lightning_sparsity.prune_types.movement import Movement
from lightning_sparsity.prune_types.wanda import Wanda
from lightning_sparsity.prune_types.sparsegpt import SparseGPT
# isort: on

__all__ = [
    "OBS",
    "BasicMagnitude",
    "Gradient",
    "GroupLasso",
    "Movement",
    "NoSettings",
    "PatternLock",
    "PruneType",
    "SnipMomentum",
    "SparseGPT",
    "Wanda",
    "check_setting",
    "prune_type_class",
    "prune_types",
    "register_prune_type",
]

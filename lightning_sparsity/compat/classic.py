"""Names of the old toolkit's classic API (intel-extension-for-transformers / nlp_toolkit) that its scripts
import: ``OptimizedModel``, ``PruningMode``, ``Provider``, ``PrunerConfig``; and the extras its ``prune()``
result answered (``.model``, ``.report_sparsity()``)."""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Any, Union

import transformers
from transformers import AutoConfig, PreTrainedModel

from lightning_sparsity.export.slim import SIZES_KEY, load_slimmed
from lightning_sparsity.export.sparse_io import load_sparse_model
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import SparsityReport

logger = logging.getLogger(__name__)

#: The old toolkit's name for :class:`Pruner` (``PrunerConfig(prune_type=..., target_sparsity_ratio=...)``).
PrunerConfig = Pruner


class PruningMode(enum.Enum):
    """The old toolkit's prune types; ``Pruner(prune_type=PruningMode.BASICMAGNITUDE.name)`` works (any case)."""

    BASICMAGNITUDE = "BasicMagnitude"
    PATTERNLOCK = "PatternLock"
    GROUPLASSO = "GroupLasso"


#: The old toolkit's set of supported mode names (``PruningMode`` member names).
SUPPORTED_PRUNING_MODE: frozenset[str] = frozenset(PruningMode.__members__)


class Provider(enum.Enum):
    """Who carries out the pruning: ``"inc"`` (here: the native engine, which runs INC's pruning types)."""

    INC = "inc"


def check_provider(provider: Any) -> str:
    """``provider`` as its lower-case name, or a clear error for one other than ``"inc"``."""
    value = getattr(provider, "value", provider)
    if not isinstance(value, str) or value.lower() != Provider.INC.value:
        raise ValueError(
            f"prune(provider={provider!r}) is not supported; allowed values: 'inc' (lightning-sparsity prunes with "
            "its own engine in INC's place; NNCF and other providers have no equivalent here)"
        )
    return value.lower()


class OptimizedModel:
    """The old toolkit's loader of optimized models: ``OptimizedModel.from_pretrained(folder_or_file)``."""

    @staticmethod
    def from_pretrained(model_name_or_path: Union[str, Path], **kwargs: Any) -> PreTrainedModel:
        """Loads what ``NLPTrainer.save_model`` (dense or pruned), ``export.save_slimmed`` (a folder) or
        ``export.save_sparse`` (a ``.safetensors`` file) wrote, as the model class its config names.

        ``kwargs`` go to the class's ``from_pretrained`` for a plain folder; slimmed and compressed models
        are rebuilt from their own config and take none.
        """
        path = Path(model_name_or_path)
        if path.is_file():
            return _no_kwargs(kwargs, path, load_sparse_model(path))
        if not path.is_dir():
            raise ValueError(
                f"OptimizedModel.from_pretrained({str(model_name_or_path)!r}): no such folder or file; give what "
                "NLPTrainer.save_model wrote (hub downloads are for transformers' AutoModel classes)"
            )
        config = AutoConfig.from_pretrained(path)
        if getattr(config, SIZES_KEY, None) is not None:
            return _no_kwargs(kwargs, path, load_slimmed(path))
        architecture = (config.architectures or [None])[0]
        model_class = getattr(transformers, architecture or "", None)
        if not (isinstance(model_class, type) and issubclass(model_class, PreTrainedModel)):
            raise ValueError(f"{path}/config.json names no transformers architecture ({architecture!r})")
        return model_class.from_pretrained(path, **kwargs)


def _no_kwargs(kwargs: dict[str, Any], path: Path, model: PreTrainedModel) -> PreTrainedModel:
    if kwargs:
        raise ValueError(f"OptimizedModel.from_pretrained({str(path)!r}) takes no {', '.join(kwargs)} for this model")
    return model


class ReportSparsity:
    """``model.report_sparsity()`` as nlp_toolkit's pruned model answered it: logs and returns the table."""

    def __init__(self, report: SparsityReport) -> None:
        self.report = report

    def __call__(self) -> SparsityReport:
        logger.info("sparsity report (overall %.4f):\n%s", self.report.sparsity, self.report)
        return self.report


def with_classic_answers(model: Any, report: SparsityReport) -> Any:
    """``model`` itself, also answering ``.report_sparsity()`` and (unless it has its own) ``.model``, as the
    object nlp_toolkit's ``prune()`` returned did. Set outside ``nn.Module``'s registry: no submodule cycle."""
    object.__setattr__(model, "report_sparsity", ReportSparsity(report))
    if not hasattr(model, "model"):
        object.__setattr__(model, "model", model)
    return model


__all__ = [
    "SUPPORTED_PRUNING_MODE",
    "OptimizedModel",
    "PrunerConfig",
    "PruningMode",
    "Provider",
    "check_provider",
    "with_classic_answers",
]

"""Ready-made text classification for the CLI and the demo: a transformers model module and a file datamodule."""

from lightning_sparsity.text.data import TextClassificationDataModule, label_names, read_rows
from lightning_sparsity.text.module import TextClassificationModule, adamw_with_warmup, resolve_model_path

__all__ = [
    "TextClassificationDataModule",
    "TextClassificationModule",
    "adamw_with_warmup",
    "label_names",
    "read_rows",
    "resolve_model_path",
]

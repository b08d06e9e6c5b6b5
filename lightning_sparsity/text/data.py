"""Text-classification data from local TSV, CSV, JSON and JSON-lines files, tokenized for a transformers model."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, cast

import lightning.pytorch as pl
from lightning.fabric.utilities.data import AttributeDict
from torch.utils.data import DataLoader, Dataset
from transformers import AutoTokenizer, DataCollatorWithPadding, PreTrainedTokenizerBase
from typing_extensions import override

FORMATS = (".tsv", ".csv", ".json", ".jsonl")


def read_rows(path: str | Path, column_names: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    """The rows of a TSV, CSV, JSON (a list of objects) or JSON-lines file as dicts.

    A ``.json`` file may hold JSON lines (one object a line, as transformers' examples and ``datasets``
    write them) and a ``.jsonl`` file a list: the content decides, not the suffix.

    TSV is split on tabs verbatim: GLUE sentences hold quote characters that are text, not CSV quoting.
    A UTF-8 byte-order mark is dropped. ``column_names`` names the columns of a delimited file that has
    no header row (e.g. CoLA).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"data file {str(path)!r} has suffix {suffix!r}; allowed suffixes: {', '.join(FORMATS)}")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if suffix in (".json", ".jsonl"):
            return _json_rows(path, handle.read())
        if suffix == ".tsv":
            lines = [line.rstrip("\r\n").split("\t") for line in handle if line.strip("\r\n")]
        else:
            lines = [line for line in csv.reader(handle) if line]
    header = list(column_names) if column_names is not None else lines.pop(0)
    for number, line in enumerate(lines, start=1 if column_names is not None else 2):
        if len(line) != len(header):
            raise ValueError(f"{str(path)!r} line {number} has {len(line)} fields, the header {len(header)} ({header})")
    return [dict(zip(header, line, strict=True)) for line in lines]


def _json_rows(path: Path, text: str) -> list[dict[str, Any]]:
    """A JSON list of objects, or JSON lines."""
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{str(path)!r} is not a JSON list of objects: {error}") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{str(path)!r} line {number} is not JSON ({error.msg}): a JSON data file holds a list of "
                        "objects or one object a line (JSON lines)"
                    ) from None
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"JSON data file {str(path)!r} must hold objects, one per example")
    return rows


def label_names(labels: Sequence[Any]) -> Optional[list[str]]:
    """Sorted distinct labels when any is not an integer (they are then mapped to ids in this order), else None."""
    if all(_as_int(label) is not None for label in labels):
        return None
    return sorted({str(label) for label in labels})


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


class EncodedTexts(Dataset):
    """Tokenized examples (``input_ids``, ``attention_mask``, ...) with an optional ``labels`` entry."""

    def __init__(self, encodings: dict[str, list], labels: Optional[list[int]]) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(next(iter(self.encodings.values())))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {key: values[index] for key, values in self.encodings.items()}
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


class TextClassificationDataModule(pl.LightningDataModule):
    """Single sentences or sentence pairs with integer or string labels, from local files.

    Args:
        train_file, validation_file, test_file, predict_file: ``.tsv``, ``.csv``, ``.json`` or ``.jsonl``
            files; the predict file needs no label column.
        text_column: column holding the (first) sentence.
        text_pair_column: column holding the second sentence of a pair, or None for single sentences.
        label_column: column holding the label: integers are used as ids; strings are mapped to ids in
            sorted order (``label_names``), which the text module saves into the model config.
        column_names: names of the columns of delimited files that have no header row.
        tokenizer_name_or_path: a local tokenizer folder; None uses the model's (``model_name_or_path``
            of the LightningModule).
        max_length: longest tokenized example; longer ones are truncated. Batches are padded to their
            longest example.
        batch_size: training batch size; evaluation uses ``eval_batch_size`` (None: the same).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        train_file: Optional[str] = None,
        validation_file: Optional[str] = None,
        test_file: Optional[str] = None,
        predict_file: Optional[str] = None,
        text_column: str = "sentence",
        text_pair_column: Optional[str] = None,
        label_column: str = "label",
        column_names: Optional[list[str]] = None,
        tokenizer_name_or_path: Optional[str] = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TextClassificationDataModule.{name} must be an integer >= 1, got {value!r}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ValueError(
                f"TextClassificationDataModule.eval_batch_size must be >= 1 or None, got {eval_batch_size}"
            )
        self.save_hyperparameters()
        self.files = {"train": train_file, "validation": validation_file, "test": test_file, "predict": predict_file}
        for split, file in self.files.items():
            if file is not None and Path(file).suffix.lower() not in FORMATS:
                raise ValueError(
                    f"TextClassificationDataModule.{split}_file={file!r} has an unknown format; "
                    f"allowed suffixes: {', '.join(FORMATS)}"
                )
        self.tokenizer: Optional[PreTrainedTokenizerBase] = None
        self.label_names: Optional[list[str]] = None
        self.datasets: dict[str, EncodedTexts] = {}

    @property
    @override
    def hparams(self) -> AttributeDict:
        """The saved hyperparameters: the AttributeDict that ``save_hyperparameters`` makes (Lightning types it as
        any mutable mapping, without attribute access)."""
        return cast(AttributeDict, super().hparams)

    @property
    def num_labels(self) -> int:
        """Distinct labels: the named ones, else one more than the largest integer label seen."""
        if self.label_names is not None:
            return len(self.label_names)
        labels = [label for dataset in self.datasets.values() if dataset.labels for label in dataset.labels]
        return max(labels) + 1 if labels else 0

    @override
    def setup(self, stage: str) -> None:
        if self.datasets:
            return
        tokenizer = self.tokenizer
        if tokenizer is None:
            tokenizer = self.tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path())
        rows = {split: read_rows(file, self.hparams.column_names) for split, file in self.files.items() if file}
        labelled = {split: split_rows for split, split_rows in rows.items() if split != "predict"}
        for split, split_rows in labelled.items():
            self._check_columns(split, split_rows, [self.hparams.label_column])
        self.label_names = label_names([row[self.hparams.label_column] for r in labelled.values() for row in r])
        self.datasets = {split: self._encode(split, split_rows, tokenizer) for split, split_rows in rows.items()}

    def _tokenizer_path(self) -> str:
        if self.hparams.tokenizer_name_or_path is not None:
            return self.hparams.tokenizer_name_or_path
        model_path = getattr(self.trainer.lightning_module if self.trainer else None, "model_name_or_path", None)
        if not model_path:
            raise ValueError(
                "TextClassificationDataModule.tokenizer_name_or_path is not set and the LightningModule has no "
                "model_name_or_path to take the tokenizer from: set tokenizer_name_or_path"
            )
        return model_path

    def _check_columns(self, split: str, rows: list[dict[str, Any]], extra: list[str]) -> None:
        needed = [self.hparams.text_column, *([self.hparams.text_pair_column] if self.hparams.text_pair_column else [])]
        for column in [*needed, *extra]:
            if rows and column not in rows[0]:
                raise ValueError(
                    f"the {split} file {self.files[split]!r} has no column {column!r}; its columns are "
                    f"{list(rows[0])} (set text_column, text_pair_column, label_column or column_names)"
                )

    def _encode(self, split: str, rows: list[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> EncodedTexts:
        self._check_columns(split, rows, [])
        texts = [str(row[self.hparams.text_column]) for row in rows]
        pairs = [str(row[self.hparams.text_pair_column]) for row in rows] if self.hparams.text_pair_column else None
        encodings = tokenizer(texts, pairs, truncation=True, max_length=self.hparams.max_length)
        labels = None
        if split != "predict" or (rows and self.hparams.label_column in rows[0]):
            labels = [self.label_id(row[self.hparams.label_column]) for row in rows]
        return EncodedTexts(dict(encodings), labels)

    def label_id(self, label: Any) -> int:
        if self.label_names is None:
            return int(label)
        return self.label_names.index(str(label))

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"TextClassificationDataModule.{split}_file is not set, so there is no {split} data")
        batch_size = self.hparams.batch_size if shuffle else self.hparams.eval_batch_size or self.hparams.batch_size
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            # setup, which made the datasets, set the tokenizer
            collate_fn=DataCollatorWithPadding(cast(PreTrainedTokenizerBase, self.tokenizer), return_tensors="pt"),
            num_workers=self.hparams.num_workers,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> DataLoader | list:
        """The validation data; none (fit skips validation) without a validation file."""
        return self._loader("validation") if "validation" in self.datasets else []

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    @override
    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

"""Tiny models and data shared by the tests: no downloads, seconds on a CPU."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 64
SEQ = 8


def tiny_bert_config(**overrides: Any) -> BertConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        num_labels=2,
    )
    settings.update(overrides)
    return BertConfig(**settings)


def toy_dataset(size: int = 64, seed: int = 0) -> TensorDataset:
    """Token sequences labelled 1 when token 1 appears in them: a task a tiny BERT learns."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (size, SEQ), generator=generator)
    labels = torch.randint(0, 2, (size,), generator=generator)
    positions = torch.randint(0, SEQ, (size,), generator=generator)
    input_ids[labels == 1, positions[labels == 1]] = 1
    return TensorDataset(input_ids, labels)


def toy_loader(size: int = 64, batch_size: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(toy_dataset(size, seed), batch_size=batch_size)


class TinyBert(pl.LightningModule):
    """A BertForSequenceClassification built from a config, trained with AdamW."""

    def __init__(self, lr: float = 1e-3, optimizer: str = "adamw", **config: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = BertForSequenceClassification(tiny_bert_config(**config))
        self.lr = lr
        self.optimizer_name = optimizer

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids, labels = batch
        return torch.nn.functional.cross_entropy(self(input_ids), labels)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        input_ids, labels = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(input_ids), labels))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def make_trainer(**overrides: Any) -> pl.Trainer:
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
    )
    settings.update(overrides)
    return pl.Trainer(**settings)


def pruned_weights(module: pl.LightningModule, pattern: str = "encoder") -> dict[str, torch.Tensor]:
    """Linear weights of the encoder, the default-style selection used across tests."""
    return {
        name: p for name, p in module.named_parameters() if pattern in name and name.endswith("weight") and p.dim() == 2
    }

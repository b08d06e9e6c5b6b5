"""``NLPTrainer``: the intel-extension-for-transformers trainer API, running on a Lightning Trainer.

A script written for the old toolkit (``NLPTrainer(model=..., args=TrainingArguments(...), ...)`` then
``trainer.prune(pruning_config=PruningConfig(...))``) runs with only its import line changed. Lightning users
may pass a ``LightningModule`` with a ``LightningDataModule`` or dataloaders instead.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from transformers import (
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from transformers.trainer_utils import PredictionOutput, TrainOutput, speed_metrics
from typing_extensions import override

from lightning_sparsity.callback import PruningCallback
from lightning_sparsity.compat.classic import check_provider, with_classic_answers
from lightning_sparsity.compat.own_loop import OwnLoopPruning
from lightning_sparsity.config import PruningConfig, fitted_to_run
from lightning_sparsity.distillation_config import DistillationConfig
from lightning_sparsity.metrics import (
    BUILTIN_METRICS,
    ComputeMetrics,
    Metric,
    MetricComparison,
    combined_score,
    compare,
    evaluation_results,
)
from lightning_sparsity.pruner import Pruner
from lightning_sparsity.report import SparsityReport
from lightning_sparsity.text.module import TextClassificationModule
from lightning_sparsity.training_args import (
    evaluates_during_training,
    loader_settings,
    optimizer_and_scheduler,
    optimizer_steps,
    trainer_settings,
    unsupported_fields,
)

logger = logging.getLogger(__name__)
_LABEL_COLUMNS = ("label", "labels", "label_ids")
_BatchOutputs = tuple[float, Tensor, Optional[Tensor]]


@dataclass(frozen=True)
class PruningReport:
    """What ``NLPTrainer.prune`` left: the metric before and after pruning, and the sparsity reached."""

    metric: Optional[MetricComparison]
    layers: SparsityReport

    @property
    def sparsity(self) -> float:
        return self.layers.sparsity

    def to_dict(self) -> dict[str, Any]:
        metric = None if self.metric is None else vars(self.metric)
        return {"metric": metric, "sparsity": self.sparsity, "layers": self.layers.to_dicts()}

    def __str__(self) -> str:
        lines = [f"overall sparsity: {self.sparsity:.4f}"]
        if self.metric is not None:
            m = self.metric
            lines.append(
                f"{' + '.join(m.names)}: dense {m.baseline:.4f} -> pruned {m.final:.4f} "
                f"({m.relative_change:+.2%}), criterion {'met' if m.criterion_met else 'NOT met'}"
            )
        return "\n".join([*lines, "", str(self.layers)])


class TransformersTrainingModule(TextClassificationModule):
    """A :class:`TextClassificationModule` trained and evaluated as transformers' ``Trainer`` does: the
    optimizer and lr schedule come from ``TrainingArguments``, and the evaluation figures are computed once
    over all logits (by ``compute_metrics`` when given, else by torchmetrics) and logged as ``eval_*``."""

    training_args: TrainingArguments
    compute_metrics: Optional[ComputeMetrics] = None

    @classmethod
    def wrap(
        cls, model: PreTrainedModel, args: TrainingArguments, compute_metrics: Optional[ComputeMetrics]
    ) -> TransformersTrainingModule:
        module = cls.from_model(model, learning_rate=args.learning_rate, weight_decay=args.weight_decay)
        module.training_args = args
        module.compute_metrics = compute_metrics
        return module

    def outputs(self, batch: dict[str, Tensor]) -> _BatchOutputs:
        """Mean loss (NaN without labels), logits and labels of a batch, on the CPU."""
        labels = batch.get("labels")
        logits = self(**{key: value for key, value in batch.items() if key != "labels"})
        loss = float("nan") if labels is None else float(nn.functional.cross_entropy(logits, labels))
        return loss, logits.detach().float().cpu(), None if labels is None else labels.detach().cpu()

    @override
    def on_validation_epoch_start(self) -> None:
        self._collected: list[_BatchOutputs] = []

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._collected.append(self.outputs(batch))

    @override
    def on_validation_epoch_end(self) -> None:
        self.log_dict(summarize(self._collected, self.compute_metrics, "eval_"), prog_bar=True)

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> _BatchOutputs:
        return self.outputs(batch)

    @override
    def configure_optimizers(self) -> Any:
        optimizer, scheduler = optimizer_and_scheduler(
            self.training_args, self.model, int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def summarize(
    outputs: Sequence[_BatchOutputs], compute_metrics: Optional[ComputeMetrics], prefix: str
) -> dict[str, float]:
    """Evaluation results over batches: the sample-weighted mean loss and the metrics of all logits."""
    losses, logits, labels = zip(*outputs, strict=True)
    sizes = [len(batch) for batch in logits]
    loss = sum(loss * size for loss, size in zip(losses, sizes, strict=True)) / sum(sizes)
    all_labels = None if labels[0] is None else torch.cat(labels)
    return evaluation_results(loss, torch.cat(logits), all_labels, compute_metrics, prefix)


class NLPTrainer:
    """A transformers-``Trainer``-like facade over ``lightning.Trainer``, with ``prune()``.

    Transformers style: ``model`` is a sequence-classification ``PreTrainedModel`` and ``args`` a
    ``TrainingArguments`` (mapped by :mod:`lightning_sparsity.training_args`); datasets are
    ``datasets.Dataset`` or map-style datasets of dicts, batched by ``data_collator``.
    Lightning style: ``model`` is a ``LightningModule``, data comes from ``datamodule`` or
    ``train_dataloaders``/``val_dataloaders``, and evaluation keys are the module's logged ones with
    ``val_`` turned into ``eval_``. In both, further keyword arguments go to ``lightning.Trainer``.
    """

    def __init__(
        self,
        model: Union[PreTrainedModel, pl.LightningModule],
        args: Optional[TrainingArguments] = None,
        data_collator: Optional[Callable[[list[dict]], dict]] = None,
        train_dataset: Optional[Dataset] = None,
        eval_dataset: Optional[Dataset] = None,
        processing_class: Optional[PreTrainedTokenizerBase] = None,
        compute_metrics: Optional[ComputeMetrics] = None,
        callbacks: Optional[list[Callback]] = None,
        *,
        tokenizer: Optional[PreTrainedTokenizerBase] = None,
        datamodule: Optional[pl.LightningDataModule] = None,
        train_dataloaders: Optional[DataLoader] = None,
        val_dataloaders: Optional[DataLoader] = None,
        **trainer_kwargs: Any,
    ) -> None:
        if tokenizer is not None and processing_class is not None:
            raise ValueError("NLPTrainer got both tokenizer and processing_class (its new name): give one of them")
        self._model = model
        self.processing_class = processing_class if processing_class is not None else tokenizer
        self.callbacks = _lightning_callbacks([*(callbacks or []), *(trainer_kwargs.pop("callbacks", None) or [])])
        self.trainer_kwargs = trainer_kwargs
        self.trainer: Optional[pl.Trainer] = None
        self.pruning_report: Optional[PruningReport] = None
        self.distillation_report: Optional[MetricComparison] = None
        self.pruning_config: Optional[PruningConfig] = None
        if isinstance(model, pl.LightningModule):
            transformers_only = {
                "args": args,
                "data_collator": data_collator,
                "train_dataset": train_dataset,
                "eval_dataset": eval_dataset,
                "compute_metrics": compute_metrics,
            }
            given = [name for name, value in transformers_only.items() if value is not None]
            if given:
                raise ValueError(
                    f"NLPTrainer with a LightningModule takes datamodule= or train_dataloaders=/val_dataloaders= and "
                    f"lightning.Trainer keyword arguments, not {', '.join(given)} (those need a PreTrainedModel)"
                )
            self.module: pl.LightningModule = model
            self.data: dict[str, Any] = {"datamodule": datamodule, "train_dataloaders": train_dataloaders}
            self.val_data: dict[str, Any] = {"datamodule": datamodule, "dataloaders": val_dataloaders}
            return
        if not isinstance(model, PreTrainedModel):
            raise ValueError(
                f"NLPTrainer.model must be a transformers PreTrainedModel or a lightning LightningModule, "
                f"got {type(model).__name__}"
            )
        self.args = args if args is not None else TrainingArguments(output_dir="trainer_output")
        if self.args.log_level != "passive":  # as transformers' Trainer sets its library's verbosity
            logging.getLogger("lightning_sparsity").setLevel(self.args.get_process_log_level())
        ignored = unsupported_fields(self.args)
        if ignored:
            warnings.warn(f"NLPTrainer ignores these TrainingArguments settings: {', '.join(ignored)}", stacklevel=2)
        pl.seed_everything(self.args.seed, verbose=False)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.collator = _ColumnFilter(
            data_collator or _default_collator(self.processing_class),
            _model_inputs(model, self.args.label_names) if self.args.remove_unused_columns else None,
        )
        self.module = TransformersTrainingModule.wrap(model, self.args, compute_metrics)

    @property
    def model(self) -> Union[PreTrainedModel, pl.LightningModule]:
        return self._model

    @model.setter
    def model(self, model: Union[PreTrainedModel, pl.LightningModule]) -> None:
        """Another model of the same kind (``trainer.model = reloaded``) is then evaluated, trained and saved."""
        kind = pl.LightningModule if self.is_lightning_style else PreTrainedModel
        if not isinstance(model, kind):
            raise ValueError(f"NLPTrainer.model must stay a {kind.__name__}, got {type(model).__name__}")
        if isinstance(model, pl.LightningModule):  # is_lightning_style, as checked just above
            self.module = model
        else:
            self.module = TransformersTrainingModule.wrap(model, self.args, self.compute_metrics)
        self._model = model

    @property
    def compute_metrics(self) -> Optional[ComputeMetrics]:
        if self.is_lightning_style:
            return None
        return cast(TransformersTrainingModule, self.module).compute_metrics  # what a transformers model gets

    @property
    def is_lightning_style(self) -> bool:
        return isinstance(self.model, pl.LightningModule)

    def train(self) -> TrainOutput:
        """Trains the model; returns transformers' ``TrainOutput`` (global step, last training loss, metrics)."""
        trainer = self._fit([])
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        return TrainOutput(trainer.global_step, metrics.get("train_loss", math.nan), metrics)

    def evaluate(self, eval_dataset: Optional[Dataset] = None) -> dict[str, float]:
        """``eval_loss`` and ``eval_<metric>`` figures of the model the trainer holds now, with transformers'
        ``eval_runtime``, ``eval_samples_per_second`` and ``eval_steps_per_second``."""
        trainer = self._new_trainer([])
        start = time.time()
        if self.is_lightning_style:
            results = trainer.validate(self.module, verbose=False, **self.val_data)[0]
            metrics = {_eval_key(key): float(value) for key, value in results.items()}
            loaders = trainer.val_dataloaders
            loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
            sizes = [len(loader.dataset) for loader in loaders if hasattr(getattr(loader, "dataset", None), "__len__")]
            samples = sum(sizes) if len(sizes) == len(loaders) else None
            steps = int(sum(trainer.num_val_batches))
        else:
            loader = self._loader(eval_dataset if eval_dataset is not None else self.eval_dataset, train=False)
            metrics = dict(trainer.validate(self.module, loader, verbose=False)[0])
            samples, steps = len(loader.dataset), len(loader)  # type: ignore[arg-type]
        return {**metrics, **speed_metrics("eval", start, num_samples=samples, num_steps=steps)}

    def predict(self, test_dataset: Dataset) -> Union[PredictionOutput, list, None]:
        """Logits, labels and ``test_*`` metrics (transformers' ``PredictionOutput``); for a LightningModule,
        what ``lightning.Trainer.predict`` returns."""
        trainer = self._new_trainer([])
        if self.is_lightning_style:
            return trainer.predict(self.module, test_dataset)
        # one list of batch outputs: a single dataloader, predictions returned (the default)
        outputs = cast(list[_BatchOutputs], trainer.predict(self.module, self._loader(test_dataset, train=False)))
        labels = [batch_labels for _, _, batch_labels in outputs]
        return PredictionOutput(
            predictions=torch.cat([logits for _, logits, _ in outputs]).numpy(),
            # the batches of one dataset all have labels or none
            label_ids=None if labels[0] is None else torch.cat(cast(list[Tensor], labels)).numpy(),
            metrics=summarize(outputs, self.compute_metrics, "test_"),
        )

    def save_model(self, output_dir: Optional[str] = None) -> None:
        """Writes the model (and tokenizer) with ``save_pretrained``: transformers' format, pruned zeros kept."""
        model = self.module.model if self.is_lightning_style else self.model
        if not isinstance(model, PreTrainedModel):
            raise ValueError(
                "NLPTrainer.save_model writes transformers models: this LightningModule has no PreTrainedModel in "
                "its .model attribute; save a Lightning checkpoint with trainer.save_checkpoint instead"
            )
        output_dir = output_dir or (self.args.output_dir if not self.is_lightning_style else None)
        if output_dir is None:
            raise ValueError("NLPTrainer.save_model needs output_dir with a LightningModule")
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def init_pruner(self, pruning_config: Optional[PruningConfig] = None, provider: str = "inc") -> PruningConfig:
        """Checks and keeps the pruning configuration for the next ``prune()`` (the old toolkit's two-step use);
        its ramps are fitted to the run, or refused, when ``prune()`` starts, before any training."""
        check_provider(provider)
        config = pruning_config if pruning_config is not None else PruningConfig()
        if not isinstance(config, PruningConfig):
            raise ValueError(f"NLPTrainer.prune takes a PruningConfig, got {type(config).__name__}")
        metrics = config.metric_list
        if metrics and not self.is_lightning_style and self.compute_metrics is None:
            unknown = [m.name for m in metrics if m.name not in BUILTIN_METRICS]
            if unknown:
                raise ValueError(
                    f"Metric.name {', '.join(map(repr, unknown))} is not computed without a compute_metrics; "
                    f"built-in names: {', '.join(BUILTIN_METRICS)} (or pass compute_metrics to NLPTrainer)"
                )
        self.pruning_config = config
        return config

    def prune(
        self,
        pruning_config: Optional[PruningConfig] = None,
        provider: str = "inc",
        eval_func: Optional[Callable[[Any], float]] = None,
        train_func: Optional[Callable[[Any], Any]] = None,
        teacher_model: Union[nn.Module, str, None] = None,
    ) -> Union[PreTrainedModel, pl.LightningModule]:
        """Evaluates the dense baseline, trains while pruning, evaluates again and returns the pruned model.

        ``eval_func(model) -> float`` replaces ``evaluate()`` as the judged figure; ``train_func(model)`` replaces
        the built-in training (its optimizer steps then drive step-counted ramps, see ``compat.own_loop``).
        ``pruning_report`` then holds the baseline and final figure, whether the Metric's criterion was met, and
        the sparsity; the returned model also answers ``.report_sparsity()`` and ``.model`` (nlp_toolkit's).
        Progress and the final report are logged at INFO. With ``teacher_model`` (a model, a folder or a checkpoint)
        the training loss is distilled from it with ``DistillationConfig()``'s criterion; for another criterion,
        ``orchestrate_optimizations([pruning_config, distillation_config], teacher_model)``.
        """
        if pruning_config is not None or self.pruning_config is None:
            config = self.init_pruner(pruning_config, provider)
        else:  # the one init_pruner kept
            check_provider(provider)
            config = self.pruning_config
        self.pruning_config = None
        metrics, judge = config.metric_list, _judge(config.metric_list, eval_func)
        baseline = self._judged(judge, eval_func)
        if judge:
            combined_score(judge, baseline)  # a name the evaluation lacks fails here, before training
            logger.info("dense baseline: %s", _figures(judge, baseline))
        if train_func is not None:
            if teacher_model is not None:
                raise ValueError("NLPTrainer.prune takes train_func or teacher_model, not both: train_func trains")
            pruning = OwnLoopPruning(self.model, config.pruners, "NLPTrainer.prune(train_func=...)")
            pruning.run(train_func)
            layers = pruning.report()
        else:
            callback = PruningCallback(pruners=self._fitted(config.pruners))
            with self._distilling(teacher_model, DistillationConfig()):
                self._fit([callback, _SparsityLog(callback)])
            layers = callback.report()
        comparison = compare(judge, baseline, self._judged(judge, eval_func)) if judge else None
        self.pruning_report = PruningReport(metric=comparison, layers=layers)
        logger.info("pruning done:\n%s", self.pruning_report)
        if comparison is not None and not comparison.criterion_met:
            logger.warning("the pruned model misses the metric criterion of %s", metrics[0] if metrics else judge[0])
        return with_classic_answers(self.model, layers)

    def _judged(self, judge: list[Metric], eval_func: Optional[Callable[[Any], float]]) -> dict[str, float]:
        if not judge:
            return {}
        if eval_func is not None:
            return {judge[0].name: float(eval_func(self.model))}
        return self.evaluate()

    def _fitted(self, pruners: list[Pruner]) -> list[Pruner]:
        """Ramps fitted to (or refused for) a transformers-style run, whose length is known before training."""
        if self.is_lightning_style or self.train_dataset is None:
            return pruners  # the PruningCallback warns once Lightning knows the run's length
        max_epochs, max_steps = optimizer_steps(self.args, len(self._loader(self.train_dataset, train=True)))
        fitted = fitted_to_run(pruners, max_epochs, max_steps)
        for index, (before, after) in enumerate(zip(pruners, fitted, strict=True)):
            if after is not before:
                logger.info(
                    "pruner %d: the default epoch_range %s does not finish in this run of %d epoch(s); ramping over "
                    "optimizer steps %s instead (masks updated every %d steps)",
                    index,
                    before.epoch_range,
                    max_epochs,
                    after.step_range,
                    after.update_frequency,
                )
        return fitted

    def distill(
        self,
        distillation_config: Optional[DistillationConfig] = None,
        teacher_model: Union[nn.Module, str, None] = None,
    ) -> Union[PreTrainedModel, pl.LightningModule]:
        """Trains the model against ``teacher_model`` (a model, a folder or a checkpoint, frozen) with the
        config's ``criterion`` and returns it. With ``metrics``, ``distillation_report`` holds the figure
        before and after and whether its criterion was met."""
        if teacher_model is None:
            raise ValueError("NLPTrainer.distill needs teacher_model: the model to distil from, or its path")
        config = distillation_config if distillation_config is not None else DistillationConfig()
        metrics = config.metric_list
        with self._distilling(teacher_model, config):
            baseline = self.evaluate() if metrics else {}
            if metrics:
                combined_score(metrics, baseline)  # a name the evaluation lacks fails here, before training
            self._fit([])
        self.distillation_report = compare(metrics, baseline, self.evaluate()) if metrics else None
        return self.model

    def orchestrate_optimizations(
        self, config_list: Sequence[Union[PruningConfig, DistillationConfig]], teacher_model: Any = None
    ) -> Union[PreTrainedModel, pl.LightningModule]:
        """The toolkit's way to combine optimizations: a ``PruningConfig`` and a ``DistillationConfig`` prune
        while distilling from ``teacher_model`` in one run; either alone is ``prune`` or ``distill``."""
        pruning = [c for c in config_list if isinstance(c, PruningConfig)]
        distillation = [c for c in config_list if isinstance(c, DistillationConfig)]
        if (
            not config_list
            or len(pruning) > 1
            or len(distillation) > 1
            or len(pruning) + len(distillation) < len(config_list)
        ):
            raise ValueError(
                "NLPTrainer.orchestrate_optimizations takes at most one PruningConfig and one DistillationConfig, "
                f"got {[type(c).__name__ for c in config_list]}"
            )
        if bool(distillation) != (teacher_model is not None):
            raise ValueError(
                "NLPTrainer.orchestrate_optimizations: a DistillationConfig and a teacher_model go together"
            )
        if not pruning:
            return self.distill(distillation[0], teacher_model)
        if not distillation:
            return self.prune(pruning[0])
        with self._distilling(teacher_model, distillation[0]):
            return self.prune(pruning[0])

    @contextmanager
    def _distilling(self, teacher_model: Any, config: DistillationConfig) -> Iterator[None]:
        """Within the block, the module trains against ``teacher_model`` (None: unchanged) with ``config``."""
        if teacher_model is None:
            yield
            return
        if not isinstance(self.module, TextClassificationModule):
            raise ValueError(
                "NLPTrainer distils a transformers model or a TextClassificationModule; in another LightningModule, "
                "use lightning_sparsity.distillation.KnowledgeDistillation in its training_step"
            )
        self.module.distill_from(config.distillation(teacher_model))
        try:
            yield
        finally:
            self.module.distill_from(None)

    def _fit(self, extra_callbacks: list[Callback]) -> pl.Trainer:
        trainer = self._new_trainer(extra_callbacks)
        if self.is_lightning_style:
            trainer.fit(self.module, **self.data, val_dataloaders=self.val_data["dataloaders"])
        else:
            evaluates = evaluates_during_training(self.args) and self.eval_dataset is not None
            validation = self._loader(self.eval_dataset, train=False) if evaluates else None
            trainer.fit(self.module, self._loader(self.train_dataset, train=True), validation)
        self.trainer = trainer
        return trainer

    def _new_trainer(self, extra_callbacks: list[Callback]) -> pl.Trainer:
        settings: dict[str, Any] = {"callbacks": []}
        if not self.is_lightning_style:
            batches = len(self._loader(self.train_dataset, train=True)) if self.train_dataset is not None else 1
            settings = trainer_settings(self.args, batches)
        settings.update(self.trainer_kwargs)
        settings["callbacks"] = [*settings["callbacks"], *self.callbacks, *extra_callbacks]
        return pl.Trainer(**settings)

    def _loader(self, dataset: Optional[Dataset], train: bool) -> DataLoader:
        if dataset is None:
            raise ValueError(f"NLPTrainer needs {'train_dataset' if train else 'eval_dataset'} for this call")
        return DataLoader(dataset, collate_fn=self.collator, **loader_settings(self.args, train))


class _ColumnFilter:
    """Drops the features the model's ``forward`` does not take (transformers' ``remove_unused_columns``),
    then collates."""

    def __init__(self, collator: Callable[[list[dict]], dict], columns: Optional[set[str]]) -> None:
        self.collator = collator
        self.columns = columns

    def __call__(self, features: list[dict]) -> dict:
        if self.columns is not None:
            features = [{key: value for key, value in f.items() if key in self.columns} for f in features]
        return self.collator(features)


def _model_inputs(model: nn.Module, label_names: Optional[list[str]]) -> set[str]:
    return {*inspect.signature(model.forward).parameters, *_LABEL_COLUMNS, *(label_names or [])}


def _default_collator(processing_class: Any) -> Callable[[list[dict]], dict]:
    """transformers' choice: dynamic padding with a tokenizer, else ``default_data_collator``."""
    if isinstance(processing_class, PreTrainedTokenizerBase):
        return DataCollatorWithPadding(processing_class)
    return default_data_collator


def _judge(metrics: list[Metric], eval_func: Optional[Callable[[Any], float]]) -> list[Metric]:
    """The metrics that judge the run: the config's, or with an ``eval_func`` one figure named ``eval_func``
    (with the config's first metric's direction and criterion, if any)."""
    if eval_func is None:
        return metrics
    like = metrics[0] if metrics else Metric(name="eval_func")
    return [Metric("eval_func", like.greater_is_better, like.is_relative, like.criterion)]


def _figures(metrics: list[Metric], results: dict[str, float]) -> str:
    return ", ".join(f"{m.name}={results[m.name]:.4f}" for m in metrics)


class _SparsityLog(Callback):
    """Logs the sparsity reached at the end of each training epoch, at INFO."""

    def __init__(self, pruning: PruningCallback) -> None:
        self.pruning = pruning

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger.info(
            "epoch %d, step %d: sparsity %.4f (target now %.4f)",
            trainer.current_epoch,
            trainer.global_step,
            self.pruning.mask_sparsity(),
            self.pruning.current_target(),
        )


def _lightning_callbacks(callbacks: Sequence[Any]) -> list[Callback]:
    """Lightning callbacks pass; transformers ``TrainerCallback``\\ s cannot run on Lightning and are dropped
    with a warning."""
    kept, dropped = [], []
    for callback in callbacks:
        if isinstance(callback, Callback):
            kept.append(callback)
        elif isinstance(callback, TrainerCallback) or (
            isinstance(callback, type) and issubclass(callback, TrainerCallback)
        ):
            dropped.append(getattr(callback, "__name__", type(callback).__name__))
        else:
            raise ValueError(f"NLPTrainer.callbacks must hold lightning Callbacks, got {type(callback).__name__}")
    if dropped:
        warnings.warn(
            f"NLPTrainer ignores transformers TrainerCallbacks ({', '.join(dropped)}): they do not run on Lightning; "
            "use the Lightning equivalent (e.g. lightning.pytorch.callbacks.EarlyStopping)",
            stacklevel=3,
        )
    return kept


def _eval_key(key: str) -> str:
    """A Lightning-logged key in transformers' form: ``val_acc`` -> ``eval_acc``, ``acc`` -> ``eval_acc``."""
    if key.startswith("eval_"):
        return key
    return "eval_" + (key[len("val_") :] if key.startswith("val_") else key)


__all__ = ["NLPTrainer", "PruningReport", "TransformersTrainingModule"]

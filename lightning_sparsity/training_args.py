"""transformers ``TrainingArguments`` mapped onto their Lightning equivalents.

The number of optimizer steps is counted as transformers counts it: ``ceil(batches / accumulation)`` per
epoch (the last, partial accumulation of an epoch steps too, in both libraries), ``max_steps`` when set
(> 0) overriding ``num_train_epochs``, fractional epochs rounded up to whole steps.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, cast

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import TrainingArguments, get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

#: Fields read by the mapping, and fields that only describe the run (no effect to map).
SUPPORTED_FIELDS: frozenset[str] = frozenset(
    {
        "output_dir", "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs",
        "warmup_steps", "optim", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
        "gradient_accumulation_steps", "max_grad_norm", "bf16", "fp16", "per_device_train_batch_size",
        "per_device_eval_batch_size", "logging_strategy", "logging_steps", "disable_tqdm", "eval_strategy",
        "eval_steps", "save_strategy", "save_steps", "seed", "use_cpu", "dataloader_drop_last",
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "remove_unused_columns", "label_names",
        "do_train", "do_eval", "do_predict", "run_name", "report_to", "project", "log_level", "log_level_replica",
        "log_on_each_node", "logging_first_step", "local_rank", "skip_memory_metrics",
    }
)  # fmt: skip
ADAMW_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")
_NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def unsupported_fields(args: TrainingArguments) -> list[str]:
    """Fields set away from their defaults that have no Lightning equivalent here (they are ignored)."""
    defaults = TrainingArguments(output_dir=args.output_dir)
    names = [
        f.name
        for f in fields(args)
        if f.init and f.name not in SUPPORTED_FIELDS and getattr(args, f.name) != getattr(defaults, f.name)
    ]
    if _value(args.optim) not in ADAMW_OPTIMIZERS:
        names.append(f"optim={_value(args.optim)!r} (AdamW is used)")
    if _value(args.save_strategy) not in ("no", "steps", "epoch"):
        names.append(f"save_strategy={_value(args.save_strategy)!r} (checkpoints are saved every epoch)")
    return names


def optimizer_steps(args: TrainingArguments, batches_per_epoch: int) -> tuple[int, int]:
    """``(max_epochs, max_steps)`` of the run, counted as transformers' Trainer counts them."""
    updates_per_epoch = max(math.ceil(batches_per_epoch / args.gradient_accumulation_steps), 1)
    if args.max_steps > 0:
        return math.ceil(args.max_steps / updates_per_epoch), args.max_steps
    return math.ceil(args.num_train_epochs), math.ceil(args.num_train_epochs * updates_per_epoch)


def trainer_settings(args: TrainingArguments, batches_per_epoch: int) -> dict[str, Any]:
    """Keyword arguments of ``lightning.Trainer`` equivalent to ``args`` for a run of ``batches_per_epoch``."""
    max_epochs, max_steps = optimizer_steps(args, batches_per_epoch)
    settings: dict[str, Any] = {
        "max_epochs": max_epochs,
        "max_steps": max_steps,
        "accumulate_grad_batches": args.gradient_accumulation_steps,
        "gradient_clip_val": args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
        "precision": "bf16-mixed" if args.bf16 else "16-mixed" if args.fp16 else "32-true",
        "default_root_dir": args.output_dir,
        "enable_progress_bar": not args.disable_tqdm,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": [],
    }
    if args.use_cpu:
        settings["accelerator"] = "cpu"
    if _value(args.logging_strategy) == "no":
        settings["logger"] = False
    else:
        settings["logger"] = CSVLogger(cast(str, args.output_dir), name="logs")  # TrainingArguments fills it in
        logging_every = _interval(args.logging_steps, max_steps)
        settings["log_every_n_steps"] = logging_every if _value(args.logging_strategy) == "steps" else max_steps
    if _value(args.eval_strategy) == "steps":
        # Lightning counts validation intervals in batches, transformers in optimizer steps
        eval_every = _interval(args.eval_steps or args.logging_steps, max_steps)
        settings["val_check_interval"] = eval_every * args.gradient_accumulation_steps
        settings["check_val_every_n_epoch"] = None
    save_strategy = _value(args.save_strategy)
    if save_strategy == "no":
        settings["enable_checkpointing"] = False
    else:
        every: dict[str, Any] = (
            {"every_n_train_steps": _interval(args.save_steps, max_steps)} if save_strategy == "steps" else {}
        )
        settings["callbacks"].append(
            ModelCheckpoint(dirpath=args.output_dir, filename="checkpoint-{step}", save_top_k=-1, **every)
        )
    return settings


def evaluates_during_training(args: TrainingArguments) -> bool:
    return _value(args.eval_strategy) != "no"


def loader_settings(args: TrainingArguments, train: bool) -> dict[str, Any]:
    """``DataLoader`` keyword arguments for the training (shuffled) or evaluation loader."""
    workers = args.dataloader_num_workers
    return {
        "batch_size": args.per_device_train_batch_size if train else args.per_device_eval_batch_size,
        "shuffle": train,
        "drop_last": args.dataloader_drop_last,
        "num_workers": workers,
        "pin_memory": args.dataloader_pin_memory and torch.cuda.is_available(),
        "persistent_workers": args.dataloader_persistent_workers and workers > 0,
        "prefetch_factor": args.dataloader_prefetch_factor if workers > 0 else None,
    }


def optimizer_and_scheduler(
    args: TrainingArguments, model: nn.Module, num_training_steps: int
) -> tuple[torch.optim.AdamW, LRScheduler]:
    """AdamW with transformers' weight-decay groups (none on biases and norms) and its lr schedule."""
    decay = set(get_parameter_names(model, [nn.LayerNorm], _NO_DECAY_PATTERNS))
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for name, p in trainable if name in decay], "weight_decay": args.weight_decay},
        {"params": [p for name, p in trainable if name not in decay], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )
    scheduler = get_scheduler(
        _value(args.lr_scheduler_type),
        optimizer,
        num_warmup_steps=args.get_warmup_steps(num_training_steps),
        num_training_steps=num_training_steps,
        # TrainingArguments parses a JSON string into a dict
        scheduler_specific_kwargs=cast(dict[str, Any], args.lr_scheduler_kwargs or {}),
    )
    return optimizer, scheduler


def _interval(steps: float, total_steps: int) -> int:
    """A ``*_steps`` value: a count of steps, or a fraction of the run when below 1 (as in transformers)."""
    return max(math.ceil(steps * total_steps), 1) if steps < 1 else int(steps)


def _value(option: Any) -> str:
    """The string behind a transformers option enum (or a plain string)."""
    return str(getattr(option, "value", option))

"""NLPTrainer: the old toolkit's script on Lightning, TrainingArguments mapping, Lightning-style use."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import datasets
import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from fixtures.tiny_text import TRANSFORMERS_5, save_tiny_model
from helpers import TinyBert, tiny_bert_config, toy_dataset, toy_loader
from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from lightning_sparsity import Metric, NLPTrainer, Pruner, PruningConfig
from lightning_sparsity.training_args import optimizer_and_scheduler, trainer_settings

SPEED_KEYS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}


def token_dataset(size: int, seed: int) -> datasets.Dataset:
    """The toy task as a datasets.Dataset of token ids, with a column the model does not take."""
    input_ids, labels = toy_dataset(size, seed).tensors
    return datasets.Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "label": labels.tolist(), "sentence_id": list(range(size))}
    )


def tiny_model() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


def training_args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        learning_rate=3e-3,
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        report_to=[],
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def test_classic_script_returns_pruned_model_that_learned(tmp_path):
    model = tiny_model()
    args = training_args(tmp_path, num_train_epochs=6)
    # the old toolkit's script, unchanged but for the import line
    trainer = NLPTrainer(model=model, args=args, train_dataset=token_dataset(192, 0), eval_dataset=token_dataset(96, 1))
    tune_metric = Metric(name="eval_accuracy")
    pruner = Pruner(prune_type="BasicMagnitude", target_sparsity_ratio=0.9, epoch_range=[0, 3])
    pruning_conf = PruningConfig(pruner=[pruner], metrics=tune_metric)
    pruned = trainer.prune(pruning_config=pruning_conf)

    assert pruned is model and isinstance(pruned, BertForSequenceClassification)
    encoder = {n: p for n, p in pruned.named_parameters() if ".encoder." in n and n.endswith("dense.weight")}
    for name, weight in encoder.items():
        assert int((weight == 0).sum()) == round(0.9 * weight.numel()), name
    results = trainer.evaluate()
    assert results["eval_accuracy"] >= 0.9  # the dense baseline is at chance: it learned while pruning
    report = trainer.pruning_report
    assert report.metric.names == ["eval_accuracy"]
    assert report.metric.final == pytest.approx(results["eval_accuracy"])
    assert report.metric.baseline < 0.75 and report.metric.criterion_met
    assert report.metric.relative_change == pytest.approx(
        (report.metric.final - report.metric.baseline) / report.metric.baseline
    )
    assert report.sparsity == pytest.approx(0.9, abs=1e-3)
    assert len(report.layers) == 13 and "overall sparsity: 0.900" in str(report)

    trainer.save_model(str(tmp_path / "pruned"))
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "pruned")
    for name, weight in encoder.items():
        assert torch.equal(reloaded.get_parameter(name) == 0, weight == 0)


@pytest.mark.parametrize(
    ("accumulation", "epochs", "max_steps"),
    [(1, 2, -1), (3, 2, -1), (3, 1.5, -1), (2, 3, 7)],
)
def test_optimizer_steps_match_transformers(tmp_path, accumulation, epochs, max_steps):
    """10 batches per epoch: accumulation, fractional epochs and max_steps count steps as transformers does."""
    settings = dict(gradient_accumulation_steps=accumulation, num_train_epochs=epochs, max_steps=max_steps)
    reference = Trainer(
        model=tiny_model(), args=training_args(tmp_path / "hf", **settings), train_dataset=token_dataset(80, 0)
    )
    expected = reference.train().global_step
    ours = NLPTrainer(model=tiny_model(), args=training_args(tmp_path, **settings), train_dataset=token_dataset(80, 0))
    assert ours.train().global_step == expected
    assert ours.trainer.global_step == expected


def test_optimizer_and_schedule_match_transformers(tmp_path):
    warmup = {"warmup_steps": 0.2} if TRANSFORMERS_5 else {"warmup_ratio": 0.2}  # 4.x: a fraction is a ratio
    args = training_args(tmp_path, lr_scheduler_type="cosine", weight_decay=0.05, adam_beta2=0.98, **warmup)
    model = tiny_model()
    reference = Trainer(model=model, args=args)
    reference.create_optimizer_and_scheduler(num_training_steps=10)
    optimizer, scheduler = optimizer_and_scheduler(args, model, 10)

    def groups(opt):
        return [({id(p) for p in g["params"]}, g["weight_decay"], g["betas"], g["eps"]) for g in opt.param_groups]

    assert groups(optimizer) == groups(reference.optimizer)
    lrs, reference_lrs = [], []
    for _ in range(10):
        lrs.append(scheduler.get_last_lr()[0])
        reference_lrs.append(reference.lr_scheduler.get_last_lr()[0])
        optimizer.step(), reference.optimizer.step()  # no gradients: only keeps the schedulers' order check quiet
        scheduler.step(), reference.lr_scheduler.step()
    assert lrs == pytest.approx(reference_lrs) and lrs[0] == 0 and max(lrs) == pytest.approx(3e-3)


def test_training_arguments_map_to_lightning(tmp_path):
    args = training_args(
        tmp_path,
        gradient_accumulation_steps=2,
        max_grad_norm=0.5,
        bf16=True,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="epoch",
        num_train_epochs=2,
    )
    settings = trainer_settings(args, batches_per_epoch=10)
    assert (settings["max_epochs"], settings["max_steps"]) == (2, 10)
    assert settings["accumulate_grad_batches"] == 2 and settings["gradient_clip_val"] == 0.5
    assert settings["precision"] == "bf16-mixed" and settings["accelerator"] == "cpu"
    assert settings["val_check_interval"] == 6 and settings["check_val_every_n_epoch"] is None
    checkpoint = settings["callbacks"][0]
    assert isinstance(checkpoint, pl.callbacks.ModelCheckpoint) and checkpoint.dirpath == str(tmp_path)


def test_unsupported_settings_and_callbacks_warn_once(tmp_path):
    args = training_args(tmp_path, label_smoothing_factor=0.1, optim="sgd")
    with pytest.warns(UserWarning) as caught:
        NLPTrainer(model=tiny_model(), args=args, callbacks=[TrainerCallback()])
    messages = sorted(str(w.message) for w in caught if "NLPTrainer ignores" in str(w.message))
    assert len(messages) == 2
    assert "label_smoothing_factor" in messages[0] and "optim='sgd'" in messages[0]
    assert messages[1].startswith("NLPTrainer ignores transformers TrainerCallbacks (TrainerCallback)")


def test_compute_metrics_takes_precedence(tmp_path):
    seen = {}

    def compute_metrics(prediction):
        seen["shapes"] = prediction.predictions.shape, prediction.label_ids.shape
        accuracy = (np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean()
        return {"accuracy": 0.25, "my_accuracy": accuracy}

    trainer = NLPTrainer(
        model=tiny_model(),
        args=training_args(tmp_path),
        eval_dataset=token_dataset(40, 1),
        compute_metrics=compute_metrics,
    )
    results = trainer.evaluate()
    assert seen["shapes"] == ((40, 2), (40,))
    assert results["eval_accuracy"] == 0.25 and "eval_f1" not in results
    assert set(results) == {"eval_loss", "eval_accuracy", "eval_my_accuracy", *SPEED_KEYS}
    builtin = NLPTrainer(model=tiny_model(), args=training_args(tmp_path), eval_dataset=token_dataset(40, 1)).evaluate()
    assert builtin["eval_accuracy"] == pytest.approx(results["eval_my_accuracy"])
    assert builtin["eval_loss"] == pytest.approx(results["eval_loss"])


def test_evaluation_during_training_and_predict(tmp_path):
    args = training_args(tmp_path, eval_strategy="epoch", num_train_epochs=2)
    trainer = NLPTrainer(
        model=tiny_model(), args=args, train_dataset=token_dataset(32, 0), eval_dataset=token_dataset(24, 1)
    )
    trainer.train()
    logged = trainer.trainer.callback_metrics
    results = trainer.evaluate()
    assert float(logged["eval_accuracy"]) == pytest.approx(results["eval_accuracy"])  # the last epoch's evaluation
    prediction = trainer.predict(token_dataset(24, 1))
    assert prediction.predictions.shape == (24, 2)
    np.testing.assert_array_equal(prediction.label_ids, token_dataset(24, 1)["label"])
    accuracy = (prediction.predictions.argmax(-1) == prediction.label_ids).mean()
    assert prediction.metrics["test_accuracy"] == pytest.approx(accuracy) == pytest.approx(results["eval_accuracy"])
    assert prediction.metrics["test_loss"] == pytest.approx(results["eval_loss"])


def test_unknown_metric_names_fail_before_training(tmp_path):
    model = tiny_model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    trainer = NLPTrainer(
        model=model, args=training_args(tmp_path), train_dataset=token_dataset(16, 0), eval_dataset=token_dataset(16, 1)
    )
    with pytest.raises(ValueError, match=r"Metric.name 'eval_bleu' is not computed without a compute_metrics"):
        trainer.prune(PruningConfig(metrics=Metric("eval_bleu")))
    trainer.module.compute_metrics = lambda p: {"rouge": 1.0}
    with pytest.raises(
        ValueError, match=r"'eval_bleu' is not among the evaluation results; available: eval_loss, eval_rouge"
    ):
        trainer.prune(PruningConfig(metrics=Metric("eval_bleu")))
    assert trainer.trainer is None
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_lightning_style_constructor(tmp_path):
    module = TinyBert(lr=3e-3)
    trainer = NLPTrainer(
        module,
        train_dataloaders=toy_loader(64),
        val_dataloaders=toy_loader(32, seed=1),
        max_epochs=3,
        accelerator="cpu",
        enable_checkpointing=False,
        **QUIET,
    )
    baseline = trainer.evaluate()
    assert set(baseline) == {"eval_loss", *SPEED_KEYS}
    pruner = Pruner(target_sparsity_ratio=0.5, epoch_range=[0, 1])
    pruned = trainer.prune(
        PruningConfig(pruner=pruner, metrics=Metric("eval_loss", greater_is_better=False, criterion=10.0))
    )
    assert pruned is module
    assert trainer.pruning_report.sparsity == pytest.approx(0.5, abs=1e-3)
    assert trainer.pruning_report.metric.baseline == pytest.approx(baseline["eval_loss"])
    assert trainer.pruning_report.metric.criterion_met
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "config.json").exists()


def test_bad_constructor_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="NLPTrainer.model must be a transformers PreTrainedModel or a lightning"):
        NLPTrainer(model=torch.nn.Linear(2, 2))
    with pytest.raises(
        ValueError, match=r"keyword arguments, not args, compute_metrics \(those need a PreTrainedModel"
    ):
        NLPTrainer(TinyBert(), args=training_args(tmp_path), compute_metrics=lambda prediction: {})
    with pytest.raises(ValueError, match="both tokenizer and processing_class"):
        NLPTrainer(model=tiny_model(), tokenizer=object(), processing_class=object())
    with pytest.raises(ValueError, match="NLPTrainer needs eval_dataset"):
        NLPTrainer(model=tiny_model(), args=training_args(tmp_path)).evaluate()


def test_glue_example_prunes_a_local_tsv_slice(tmp_path, monkeypatch, caplog):
    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("glue_pruning", root / "examples" / "glue_pruning.py")
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "glue_pruning", example)  # its dataclasses resolve their module
    spec.loader.exec_module(example)
    data = root / "lightning_sparsity" / "data" / "sst2"
    trainer = example.main(
        [
            f"--model_name_or_path={save_tiny_model(tmp_path / 'model')}",
            f"--train_file={data / 'train.tsv'}",
            f"--validation_file={data / 'validation.tsv'}",
            "--max_train_samples=64",
            "--max_eval_samples=32",
            "--max_seq_length=32",
            "--do_train",
            "--do_eval",
            "--prune",
            "--target_sparsity_ratio=0.6",
            "--epoch_range", "0", "1",
            "--num_train_epochs=2",
            "--use_cpu",
            "--save_strategy=no",
            "--logging_strategy=no",
            "--disable_tqdm=true",
            "--log_level=info",
            f"--output_dir={tmp_path / 'out'}",
        ]
    )  # fmt: skip
    assert trainer.pruning_report.metric.names == ["eval_accuracy"]
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("lightning_sparsity")]
    assert any(m.startswith("dense baseline: eval_accuracy=") for m in logged), logged  # --log_level info shows it
    assert any(m.startswith("pruning done:") for m in logged)
    saved = BertForSequenceClassification.from_pretrained(tmp_path / "out")
    query = saved.bert.encoder.layer[0].attention.self.query.weight
    assert int((query == 0).sum()) == round(0.6 * query.numel())
    assert (tmp_path / "out" / "tokenizer.json").exists()

"""Distillation: the losses against their formulas, a frozen teacher that stays out of gradients, optimizer,
checkpoints and DDP, cached logits, layer losses, the text module and CLI, and the classic API."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from fixtures.tiny_text import PAIRS_TSV, save_tiny_model
from helpers import make_trainer, tiny_bert_config, toy_loader
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from test_trainer import QUIET, token_dataset, training_args
from transformers import BertForSequenceClassification
from typing_extensions import override

from lightning_sparsity import (
    Criterion,
    DistillationConfig,
    KnowledgeDistillation,
    Metric,
    NLPTrainer,
    Pruner,
    PruningConfig,
)
from lightning_sparsity.distillation import knowledge_distillation_loss, load_teacher
from lightning_sparsity.text import TextClassificationDataModule, TextClassificationModule

METRIC = Metric(name="eval_accuracy", criterion=1.0)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def bert(seed: int, **config: Any) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**config))


class Student(pl.LightningModule):
    """A tiny BERT trained on ``distillation``'s loss against a teacher."""

    def __init__(self, teacher: Any, lr: float = 1e-2, dropout: bool = True, **settings: Any) -> None:
        super().__init__()
        self.model = bert(1) if dropout else bert(1, **NO_DROPOUT)
        self.distillation = KnowledgeDistillation(teacher, **settings).attach(self.model)
        self.lr = lr

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        input_ids, labels = batch
        inputs = {"input_ids": input_ids}
        return self.distillation.loss(self.model(**inputs).logits, labels, inputs)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def frozen_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("loss_type", ["CE", "KL", "MSE"])
@pytest.mark.parametrize(("temperature", "weights"), [(1.0, (0.5, 0.5)), (3.0, (0.1, 0.9)), (2.0, (0.0, 1.0))])
def test_loss_is_the_toolkits_formula(loss_type: str, temperature: float, weights: tuple[float, float]) -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 6, 3, generator=generator)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    log_q = torch.log_softmax(student / temperature, -1)
    p = torch.softmax(teacher / temperature, -1)
    divergence = {
        "CE": -(p * log_q).sum(-1).mean(),
        "KL": (p * (p.log() - log_q)).sum(-1).mean(),
        "MSE": ((student - teacher) ** 2).mean() / temperature**2,
    }[loss_type]
    label_loss = -torch.log_softmax(student, -1)[torch.arange(6), labels].mean()
    expected = weights[0] * label_loss + weights[1] * temperature**2 * divergence
    loss = knowledge_distillation_loss(student, teacher, labels, temperature, ("CE", loss_type), weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_is_the_soft_cross_entropy_less_the_teachers_entropy() -> None:
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 5, 4, generator=generator)
    ce, kl = (knowledge_distillation_loss(student, teacher, None, 2.0, ("CE", t), (0.0, 1.0)) for t in ("CE", "KL"))
    p = torch.softmax(teacher / 2.0, -1)
    entropy = -(p * p.log()).sum(-1).mean() * 4.0
    assert (ce - kl).item() == pytest.approx(entropy.item(), rel=1e-5)
    assert knowledge_distillation_loss(teacher, teacher, None, 2.0, ("CE", "KL"), (0.0, 1.0)).abs().item() < 1e-6


def test_loss_names_what_a_weighted_term_lacks() -> None:
    logits, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"needs teacher_logits when loss_weights\[1\] > 0"):
        knowledge_distillation_loss(logits, None, labels, 1.0, ("CE", "KL"), (0.5, 0.5))
    with pytest.raises(ValueError, match=r"needs labels when loss_weights\[0\] > 0"):
        knowledge_distillation_loss(logits, logits, None, 1.0, ("CE", "KL"), (0.5, 0.5))
    assert knowledge_distillation_loss(logits, None, labels, 1.0, ("CE", "KL"), (1.0, 0.0)).item() > 0


def test_teacher_gets_no_gradients_no_optimizer_state_and_stays_in_eval() -> None:
    teacher = bert(0).train()
    before = frozen_copy(teacher)
    module = Student(teacher, temperature=2.0)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(module, toy_loader())

    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[name], tensor) for name, tensor in teacher.state_dict().items())
    (optimizer,) = trainer.optimizers
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.model.parameters()}
    assert len(optimizer.state) == len(list(module.model.parameters()))
    assert not any(name.startswith("distillation") for name in module.state_dict())
    assert any(not torch.equal(p, bert(1).state_dict()[n]) for n, p in module.model.state_dict().items())


def test_resuming_reloads_the_teacher_from_its_path_and_trains_bit_exactly(tmp_path: Path) -> None:
    bert(0).save_pretrained(tmp_path / "teacher")

    def student() -> Student:
        return Student(str(tmp_path / "teacher"), dropout=False, temperature=2.0)

    straight = student()
    make_trainer(max_epochs=2).fit(straight, toy_loader())
    first = student()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True).fit(first, toy_loader())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert {key.split(".")[0] for key in saved["state_dict"]} == {"model"}
    resumed = student()
    make_trainer(max_epochs=2).fit(resumed, toy_loader(), ckpt_path=tmp_path / "last.ckpt")
    assert all(torch.equal(t, resumed.model.state_dict()[n]) for n, t in straight.model.state_dict().items())


def test_the_teacher_runs_in_the_students_dtype() -> None:
    teacher = bert(0)
    module = Student(teacher)
    make_trainer(max_steps=2, precision="bf16-true").fit(module, toy_loader())
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16} == {p.dtype for p in module.parameters()}


def test_cached_teacher_logits_give_the_live_loss() -> None:
    teacher, student = bert(0), bert(1, **NO_DROPOUT).eval()
    distillation = KnowledgeDistillation(teacher, temperature=2.0).attach(student)
    loader = toy_loader(batch_size=16)
    cached = distillation.cache_teacher_logits({"input_ids": input_ids} for input_ids, _ in loader)
    assert cached.shape == (64, 2)
    offset = 0
    for input_ids, labels in loader:
        logits = student(input_ids=input_ids).logits
        live = distillation.loss(logits, labels, {"input_ids": input_ids})
        rows = cached[offset : offset + len(labels)]
        assert torch.allclose(distillation.loss(logits, labels, teacher_logits=rows), live, atol=1e-6)
        offset += len(labels)


def test_layer_losses_match_the_hidden_states_by_mean_squared_error() -> None:
    teacher, student = bert(0), bert(1, **NO_DROPOUT)
    mappings = [["bert.encoder.layer.0.output", "bert.encoder.layer.1.output"], ["bert.embeddings", "bert.embeddings"]]
    distillation = KnowledgeDistillation(
        teacher, loss_weights=(0.0, 0.0), layer_mappings=mappings, layer_loss_weights=(2.0, 0.5)
    ).attach(student)
    input_ids, labels = next(iter(toy_loader()))
    outputs = student(input_ids=input_ids, output_hidden_states=True)
    loss = distillation.loss(outputs.logits, labels, {"input_ids": input_ids})
    with torch.no_grad():
        taught = teacher(input_ids=input_ids, output_hidden_states=True).hidden_states
    ours = outputs.hidden_states
    expected = 2.0 * ((ours[1] - taught[2]) ** 2).mean() + 0.5 * ((ours[0] - taught[0]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert student.bert.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[1].output.dense.weight.grad is None  # only layer 0's output is matched
    distillation.detach()
    assert not student.bert.embeddings._forward_hooks and not teacher.bert.embeddings._forward_hooks
    distillation.attach(student)
    assert len(student.bert.embeddings._forward_hooks) == len(teacher.bert.embeddings._forward_hooks) == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"temperature": 0}, r"KnowledgeDistillation\.temperature must be a number > 0"),
        ({"loss_types": ["CE", "L1"]}, r"KnowledgeDistillation\.loss_types .*\['CE', 'KL', 'MSE'\]"),
        ({"loss_weights": [0.5, -1]}, r"KnowledgeDistillation\.loss_weights must be two numbers >= 0"),
        ({"loss_weights": [0, 0]}, r"KnowledgeDistillation\.loss_weights: every loss weight is zero"),
        ({"layer_mappings": [["bert.nope", "bert.embeddings"]]}, r"student modules that the model lacks: 'bert.nope'"),
        ({"layer_mappings": ["bert.embeddings"]}, r"layer_mappings\[0\] must be \[student module name, teacher"),
        ({"teacher": "/no/such/folder"}, r"KnowledgeDistillation\.teacher='/no/such/folder': no model folder"),
    ],
)
def test_bad_settings_fail_before_training(settings: dict, message: str) -> None:
    settings = {"teacher": bert(0), **settings}
    with pytest.raises(ValueError, match=message):
        KnowledgeDistillation(**settings).attach(bert(1))


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("teacher"))


def pair_data() -> TextClassificationDataModule:
    return TextClassificationDataModule(
        train_file=str(PAIRS_TSV),
        validation_file=str(PAIRS_TSV),
        text_column="sentence1",
        text_pair_column="sentence2",
        max_length=32,
        batch_size=8,
    )


class FirstLoss(Callback):
    """The training loss of the first batch."""

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.global_step == 1:
            self.loss = float(outputs["loss"])


def test_text_module_checkpoints_keep_the_teacher_path_not_its_weights(teacher_folder: Path, tmp_path: Path) -> None:
    # the student starts as the teacher without dropout: its first loss against it, by KL, is zero
    module = TextClassificationModule(
        str(teacher_folder),
        teacher=str(teacher_folder),
        distillation_loss_types=["CE", "KL"],
        distillation_loss_weights=[0.0, 1.0],
        _model=BertForSequenceClassification.from_pretrained(teacher_folder, **NO_DROPOUT),
    )
    first = FirstLoss()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(max_epochs=1, callbacks=[first, checkpoint], enable_checkpointing=True).fit(module, pair_data())
    assert abs(first.loss) < 1e-6
    teacher = module.distillation.teacher
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())

    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["teacher"] == str(teacher_folder)
    assert {key.split(".")[0] for key in saved["state_dict"]} == {"model"}
    assert sum(t.numel() for t in saved["state_dict"].values()) == sum(p.numel() for p in module.model.parameters())
    resumed = TextClassificationModule.load_from_checkpoint(tmp_path / "last.ckpt")
    assert resumed.distillation.teacher_path == str(teacher_folder)
    assert torch.equal(resumed.model.classifier.weight, module.model.classifier.weight)
    # a checkpoint is a teacher too: its model, the student's weights
    assert torch.equal(load_teacher(tmp_path / "last.ckpt").classifier.weight, module.model.classifier.weight)


def test_cli_takes_the_teacher_from_yaml(teacher_folder: Path, tmp_path: Path) -> None:
    config = tmp_path / "teacher.yaml"
    config.write_text(
        f"""
trainer: {{accelerator: cpu, max_epochs: 1, logger: false, enable_progress_bar: false, enable_checkpointing: false}}
model:
  model_name_or_path: {teacher_folder}
  teacher: {teacher_folder}
  distillation_temperature: 2.0
  distillation_loss_types: [CE, KL]
  distillation_loss_weights: [0.3, 0.7]
data:
  train_file: {PAIRS_TSV}
  text_column: sentence1
  text_pair_column: sentence2
  max_length: 32
  batch_size: 8
"""
    )
    cli = LightningCLI(
        TextClassificationModule,
        TextClassificationDataModule,
        args=["--config", str(config), f"--trainer.default_root_dir={tmp_path}"],
        run=False,
    )
    distillation = cli.model.distillation
    assert (distillation.temperature, distillation.loss_types, distillation.loss_weights) == (
        2.0,
        ("CE", "KL"),
        (0.3, 0.7),
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step > 0 and math.isfinite(float(cli.trainer.callback_metrics["train_loss"]))


class SaveRankWeights(Callback):
    """Each rank's student and teacher weights, to ``folder/rank<N>.pt`` (module level: ddp_spawn pickles it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        teacher = pl_module.distillation.teacher
        state = {
            "student": pl_module.model.state_dict(),
            "teacher": teacher.state_dict(),
            "teacher_trainable": any(p.requires_grad for p in teacher.parameters()),
        }
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def test_ddp_ranks_train_the_same_student_against_their_own_teacher(tmp_path: Path) -> None:
    bert(0).save_pretrained(tmp_path / "teacher")
    module = Student(str(tmp_path / "teacher"), temperature=2.0)  # each rank loads the teacher from its path
    trainer = make_trainer(strategy="ddp_spawn", devices=2, max_epochs=1, callbacks=[SaveRankWeights(tmp_path)])
    trainer.fit(module, toy_loader(size=32))
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert all(torch.equal(tensor, rank1["student"][name]) for name, tensor in rank0["student"].items())
    dense = bert(0).state_dict()
    for rank in (rank0, rank1):
        assert not rank["teacher_trainable"]
        assert all(torch.equal(tensor, dense[name]) for name, tensor in rank["teacher"].items())
    assert any(not torch.equal(t, bert(1).state_dict()[n]) for n, t in rank0["student"].items())


def test_classic_criteria_become_the_same_distillation() -> None:
    teacher = bert(0)
    knowledge = DistillationConfig(criterion=Criterion(temperature=4.0, loss_types=["CE", "KL"])).distillation(teacher)
    assert (knowledge.temperature, knowledge.loss_types, knowledge.loss_weights) == (4.0, ("CE", "KL"), (0.5, 0.5))
    layers = Criterion(
        name="IntermediateLayersLoss",
        layer_mappings=[["bert.embeddings", "bert.embeddings"]],
        loss_types=["MSE"],
        loss_weight_ratio=[0.7],
        add_origin_loss=True,
    )
    distillation = DistillationConfig(criterion=layers).distillation(teacher)
    assert distillation.loss_weights == (1.0, 0.0) and distillation.layer_loss_weights == [0.7]
    assert DistillationConfig().criterion == Criterion() and Criterion("knowledgeloss").name == "KNOWLEDGELOSS"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Criterion(name="Attention"), r"Criterion.name='Attention' is not supported"),
        (lambda: Criterion(temperature=-1.0), r"Criterion.temperature must be a number > 0"),
        (lambda: Criterion(name="IntermediateLayersLoss"), r"Criterion.layer_mappings must hold"),
        (
            lambda: Criterion(name="IntermediateLayersLoss", layer_mappings=[["a", "b"]], loss_types=["L1"]),
            r"Criterion.loss_types must be one of \['MSE'\] per layer mapping",
        ),
        (
            lambda: Criterion(
                name="IntermediateLayersLoss", layer_mappings=[["a", "b"]], loss_types=["MSE"], loss_weight_ratio=[1, 2]
            ),
            r"Criterion.loss_weight_ratio must be one number >= 0 per layer mapping",
        ),
        (lambda: DistillationConfig(framework="tensorflow"), r"DistillationConfig.framework='tensorflow'"),
        (lambda: DistillationConfig(criterion="KnowledgeLoss"), r"DistillationConfig.criterion must be a Criterion"),
    ],
)
def test_bad_classic_settings_fail_at_construction(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


class SeenDistillation(Callback):
    """The module's distillation settings when training starts."""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        distillation = pl_module.distillation
        self.seen = None if distillation is None else (distillation.temperature, distillation.loss_types)


def classic_trainer(tmp_path: Path, epochs: int = 2) -> tuple[NLPTrainer, SeenDistillation]:
    seen = SeenDistillation()
    args = training_args(tmp_path, num_train_epochs=epochs)
    trainer = NLPTrainer(
        model=bert(1),
        args=args,
        train_dataset=token_dataset(64, 0),
        eval_dataset=token_dataset(32, 1),
        callbacks=[seen],
    )
    return trainer, seen


def test_classic_distill_trains_against_the_teacher_and_reports_the_metric(tmp_path: Path) -> None:
    trainer, seen = classic_trainer(tmp_path)
    teacher = bert(0)
    before = frozen_copy(teacher)
    config = DistillationConfig(criterion=Criterion(temperature=3.0, loss_types=["CE", "KL"]), metrics=METRIC)
    distilled = trainer.distill(distillation_config=config, teacher_model=teacher)
    assert distilled is trainer.model and seen.seen == (3.0, ("CE", "KL"))
    assert trainer.module.distillation is None  # the next train() is on the labels alone
    assert all(torch.equal(before[name], tensor) for name, tensor in teacher.state_dict().items())
    report = trainer.distillation_report
    assert report.names == ["eval_accuracy"] and report.final == pytest.approx(trainer.evaluate()["eval_accuracy"])


def test_classic_prune_with_a_teacher_and_orchestrated_optimizations(tmp_path: Path) -> None:
    def pruning() -> PruningConfig:
        return PruningConfig(pruner=[Pruner(target_sparsity_ratio=0.5, epoch_range=[0, 0])])

    trainer, seen = classic_trainer(tmp_path)
    trainer.prune(pruning_config=pruning(), teacher_model=bert(0))
    assert seen.seen == (1.0, ("CE", "CE")) and trainer.pruning_report.sparsity == pytest.approx(0.5, abs=1e-3)

    trainer, seen = classic_trainer(tmp_path)
    distillation = DistillationConfig(criterion=Criterion(temperature=2.0))
    trainer.orchestrate_optimizations([pruning(), distillation], teacher_model=bert(0))
    assert seen.seen == (2.0, ("CE", "CE")) and trainer.pruning_report.sparsity == pytest.approx(0.5, abs=1e-3)
    assert trainer.module.distillation is None


def test_classic_distillation_errors(tmp_path: Path) -> None:
    trainer, _ = classic_trainer(tmp_path)
    with pytest.raises(ValueError, match="NLPTrainer.distill needs teacher_model"):
        trainer.distill(DistillationConfig())
    with pytest.raises(ValueError, match="at most one PruningConfig and one DistillationConfig"):
        trainer.orchestrate_optimizations([PruningConfig(), PruningConfig()])
    with pytest.raises(ValueError, match="a DistillationConfig and a teacher_model go together"):
        trainer.orchestrate_optimizations([DistillationConfig()])
    lightning = NLPTrainer(model=Student(bert(0)), train_dataloaders=toy_loader(), **QUIET)
    with pytest.raises(ValueError, match="use lightning_sparsity.distillation.KnowledgeDistillation"):
        lightning.distill(DistillationConfig(), teacher_model=bert(0))

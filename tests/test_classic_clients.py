"""The classic API as its real clients use it: ITREX's GLUE pruning example and ITREX's / nlp_toolkit's pruning
unit tests (names, arguments, return values and asserts), with ramps fitted or refused, INFO logs and
NoTrainerOptimizer; our own code, doing what those clients do."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from test_trainer import tiny_model, token_dataset, training_args
from torch import nn

from lightning_sparsity import (
    NLPTrainer,
    NoTrainerOptimizer,
    OptimizedModel,
    Pruner,
    PrunerConfig,
    PruningConfig,
    PruningMode,
    metrics,
)
from lightning_sparsity.export import save_slimmed, save_sparse


def encoder_sparsities(model: nn.Module) -> dict[str, float]:
    return {
        name: float((weight == 0).float().mean())
        for name, weight in model.named_parameters()
        if ".encoder." in name and name.endswith("dense.weight")
    }


def classic_trainer(tmp_path, **overrides) -> NLPTrainer:
    settings = {"num_train_epochs": 2, **overrides}
    return NLPTrainer(
        model=tiny_model(),
        args=training_args(tmp_path, **settings),
        train_dataset=token_dataset(32, 0),
        eval_dataset=token_dataset(32, 1),
    )


def test_nlp_toolkit_pruning_test_flow(tmp_path):
    trainer = classic_trainer(tmp_path)
    origin_weight = copy.deepcopy(trainer.model.classifier.weight)
    modes = [mode for mode in PruningMode if mode.name == "BasicMagnitude".upper()]
    assert len(modes) == 1
    pruner = Pruner(prune_type=modes[0].name)  # upper case, as the toolkit's enum names are
    pruning_conf = PruningConfig(pruner=pruner, target_sparsity_ratio=0.9, epoch_range=[0, 1], metrics=[
        metrics.Metric(name="eval_loss", greater_is_better=False)
    ])  # fmt: skip
    pruned_model = trainer.prune(pruning_config=pruning_conf)
    report = pruned_model.report_sparsity()
    assert report.sparsity == pytest.approx(0.9, abs=1e-3)  # the config's 0.9 and [0, 1], not the pruner's defaults
    assert all(value == pytest.approx(0.9, abs=2e-3) for value in encoder_sparsities(pruned_model).values())
    trainer.save_model(str(tmp_path / "pruned_model"))
    loaded_model = OptimizedModel.from_pretrained(str(tmp_path / "pruned_model"))
    pruned_weight = pruned_model.model.classifier.weight
    assert (pruned_weight != origin_weight).any()
    assert torch.equal(pruned_weight, loaded_model.classifier.weight)
    assert encoder_sparsities(loaded_model) == encoder_sparsities(pruned_model)


def test_glue_example_flow_default_ratio_fitted_ramp_and_benchmark(tmp_path, caplog):
    trainer = classic_trainer(tmp_path, num_train_epochs=3)
    pruner_config = PrunerConfig(prune_type="BasicMagnitude", target_sparsity_ratio=None)  # the example's default
    pruning_conf = PruningConfig(pruner_config=pruner_config, metrics=metrics.Metric(name="eval_accuracy"))
    with caplog.at_level(logging.INFO, logger="lightning_sparsity"):
        model = trainer.prune(pruning_config=pruning_conf)
    # 32 samples / 8 = 4 steps an epoch, 12 in all: the default [0, 4] epochs cannot finish, so steps [0, 9]
    assert "ramping over optimizer steps [0, 9]" in caplog.text
    assert "dense baseline: eval_accuracy=" in caplog.text and "sparsity 0.9700" in caplog.text
    assert "criterion met" in caplog.text or "criterion NOT met" in caplog.text
    assert trainer.pruning_report.sparsity == pytest.approx(0.97, abs=1e-3)
    trainer.save_model(training_args(tmp_path).output_dir)

    reloaded = OptimizedModel.from_pretrained(training_args(tmp_path).output_dir)
    reloaded.eval()
    trainer.model = reloaded
    results = trainer.evaluate()
    assert {"eval_accuracy", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"} <= set(results)
    assert results["eval_samples_per_second"] > 0 and 1000 / results["eval_samples_per_second"] > 0
    assert results["eval_samples_per_second"] == pytest.approx(32 / results["eval_runtime"], rel=0.05)
    assert results["eval_accuracy"] == pytest.approx(trainer.pruning_report.metric.final)
    assert model is not reloaded


def test_evaluate_uses_the_model_assigned_now(tmp_path):
    trainer = classic_trainer(tmp_path)
    other = tiny_model()
    with torch.no_grad():
        other.classifier.bias.copy_(torch.tensor([50.0, -50.0]))  # predicts class 0 for every sample
    before = trainer.evaluate()
    trainer.model = other
    after = trainer.evaluate()
    labels = token_dataset(32, 1)["label"]
    assert after["eval_accuracy"] == pytest.approx(labels.count(0) / len(labels))
    assert after["eval_loss"] != pytest.approx(before["eval_loss"])
    with pytest.raises(ValueError, match="NLPTrainer.model must stay a PreTrainedModel, got Linear"):
        trainer.model = nn.Linear(2, 2)


def test_pruner_fields_left_none_inherit_and_overrides_are_reported():
    inherited = PruningConfig(pruner=Pruner(), target_sparsity_ratio=0.9, epoch_range=[0, 1]).pruners[0]
    assert (inherited.target_sparsity_ratio, inherited.epoch_range, inherited.initial_sparsity_ratio) == (
        0.9,
        [0, 1],
        0.0,
    )
    with pytest.warns(UserWarning, match=r"sets its own target_sparsity_ratio=0.5 \(the config's 0.9 is not used\)"):
        kept = PruningConfig(pruner=Pruner(target_sparsity_ratio=0.5), target_sparsity_ratio=0.9).pruners[0]
    assert kept.target_sparsity_ratio == 0.5
    with pytest.raises(ValueError, match=r"PruningConfig.pruner\[0\] with the config's initial_sparsity_ratio=0.6"):
        PruningConfig(pruner=Pruner(target_sparsity_ratio=0.5), initial_sparsity_ratio=0.6)


def test_a_ramp_someone_set_that_cannot_finish_fails_before_training(tmp_path):
    trainer = classic_trainer(tmp_path)  # 2 epochs of 4 optimizer steps
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    with pytest.raises(ValueError, match=r"epoch_range=\[0, 2\] does not finish in this run of 2 epoch\(s\) \(8 opt"):
        trainer.prune(PruningConfig(epoch_range=[0, 2]))
    with pytest.raises(ValueError, match=r"step_range=\[0, 9\] ends after the run's last optimizer step \(8\)"):
        trainer.prune(PruningConfig(pruner=Pruner(step_range=[0, 9])))
    assert trainer.trainer is None
    assert all(torch.equal(p, before[name]) for name, p in trainer.model.named_parameters())


def test_max_steps_shorter_than_the_default_ramp_reaches_the_target(tmp_path):
    trainer = classic_trainer(tmp_path, max_steps=5)
    trainer.prune(PruningConfig(target_sparsity_ratio=0.6))
    assert trainer.pruning_report.sparsity == pytest.approx(0.6, abs=1e-3)
    assert trainer.trainer.global_step == 5


@pytest.mark.parametrize("provider", ["inc", "INC"])
def test_init_pruner_then_prune_with_a_provider(tmp_path, provider):
    trainer = classic_trainer(tmp_path)
    kept = trainer.init_pruner(pruning_config=PruningConfig(target_sparsity_ratio=0.5, epoch_range=[0, 1]))
    assert kept.pruners[0].target_sparsity_ratio == 0.5
    trainer.prune(provider=provider)
    assert trainer.pruning_report.sparsity == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("provider", ["nncf", "", None])
def test_other_providers_are_a_clear_error(tmp_path, provider):
    trainer = classic_trainer(tmp_path)
    with pytest.raises(ValueError, match=r"provider=.* is not supported; allowed values: 'inc'"):
        trainer.prune(PruningConfig(), provider=provider)
    assert trainer.trainer is None


def own_loop(steps: int):
    """A user's train_func: plain AdamW over the toy data, ``steps`` optimizer steps."""

    def train_func(model: nn.Module) -> nn.Module:
        data = token_dataset(32, 0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for step in range(steps):
            rows = data[(step * 8) % 32 : (step * 8) % 32 + 8]
            loss = model(input_ids=torch.tensor(rows["input_ids"]), labels=torch.tensor(rows["label"])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model

    return train_func


def accuracy_of(model: nn.Module) -> float:
    data = token_dataset(32, 1)
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor(data["input_ids"])).logits
    return float((logits.argmax(-1) == torch.tensor(data["label"])).float().mean())


def test_no_trainer_optimizer_prunes_in_the_users_loop(caplog):
    model = tiny_model()
    optimizer = NoTrainerOptimizer(model)
    config = PruningConfig(pruner=Pruner(prune_type="SnipMomentum", target_sparsity_ratio=0.75, step_range=[0, 6]))
    with caplog.at_level(logging.INFO, logger="lightning_sparsity"):
        pruned = optimizer.prune(config, provider="inc", eval_func=accuracy_of, train_func=own_loop(8))
    assert pruned is model and pruned.model is model
    assert all(value == pytest.approx(0.75, abs=2e-3) for value in encoder_sparsities(model).values())
    assert pruned.report_sparsity().sparsity == pytest.approx(0.75, abs=1e-3)
    assert optimizer.pruning_report.metric.final == accuracy_of(model)
    assert "dense baseline: eval_func=" in caplog.text and "overall sparsity: 0.750" in caplog.text
    extra = nn.Linear(2, 2)  # an optimizer holding no pruned weight steps untouched, after the run
    torch.optim.SGD(extra.parameters(), lr=0.1).step()


def test_no_trainer_optimizer_refuses_epoch_ramps_and_a_missing_train_func():
    optimizer = NoTrainerOptimizer(tiny_model())
    with pytest.raises(ValueError, match="needs train_func"):
        optimizer.prune(PruningConfig())
    with pytest.raises(ValueError, match=r"pruners\[0\] ramps over epoch_range=\[0, 4\]; give it step_range"):
        optimizer.prune(PruningConfig(), train_func=own_loop(1))


def test_nlp_trainer_prune_with_train_and_eval_funcs(tmp_path):
    trainer = classic_trainer(tmp_path)
    config = PruningConfig(pruner=Pruner(target_sparsity_ratio=0.5, step_range=[1, 4]), metrics=metrics.Metric(
        name="eval_accuracy", criterion=1.0
    ))  # fmt: skip
    trainer.prune(config, eval_func=accuracy_of, train_func=own_loop(5))
    assert trainer.pruning_report.sparsity == pytest.approx(0.5, abs=1e-3)
    assert trainer.pruning_report.metric.names == ["eval_func"] and trainer.pruning_report.metric.criterion_met
    assert trainer.trainer is None  # the user's loop trained, not Lightning


def test_optimized_model_loads_slimmed_and_compressed(tmp_path):
    model = tiny_model().eval()
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[:, :32] = 0  # half the FFN neurons of layer 0 dead
    inputs = torch.tensor(token_dataset(4, 0)["input_ids"])
    expected = model(input_ids=inputs).logits
    save_slimmed(model, tmp_path / "slim")
    save_sparse(model, tmp_path / "model.sparse.safetensors")
    slimmed = OptimizedModel.from_pretrained(tmp_path / "slim")
    assert slimmed.bert.encoder.layer[0].intermediate.dense.out_features == 32
    torch.testing.assert_close(slimmed(input_ids=inputs).logits, expected)
    compressed = OptimizedModel.from_pretrained(str(tmp_path / "model.sparse.safetensors"))
    torch.testing.assert_close(compressed(input_ids=inputs).logits, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no such folder or file"):
        OptimizedModel.from_pretrained(tmp_path / "missing")

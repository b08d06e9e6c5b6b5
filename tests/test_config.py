"""PruningConfig: the default pruner, pruner lists, framework names, YAML, and PruningCallback(config=)."""

from __future__ import annotations

import pytest
from helpers import TinyBert, make_trainer, pruned_weights, toy_loader
from jsonargparse import ArgumentParser

from lightning_sparsity import Metric, Pruner, PruningCallback, PruningConfig


def test_default_pruner_takes_the_config_ratios():
    config = PruningConfig(initial_sparsity_ratio=0.1, target_sparsity_ratio=0.8, epoch_range=[1, 3])
    assert config.pruners == [
        Pruner(prune_type="BasicMagnitude", initial_sparsity_ratio=0.1, target_sparsity_ratio=0.8, epoch_range=[1, 3])
    ]
    assert PruningConfig().pruners == [Pruner(target_sparsity_ratio=0.97, epoch_range=[0, 4])]


def test_pruner_accepts_one_a_list_or_the_old_keyword():
    first, second = Pruner(names=["query"]), Pruner(prune_type="SnipMomentum", names=["key"])
    assert PruningConfig(pruner=first).pruners == [first]
    assert PruningConfig(pruner=[first, second]).pruners == [first, second]
    assert PruningConfig(pruner_config=[second]).pruners == [second]
    with pytest.raises(ValueError, match="both pruner and pruner_config"):
        PruningConfig(pruner=first, pruner_config=second)
    with pytest.raises(ValueError, match="PruningConfig.pruner is empty"):
        PruningConfig(pruner=[])
    with pytest.raises(ValueError, match=r"PruningConfig.pruner\[1\] must be a Pruner, got dict"):
        PruningConfig(pruner=[first, {"prune_type": "BasicMagnitude"}])


@pytest.mark.parametrize("framework", ["pytorch", "pytorch_fx", "PyTorch"])
def test_pytorch_frameworks_are_accepted(framework):
    assert PruningConfig(framework=framework).framework == framework.lower()


@pytest.mark.parametrize("framework", ["tensorflow", "onnxrt", "", None])
def test_other_frameworks_are_a_clear_error(framework):
    with pytest.raises(ValueError, match=r"PruningConfig.framework=.* is not supported; allowed values: 'pytorch', "):
        PruningConfig(framework=framework)


def test_bad_ratios_and_metrics_name_the_config_field():
    with pytest.raises(ValueError, match=r"PruningConfig.target_sparsity_ratio must be a number in \[0, 1\)"):
        PruningConfig(target_sparsity_ratio=1.0)
    with pytest.raises(ValueError, match="PruningConfig.initial_sparsity_ratio=0.9 is above target_sparsity_ratio"):
        PruningConfig(initial_sparsity_ratio=0.9, target_sparsity_ratio=0.5)
    with pytest.raises(ValueError, match="PruningConfig.epoch_range must be"):
        PruningConfig(epoch_range=[3, 1])
    with pytest.raises(ValueError, match="PruningConfig.metrics must share one is_relative"):
        PruningConfig(metrics=[Metric("eval_f1"), Metric("eval_accuracy", is_relative=False)])
    metrics = [Metric("eval_f1"), Metric("eval_accuracy")]
    assert PruningConfig(metrics=metrics).metric_list == metrics and PruningConfig().metric_list == []


def test_built_from_yaml_by_jsonargparse():
    parser = ArgumentParser()
    parser.add_class_arguments(PruningConfig, "pruning")
    config = parser.parse_string(
        """
        pruning:
          framework: pytorch_fx
          metrics: {name: eval_f1, criterion: 0.02}
          pruner:
            - {prune_type: SnipMomentum, target_sparsity_ratio: 0.8, names: [query]}
        """
    )
    built = parser.instantiate_classes(config).pruning
    assert built.framework == "pytorch_fx" and built.metric_list == [Metric("eval_f1", criterion=0.02)]
    assert built.pruners == [Pruner(prune_type="SnipMomentum", target_sparsity_ratio=0.8, names=["query"])]


def test_pruning_callback_takes_a_config():
    config = PruningConfig(target_sparsity_ratio=0.75, epoch_range=[0, 1])
    callback = PruningCallback(config=config)
    assert callback.pruners == config.pruners
    module = TinyBert()
    make_trainer(max_epochs=2, callbacks=[callback]).fit(module, toy_loader(32))
    for name, weight in pruned_weights(module).items():
        assert int((weight == 0).sum()) == round(0.75 * weight.numel()), name
    with pytest.raises(ValueError, match="PruningCallback got both pruners and config"):
        PruningCallback(pruners=[Pruner()], config=config)

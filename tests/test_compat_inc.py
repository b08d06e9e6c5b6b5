"""INC ``WeightPruningConfig`` settings on the native engine: mapping, INC's validation, and training runs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TinyBert, make_trainer, tiny_bert_config, toy_loader
from jsonargparse import ArgumentParser
from torch import nn

from lightning_sparsity import Pruner, PruningCallback
from lightning_sparsity.compat import pruners_from_inc
from lightning_sparsity.functional import parse_pattern, pattern_masks, scheduled_sparsity
from lightning_sparsity.layers import prunable_weights, select_weights

INC_PYTHON = Path(os.environ.get("INC_VENV", "/work/inc-venv")) / "bin" / "python"
BERT_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
)


class WeightPruningConfig:
    """The two attributes INC's ``WeightPruningConfig`` (2.x and 3.x) exposes to its pruning code."""

    def __init__(self, pruning_configs=None, **settings) -> None:
        self.pruning_configs = [{}] if pruning_configs is None else pruning_configs
        self.weight_compression = settings


def test_defaults_are_incs():
    (pruner,) = pruners_from_inc({})
    assert pruner.prune_type == "SnipMomentum" and pruner.algorithm_settings == {"momentum": 0.9}
    assert (pruner.target_sparsity_ratio, pruner.pattern, pruner.schedule, pruner.scope) == (
        0.9,
        "4x1",
        "exp",
        "global",
    )
    assert (pruner.step_range, pruner.update_frequency) == ([0, 0], 1)
    assert (pruner.min_sparsity_ratio_per_layer, pruner.max_sparsity_ratio_per_layer) == (0.0, 0.98)
    assert (pruner.names, pruner.excluded_names) == ([], [])


@pytest.mark.parametrize(
    ("pruning_type", "prune_type", "settings"),
    [
        ("magnitude", "BasicMagnitude", {}),
        ("gradient", "Gradient", {}),
        ("snip", "SnipMomentum", {"momentum": 0.0}),
        ("snip_momentum", "SnipMomentum", {"momentum": 0.9}),
        ("magnitude_progressive", "BasicMagnitude", {}),
        ("pattern_lock", "PatternLock", {}),
    ],
)
def test_pruning_types(pruning_type, prune_type, settings):
    (pruner,) = pruners_from_inc({"pruning_type": pruning_type})
    assert (pruner.prune_type, pruner.algorithm_settings) == (prune_type, settings)


def test_steps_decay_scope_and_patterns():
    (pruner,) = pruners_from_inc(
        {
            "target_sparsity": 0.7,
            "start_step": 3,
            "end_step": 30,
            "pruning_frequency": 3,
            "sparsity_decay_type": "cube",
            "pruning_scope": "local",
            "pattern": "tile_pattern_1xchannel",
        }
    )
    assert (pruner.step_range, pruner.update_frequency, pruner.schedule) == ([3, 30], 3, "cube")
    assert (pruner.scope, pruner.pattern, pruner.target_sparsity_ratio) == ("local", "1xchannel", 0.7)
    assert scheduled_sparsity(0.5, 0.0, 0.8, "cube") == pytest.approx(0.8 * 0.5**3)  # INC's cube: slow start


def test_progressive_variants_update_four_times_per_interval_like_inc():
    config = {"pruning_type": "snip_momentum_progressive", "start_step": 0, "end_step": 100}
    assert pruners_from_inc({**config, "pruning_frequency": 20})[0].update_frequency == 5
    # INC falls back to plain pruning for a frequency below its 4 progressive steps or a short ramp
    assert pruners_from_inc({**config, "pruning_frequency": 2})[0].update_frequency == 2
    assert pruners_from_inc({**config, "end_step": 4, "pruning_frequency": 4})[0].update_frequency == 4


def test_group_settings_override_the_globals_and_inherit_the_rest():
    config = WeightPruningConfig(
        pruning_configs=[
            {"op_names": ["query", "key"], "pattern": "2:4", "target_sparsity": 0.5, "pruning_scope": "local"},
            {"op_names": ["intermediate"], "pruning_type": "magnitude"},
        ],
        target_sparsity=0.8,
        pattern="4x1",
        start_step=1,
        end_step=9,
        excluded_op_names=["pooler"],
    )
    first, second = pruners_from_inc(config)
    assert (first.pattern, first.target_sparsity_ratio, first.scope, first.prune_type) == (
        "2:4",
        0.5,
        "local",
        "SnipMomentum",
    )
    assert first.max_sparsity_ratio_per_layer == 0.5  # INC caps the per-op maximum at N/M
    assert (second.pattern, second.target_sparsity_ratio, second.scope, second.prune_type) == (
        "4x1",
        0.8,
        "global",
        "BasicMagnitude",
    )
    assert first.step_range == second.step_range == [1, 9]
    assert first.excluded_names == second.excluded_names == [r".*(?:pooler).*\.weight"]


def test_target_above_the_per_op_maximum_is_capped_as_inc_does():
    (pruner,) = pruners_from_inc({"target_sparsity": 0.95, "max_sparsity_ratio_per_op": 0.9})
    assert pruner.target_sparsity_ratio == 0.9


def test_group_lasso_becomes_grouplasso_with_reg_coeff_as_alpha():
    (pruner,) = pruners_from_inc(
        {"pruning_type": "magnitude", "reg_type": "group_lasso", "parameters": {"reg_coeff": 0.02}}
    )
    assert (pruner.prune_type, pruner.algorithm_settings) == ("GroupLasso", {"alpha": 0.02})


@pytest.mark.parametrize(
    "op_names",
    [
        ["query"],
        ["attention"],
        ["layer.1.", "intermediate"],
        ["^model.bert.encoder.layer.0"],
        ["dense$"],
        [r"self\.(key|value)"],
    ],
)
def test_op_names_select_the_modules_inc_would(op_names):
    """INC ``re.search`` es module names; the converted expressions pick the same Linear weights."""
    model = TinyBert()
    (pruner,) = pruners_from_inc({"op_names": op_names})
    selected = set(select_weights(model, pruner.names, pruner.excluded_names))
    linear_modules = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    expected = {f"{name}.weight" for name in linear_modules if any(re.search(raw, name) for raw in op_names)}
    assert expected and selected == expected


def test_excluded_op_names_and_empty_op_names():
    model = TinyBert()
    (pruner,) = pruners_from_inc({"op_names": [".*"], "excluded_op_names": ["attention"]})
    selected = set(select_weights(model, pruner.names, pruner.excluded_names))
    every = list(prunable_weights(model))
    assert selected == {n for n in every[:-1] if "attention" not in n}  # the classifier head is left out, as in INC


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"pattern": "2:4", "target_sparsity": 0.6}, "above 0.5"),
        ({"target_sparsity": 1.0}, "target_sparsity must be a number in [0, 1)"),
        ({"start_step": 5, "end_step": 2}, "end_step=2 must be >= start_step=5"),
        ({"start_step": -1}, "start_step must be >= 0"),
        ({"pruning_frequency": 0}, "pruning_frequency must be >= 1"),
        ({"end_step": 2.5}, "end_step must be an integer"),
        ({"pruning_scope": "layer"}, "pruning_scope='layer' is not valid; allowed values: global, local"),
        ({"sparsity_decay_type": "cubic"}, "allowed values: exp, cos, linear, cube"),
        ({"pruning_type": "sparse_gpt"}, "does not provide"),
        ({"pruning_type": "random"}, "pruning_type='random' is not valid"),
        ({"pattern": "4x0"}, 'use "NxM"'),
        ({"pattern": "3:2"}, 'use "NxM"'),
        ({"pattern": "channel"}, 'use "NxM"'),
        ({"pattern": 4}, 'use "NxM"'),
        ({"pattern": "head_mha"}, "mha"),
        ({"pruning_op_types": ["Linear"]}, "pruning_op_types=['Linear'] is not supported"),
        ({"min_sparsity_ratio_per_op": 0.5, "max_sparsity_ratio_per_op": 0.4}, "must be <= max_sparsity_ratio_per_op"),
        ({"max_sparsity_ratio_per_op": 1.0}, "max_sparsity_ratio_per_op must be a number in [0, 1)"),
        ({"min_sparsity_ratio_per_op": 0.95, "target_sparsity": 0.5}, "is above target_sparsity=0.5"),
        ({"resume_from_pruned_checkpoint": True}, "resume_from_pruned_checkpoint=True is not supported"),
        ({"reg_type": "l1"}, "reg_type='l1' is not valid"),
        ({"reg_type": "group_lasso", "pattern": "2:4", "target_sparsity": 0.5}, "needs an NxM pattern"),
        ({"reg_type": "group_lasso"}, "with pruning_type='magnitude'"),
        ({"parameters": {"reg_coeff": -1.0}}, "reg_coeff must be a number >= 0"),
        ({"parameters": {"alpha": 1.0}}, "unknown keys ['alpha']"),
        ({"op_names": "query"}, "op_names must be a list"),
        ({"excluded_op_names": ["("]}, "invalid regular expression"),
        ({"target_sparsities": 0.5}, "unknown keys ['target_sparsities']"),
        ({"pruning_configs": [{"pattern": "1:4", "target_sparsity": 0.5}]}, "pruning_configs[0].target_sparsity=0.5"),
        ({"pruning_configs": ["query"]}, "pruning_configs[0] must be a dict"),
    ],
)
def test_inc_validation_as_value_errors_naming_the_field(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pruners_from_inc(config)


def test_pattern_lock_accepts_a_target_above_n_over_m_as_inc_does():
    (pruner,) = pruners_from_inc({"pruning_type": "pattern_lock", "pattern": "1:4", "target_sparsity": 0.9})
    assert pruner.prune_type == "PatternLock"


def test_not_a_config():
    with pytest.raises(ValueError, match="WeightPruningConfig or a dict"):
        pruners_from_inc(["target_sparsity", 0.5])


@pytest.mark.parametrize(("pattern", "axis"), [("1xchannel", 1), ("channelx1", 0)])
def test_channel_patterns_prune_whole_rows_or_columns(pattern, axis):
    scores = [torch.rand(8, 12), torch.rand(4, 6) + 0.5]
    masks = pattern_masks(scores, 0.5, parse_pattern(pattern))
    for mask in masks:
        whole = mask.all(dim=axis) | (~mask).all(dim=axis)
        assert whole.all() and (~mask).float().mean() == 0.5


def test_global_layer_bounds_are_exact_and_pick_the_lowest_feasible_scores():
    small, large = torch.rand(10, 10), torch.rand(10, 10) + 10.0  # unbounded, all pruning hits `small`
    keeps = pattern_masks([small, large], 0.5, parse_pattern("1x1"), scope="global", layer_bounds=(0.2, 0.7))
    assert [int((~k).sum()) for k in keeps] == [70, 30]
    assert torch.equal(keeps[1], large > large.flatten().kthvalue(30).values)  # its 30 lowest
    keeps = pattern_masks([small, large], 0.5, parse_pattern("1x1"), scope="global", layer_bounds=(0.4, 1.0))
    assert [int((~k).sum()) for k in keeps] == [60, 40]
    keeps = pattern_masks([small, large], 0.29, parse_pattern("1x1"), scope="global", layer_bounds=(0.0, 0.29))
    assert [int((~k).sum()) for k in keeps] == [29, 29]  # 0.29 * 100 is 28.999... in floating point
    # before the ramp reaches the minimum, the minimum follows the scheduled ratio
    keeps = pattern_masks([small, large], 0.1, parse_pattern("1x1"), scope="global", layer_bounds=(0.4, 1.0))
    assert [int((~k).sum()) for k in keeps] == [10, 10]


def _lowest_feasible(units: list[torch.Tensor], sparsity: float, low: float, high: float) -> list[torch.Tensor]:
    """Reference for global layer bounds: one stable sort of everything, each tensor's floor lowest at -inf and
    everything past its cap at +inf (ties by position, tensor by tensor)."""
    limited, floors, caps = [], 0, 0
    for unit in units:
        n = unit.numel()
        cap = int(high * n + 1e-9)
        floor = min(int(low * n + 1e-9), cap)
        rank = torch.empty(n, dtype=torch.long)
        rank[torch.sort(unit.reshape(-1), stable=True).indices] = torch.arange(n)
        values = unit.reshape(-1).double().clone()
        values[rank >= cap] = float("inf")
        values[rank < floor] = float("-inf")
        limited.append(values)
        floors, caps = floors + floor, caps + cap
    k = min(max(round(sparsity * sum(u.numel() for u in units)), floors), caps)
    keep = torch.ones(sum(u.numel() for u in units), dtype=torch.bool)
    keep[torch.sort(torch.cat(limited), stable=True).indices[:k]] = False
    return [part.view_as(unit) for part, unit in zip(keep.split([u.numel() for u in units]), units, strict=True)]


@pytest.mark.parametrize("steps", [1, 2, 4, 6])
@pytest.mark.parametrize("bounds", [(0.0, 0.5), (0.2, 0.6), (0.0, 0.95)])
def test_global_layer_bounds_prune_what_one_sort_with_every_cap_prunes(steps: int, bounds: tuple[float, float]):
    """A staircase of scales makes one tensor after another pass its cap, so the caps are set over several
    selections (past 3 of them all at once); integer scores make ties at every threshold. Tensors of 90,000
    scores take the CPU's bracket selection."""
    generator = torch.Generator().manual_seed(steps)
    shapes = [(300, 300), (7, 13), (300, 300), (64, 64), (1, 50), (300, 300)][:steps]
    units = [torch.randint(0, 20, shape, generator=generator).float() * 100.0**i for i, shape in enumerate(shapes)]
    for sparsity in (0.3, 0.55, 0.8):
        sparsity = max(sparsity, bounds[0])
        expected = _lowest_feasible(units, sparsity, *bounds)
        keeps = pattern_masks(units, sparsity, parse_pattern("1x1"), scope="global", layer_bounds=bounds)
        assert all(torch.equal(keep, want) for keep, want in zip(keeps, expected, strict=True))
        if torch.cuda.is_available():  # GPUs select by sorting
            keeps = pattern_masks(
                [u.cuda() for u in units], sparsity, parse_pattern("1x1"), scope="global", layer_bounds=bounds
            )
            assert all(torch.equal(keep.cpu(), want) for keep, want in zip(keeps, expected, strict=True))


def test_global_layer_bounds_set_every_cap_when_tensors_pass_theirs_one_by_one():
    """Sizes chosen so that each selection pushes the next tensor past its cap (half of it): more rounds than the
    selection spends before it sets every cap."""
    generator = torch.Generator().manual_seed(0)
    sizes = [100_000, 60_000, 15_000, 4_000, 800, 220_000]
    units = [torch.randint(1, 20, (size // 100, 100), generator=generator) * 100.0**i for i, size in enumerate(sizes)]
    sparsity = 90_000 / sum(sizes)
    keeps = pattern_masks(units, sparsity, parse_pattern("1x1"), scope="global", layer_bounds=(0.0, 0.5))
    assert [int((~keep).sum()) for keep in keeps] == [50_000, 30_000, 7_500, 2_000, 400, 100]
    expected = _lowest_feasible(units, sparsity, 0.0, 0.5)
    assert all(torch.equal(keep, want) for keep, want in zip(keeps, expected, strict=True))


def test_local_layer_bound_caps_each_tensor():
    keeps = pattern_masks([torch.rand(8, 8)], 0.9, parse_pattern("1x1"), layer_bounds=(0.0, 0.75))
    assert int((~keeps[0]).sum()) == 48


def test_pruner_checks_layer_bounds():
    with pytest.raises(ValueError, match="max_sparsity_ratio_per_layer must be a number in"):
        Pruner(max_sparsity_ratio_per_layer=1.5)
    with pytest.raises(ValueError, match=r"must lie within \[min_sparsity_ratio_per_layer"):
        Pruner(target_sparsity_ratio=0.9, max_sparsity_ratio_per_layer=0.8)


def fit(pruners: list[Pruner], epochs: int = 2) -> tuple[TinyBert, PruningCallback]:
    module = TinyBert()
    callback = PruningCallback(pruners=pruners)
    make_trainer(callbacks=[callback], max_epochs=epochs).fit(module, toy_loader(64))  # 8 steps an epoch
    return module, callback


def test_an_inc_config_trains_to_its_per_group_patterns_and_targets():
    config = {
        "target_sparsity": 0.75,
        "pattern": "4x1",
        "pruning_type": "snip_momentum",
        "start_step": 2,
        "end_step": 10,
        "pruning_frequency": 2,
        "max_sparsity_ratio_per_op": 0.9,
        "pruning_configs": [
            {"op_names": [r"self\.(query|key|value)"], "pattern": "2:4", "target_sparsity": 0.5},
            {"op_names": ["intermediate", r"output\.dense"], "sparsity_decay_type": "cos"},
        ],
    }
    _, callback = fit(pruners_from_inc(config))
    n_of_m, blocks = callback.sparsifiers
    for weight in n_of_m.weights.values():  # exactly 2 zeros in every 4 inputs
        assert ((weight.detach().reshape(weight.shape[0], -1, 4) == 0).sum(-1) == 2).all()
    zeros = sum(int((w == 0).sum()) for w in blocks.weights.values())
    assert zeros == round(0.75 * blocks.numel)  # the global target over the group's weights, exactly
    for name, weight in blocks.weights.items():
        block_zero = (weight.detach().reshape(weight.shape[0] // 4, 4, -1) == 0).all(1)
        assert int((weight == 0).sum()) == 4 * int(block_zero.sum()), name  # only whole 4x1 blocks
        assert (weight == 0).float().mean() <= 0.9, name  # the per-op maximum holds


def test_channel_pattern_with_global_scope_trains_under_the_layer_bounds():
    config = {
        "pattern": "1xchannel",
        "pruning_type": "magnitude",
        "target_sparsity": 0.5,
        "start_step": 0,
        "end_step": 8,
        "pruning_frequency": 4,
        "min_sparsity_ratio_per_op": 0.25,
        "max_sparsity_ratio_per_op": 0.75,
        "op_names": ["encoder"],
    }
    _, callback = fit(pruners_from_inc(config))
    (sparsifier,) = callback.sparsifiers
    rows_pruned = 0
    for name, weight in sparsifier.weights.items():
        zero_rows = (weight == 0).all(dim=1)
        assert int((weight == 0).sum()) == int(zero_rows.sum()) * weight.shape[1], name  # whole output rows
        assert 0.25 <= zero_rows.float().mean() <= 0.75, name
        rows_pruned += int(zero_rows.sum())
    assert rows_pruned == round(0.5 * sum(w.shape[0] for w in sparsifier.weights.values()))


INC_SCRIPT = """
import copy, json, sys, torch
from transformers import BertConfig, BertForSequenceClassification
from neural_compressor.training import prepare_compression
from neural_compressor.config import WeightPruningConfig
bert, configs = json.loads(sys.argv[1])
results = []
for settings in configs:
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**bert))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # fresh lists: INC writes into its shared default ones (settings, and the classifier's name)
    config = WeightPruningConfig(pruning_configs=[{}], op_names=[], excluded_op_names=[], **settings)
    attributes = copy.deepcopy({"pruning_configs": config.pruning_configs, **config.weight_compression})
    manager = prepare_compression(model, config)
    manager.callbacks.on_train_begin()
    generator = torch.Generator().manual_seed(0)
    for step in range(16):
        manager.callbacks.on_step_begin(step)
        ids = torch.randint(0, bert["vocab_size"], (8, 8), generator=generator)
        model(input_ids=ids, labels=torch.randint(0, 2, (8,), generator=generator)).loss.backward()
        manager.callbacks.on_before_optimizer_step()
        optimizer.step()
        manager.callbacks.on_after_optimizer_step()
        optimizer.zero_grad()
        manager.callbacks.on_step_end()
    manager.callbacks.on_train_end()
    zeros = {f"model.{n}.weight": (m.weight == 0).int().tolist() for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and bool((m.weight == 0).any())}
    results.append({"attributes": attributes, "zeros": zeros})
print(json.dumps(results))
"""

EQUIVALENCE_CONFIGS = [
    {"target_sparsity": 0.75, "pattern": "4x1", "pruning_type": "magnitude", "pruning_scope": "local"},
    {"target_sparsity": 0.5, "pattern": "2:4", "pruning_type": "snip_momentum", "pruning_scope": "global"},
    {"target_sparsity": 0.5, "pattern": "1xchannel", "pruning_type": "magnitude", "pruning_scope": "local"},
    {
        "target_sparsity": 0.5,
        "pattern": "channelx1",
        "pruning_type": "gradient",
        "sparsity_decay_type": "cube",
        "pruning_scope": "local",
    },
    {
        "target_sparsity": 0.8,
        "pattern": "4x1",
        "pruning_type": "snip_momentum",
        "pruning_scope": "global",
        "max_sparsity_ratio_per_op": 0.85,
    },
]


def _inc_available() -> bool:
    if not INC_PYTHON.exists():
        return False
    return subprocess.run([INC_PYTHON, "-c", "import neural_compressor.training"], capture_output=True).returncode == 0


def _follows(zeros: torch.Tensor, pattern: str) -> bool:
    """Whether a zero mask is made of whole units of ``pattern``."""
    if pattern == "4x1":
        blocks = zeros.reshape(zeros.shape[0] // 4, 4, -1)
        return bool((blocks.all(1) | ~blocks.any(1)).all())
    if pattern == "2:4":
        return bool((zeros.reshape(zeros.shape[0], -1, 4).sum(-1) == 2).all())
    axis = 1 if pattern == "1xchannel" else 0  # whole rows, or whole columns
    return bool((zeros.all(axis) | ~zeros.any(axis)).all())


@pytest.mark.skipif(not _inc_available(), reason="no INC virtual environment (set INC_VENV to one with INC 3.7.1)")
def test_same_config_through_inc_prunes_the_same_layers_to_the_same_pattern_and_target():
    """INC 3.7.1 and lightning-sparsity, same config and 16 steps: same pruned layers, pattern and sparsity."""
    ramp = {"start_step": 2, "end_step": 10, "pruning_frequency": 2}
    bert = {k: v for k, v in tiny_bert_config().to_dict().items() if k in BERT_KEYS}
    argument = json.dumps([bert, [{**config, **ramp} for config in EQUIVALENCE_CONFIGS]])
    result = subprocess.run([INC_PYTHON, "-c", INC_SCRIPT, argument], capture_output=True, text=True, check=True)
    inc_runs = json.loads(result.stdout.strip().splitlines()[-1])
    for config, inc_run in zip(EQUIVALENCE_CONFIGS, inc_runs, strict=True):
        pruners = pruners_from_inc({**config, **ramp})
        assert pruners_from_inc(WeightPruningConfig(**inc_run["attributes"])) == pruners  # INC's object reads the same
        _, callback = fit(pruners)
        ours = {n: w == 0 for s in callback.sparsifiers for n, w in s.weights.items()}
        theirs = {n: torch.tensor(z, dtype=torch.bool) for n, z in inc_run["zeros"].items()}
        assert set(ours) == set(theirs), config  # the same layers, the classifier head left out by both
        highest = config.get("max_sparsity_ratio_per_op", 0.98)
        for name in ours:
            for zeros in (ours[name], theirs[name]):
                assert _follows(zeros, config["pattern"]) and zeros.float().mean() <= highest, (config, name)
            if config["pruning_scope"] == "local":
                assert abs(ours[name].float().mean() - theirs[name].float().mean()) <= 1 / 32, (config, name)
        for zeros in (ours, theirs):
            overall = sum(int(z.sum()) for z in zeros.values()) / sum(z.numel() for z in zeros.values())
            assert overall == pytest.approx(config["target_sparsity"], abs=1e-3), config


def test_converted_pruners_work_as_plain_mappings_in_a_cli_yaml():
    """The docs' route to the command line: ``asdict`` of each pruner under ``init_args.pruners``."""
    pruners = pruners_from_inc(
        {
            "pattern": "1xchannel",
            "pruning_type": "snip",
            "max_sparsity_ratio_per_op": 0.9,
            "pruning_configs": [{"op_names": ["query"]}, {}],
        }
    )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PruningCallback, "callback")
    text = yaml.safe_dump({"callback": {"pruners": [dataclasses.asdict(p) for p in pruners]}})
    callback = parser.instantiate_classes(parser.parse_string(text)).callback
    assert callback.pruners == pruners

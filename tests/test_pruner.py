"""``Pruner`` validates every field on construction, naming the field and what it allows."""

import dataclasses

import pytest
import torch

from lightning_sparsity import Pruner, PruningCallback

INVALID = [
    ({"target_sparsity_ratio": 1.0}, r"target_sparsity_ratio must be a number in \[0, 1\)"),
    ({"target_sparsity_ratio": -0.1}, r"target_sparsity_ratio must be a number in \[0, 1\)"),
    ({"target_sparsity_ratio": "0.9"}, r"target_sparsity_ratio must be a number"),
    ({"initial_sparsity_ratio": 1.5}, r"initial_sparsity_ratio must be a number in \[0, 1\)"),
    ({"initial_sparsity_ratio": 0.5, "target_sparsity_ratio": 0.4}, r"initial_sparsity_ratio=0.5 is above"),
    ({"prune_type": "Magnitude"}, r"prune_type='Magnitude' is not valid; allowed values: 'BasicMagnitude'"),
    ({"method": "per_row"}, r"method='per_row' is not valid; allowed values: 'per_tensor', 'per_channel'"),
    ({"pattern": "4x"}, r"pattern='4x' is not valid: use one of \"1x1\""),
    ({"schedule": "step"}, r"schedule='step' is not valid; allowed values: 'linear', 'exp', 'cos', 'cubic'"),
    ({"scope": "all"}, r"scope='all' is not valid; allowed values: 'local', 'global'"),
    ({"epoch_range": [3, 1]}, r"epoch_range must be \[start, end\] with integers 0 <= start <= end"),
    ({"epoch_range": [0]}, r"epoch_range must be \[start, end\]"),
    ({"step_range": [10, 5]}, r"step_range must be \[start, end\]"),
    ({"step_range": [-1, 5]}, r"step_range must be \[start, end\]"),
    ({"update_frequency": 0}, r"update_frequency must be an integer >= 1"),
    ({"update_frequency": 1.5}, r"update_frequency must be an integer >= 1"),
    ({"pattern": "2:4", "target_sparsity_ratio": 0.6}, r"target_sparsity_ratio=0.6 is above 0.5"),
    ({"names": "query"}, r"names must be a list of regular expressions"),
    ({"names": ["("]}, r"names has an invalid regular expression"),
    ({"excluded_names": [3]}, r"excluded_names must hold strings"),
    ({"parameters": {"beta": 1.0}}, r"parameters has unknown key 'beta' for prune_type='BasicMagnitude'"),
    ({"prune_type": "GroupLasso", "parameters": {"alpha": -1}}, r"parameters\['alpha'\] must be a finite number"),
    ({"prune_type": "SnipMomentum", "parameters": {"momentum": 1.0}}, r"parameters\['momentum'\] must be in"),
    ({"prune_type": "GroupLasso", "pattern": "2:4", "target_sparsity_ratio": 0.5}, r"use a block pattern"),
    ({"scope": "global", "method": "per_channel"}, r'method="per_channel" needs scope="local"'),
]


@pytest.mark.parametrize(("fields", "message"), INVALID, ids=[str(f) for f, _ in INVALID])
def test_invalid_fields_raise_value_errors_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        Pruner(**fields)


def test_defaults_follow_the_classic_api():
    pruner = Pruner()
    assert (pruner.prune_type, pruner.target_sparsity_ratio, pruner.epoch_range) == ("BasicMagnitude", 0.97, [0, 4])
    assert Pruner(prune_type="GroupLasso", parameters={"alpha": 1e-4}).algorithm_settings == {"alpha": 1e-4}
    assert Pruner(prune_type="SnipMomentum").algorithm_settings == {"momentum": 0.9}


def test_callback_rejects_what_is_not_a_pruner():
    with pytest.raises(ValueError, match=r"pruners\[0\] must be a Pruner"):
        PruningCallback(pruners=[{"target_sparsity_ratio": 0.5}])
    with pytest.raises(ValueError, match="pruners is empty"):
        PruningCallback(pruners=[])


def test_numbers_of_any_numeric_type_are_accepted() -> None:
    import numpy as np

    pruner = Pruner(target_sparsity_ratio=np.float32(0.5), initial_sparsity_ratio=torch.tensor(0.25),
                    step_range=[np.int64(1), torch.tensor(4)], update_frequency=np.int32(2),
                    parameters={"momentum": np.float32(0.5)}, prune_type="SnipMomentum")  # fmt: skip
    assert (pruner.target_sparsity_ratio, pruner.initial_sparsity_ratio) == (0.5, 0.25)
    assert pruner.step_range == [1, 4] and pruner.update_frequency == 2 and pruner.settings.momentum == 0.5
    assert all(
        type(v) in (int, float) for v in (pruner.target_sparsity_ratio, pruner.update_frequency, *pruner.step_range)
    )
    with pytest.raises(ValueError, match="target_sparsity_ratio must be a number"):
        Pruner(target_sparsity_ratio=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="target_sparsity_ratio must be a number"):
        Pruner(target_sparsity_ratio=np.bool_(True))


def test_a_pruner_cannot_be_changed_once_built() -> None:
    pruner = Pruner(target_sparsity_ratio=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pruner.target_sparsity_ratio = 1.5  # type: ignore[misc]
    assert dataclasses.replace(pruner, target_sparsity_ratio=0.7).target_sparsity_ratio == 0.7
    with pytest.raises(ValueError, match="target_sparsity_ratio must be a number in"):
        dataclasses.replace(pruner, target_sparsity_ratio=1.5)  # a changed copy is validated again


def test_fields_left_none_are_named_for_a_config_to_fill_in() -> None:
    assert Pruner().inherited_fields == {"target_sparsity_ratio", "initial_sparsity_ratio", "epoch_range"}
    assert Pruner().target_sparsity_ratio == 0.97 and Pruner().epoch_range == [0, 4]
    assert Pruner(target_sparsity_ratio=0.5).inherited_fields == {"initial_sparsity_ratio", "epoch_range"}


def test_one_pruner_or_a_list() -> None:
    pruner = Pruner(target_sparsity_ratio=0.5)
    assert PruningCallback(pruner).pruners == [pruner]
    with pytest.raises(ValueError, match="PruningCallback.pruners must be a Pruner or a list of Pruner, got str"):
        PruningCallback("BasicMagnitude")  # type: ignore[arg-type]

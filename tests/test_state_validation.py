"""A checkpoint's callback state is checked field by field when it is loaded: a damaged or foreign state fails
naming the weight and the field, before any step, never as a wrong mask."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from helpers import TinyBert, make_trainer, toy_loader

from lightning_sparsity import Pruner, PruningCallback

QUERY = [r"layer\.0\.attention\.self\.query\.weight"]
NAME = "model.bert.encoder.layer.0.attention.self.query.weight"


def pruner() -> Pruner:
    return Pruner(prune_type="SnipMomentum", target_sparsity_ratio=0.5, step_range=[0, 4], names=QUERY)


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    pruning = PruningCallback([pruner()])
    make_trainer(max_steps=2, callbacks=[pruning]).fit(TinyBert(), toy_loader())
    return pruning.state_dict()


def tampered(state: dict[str, Any], edit: Any) -> dict[str, Any]:
    copied = copy.deepcopy(state)
    edit(copied["states"][0])
    return copied


CASES = {
    "over-long packed mask": (
        lambda s: s["masks"].update({NAME: torch.cat([s["masks"][NAME], s["masks"][NAME][:4]])}),
        r"mask for weight '.*query\.weight' is torch\.uint8 of shape \(132,\); a mask of that weight is 128 packed",
    ),
    "short packed mask": (
        lambda s: s["masks"].update({NAME: s["masks"][NAME][:100]}),
        r"mask for weight '.*query\.weight' is torch\.uint8 of shape \(100,\)",
    ),
    "float mask": (
        lambda s: s["masks"].update({NAME: s["masks"][NAME].float()}),
        r"mask for weight '.*query\.weight' is torch\.float32",
    ),
    "mask of another weight": (
        lambda s: s["masks"].update({"model.classifier.weight": s["masks"][NAME]}),
        r"masks name weight 'model\.classifier\.weight', which this pruner does not select",
    ),
    "last_update past the ramp": (
        lambda s: s.update(last_update=99),
        r"last_update=99; expected an integer in \[0, 4\]",
    ),
    "last_update not a number": (lambda s: s.update(last_update="2"), r"last_update='2'; expected an integer"),
    "current_target above 1": (lambda s: s.update(current_target=1.5), r"current_target=1\.5; expected a number in"),
    "scores of another weight": (
        lambda s: s["criterion"]["scores"].update({"model.bert.pooler.dense.weight": torch.zeros(32, 32)}),
        r"scores name weight 'model\.bert\.pooler\.dense\.weight'",
    ),
    "scores of the wrong shape": (
        lambda s: s["criterion"]["scores"].update({NAME: torch.zeros(3)}),
        r"scores for weight '.*query\.weight' have shape \(3,\); expected \(32, 32\)",
    ),
    "negative step count": (lambda s: s.update(steps=-1), r"steps=-1; expected an integer in \[0, inf\]"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_tampered_state_fails_naming_the_weight_and_the_field(state: dict[str, Any], case: str) -> None:
    edit, message = CASES[case]
    pruning = PruningCallback([pruner()])
    pruning.load_state_dict(tampered(state, edit))
    module = TinyBert()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    with pytest.raises(ValueError, match=message):
        make_trainer(max_steps=4, callbacks=[pruning]).fit(module, toy_loader())
    assert all(torch.equal(p, before[n]) for n, p in module.named_parameters())  # failed before any step


def test_the_untampered_state_loads(state: dict[str, Any]) -> None:
    pruning = PruningCallback([pruner()])
    pruning.load_state_dict(copy.deepcopy(state))
    make_trainer(max_steps=0, callbacks=[pruning]).fit(TinyBert(), toy_loader())
    assert pruning.sparsifiers[0].last_update == state["states"][0]["last_update"]

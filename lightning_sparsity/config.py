"""``PruningConfig``: the classic (intel-extension-for-transformers) description of a pruning run.

Classic inheritance: a :class:`Pruner` field left as None (``target_sparsity_ratio``, ``initial_sparsity_ratio``,
``epoch_range``) takes the ``PruningConfig``'s value; a value given to both is the pruner's, and the config's
is reported with a warning rather than dropped in silence.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union, cast, get_args

from lightning_sparsity.metrics import Metric, as_metric_list
from lightning_sparsity.pruner import INHERITED_DEFAULTS, Pruner

Framework = Literal["pytorch", "pytorch_fx"]
FRAMEWORKS: tuple[str, ...] = get_args(Framework)


@dataclass
class PruningConfig:
    """The pruners of a run and the metric that judges it, as the old toolkit's ``PruningConfig``.

    Args:
        framework: ``"pytorch"`` (``"pytorch_fx"`` is accepted as an alias: no graph tracing is needed).
        initial_sparsity_ratio: start of the ramp of every pruner that leaves its own as None; None: 0.
        target_sparsity_ratio: final fraction of zeros of every pruner that leaves its own as None; None: 0.97.
        epoch_range: inclusive ``[first, last]`` ramp epochs of every pruner that leaves its own as None;
            None: ``[0, 4]``, which ``NLPTrainer.prune`` fits to a run too short for it.
        metrics: one :class:`Metric` or several (combined by ``weight_ratio``), or None for no judgement.
        pruner: one :class:`Pruner` or a list; None means one BasicMagnitude pruner with the values above.
        pruner_config: the old toolkit's name for ``pruner``; give one of the two.
    """

    framework: Framework = "pytorch"
    initial_sparsity_ratio: Optional[float] = None
    target_sparsity_ratio: Optional[float] = None
    epoch_range: Optional[list[int]] = None
    metrics: Union[Metric, list[Metric], None] = None
    pruner: Union[Pruner, list[Pruner], None] = None
    pruner_config: Union[Pruner, list[Pruner], None] = None

    def __post_init__(self) -> None:
        if isinstance(self.framework, str) and self.framework.lower() in FRAMEWORKS:
            self.framework = cast(Framework, self.framework.lower())  # one of FRAMEWORKS
        else:
            raise ValueError(
                f"PruningConfig.framework={self.framework!r} is not supported; allowed values: "
                f"{', '.join(map(repr, FRAMEWORKS))} (lightning-sparsity prunes PyTorch models)"
            )
        if self.pruner is not None and self.pruner_config is not None:
            raise ValueError("PruningConfig got both pruner and pruner_config (its old name): give one of them")
        given = self.pruner if self.pruner is not None else self.pruner_config
        self._check_own_values()
        pruners = [Pruner()] if given is None else _as_pruner_list(given)
        self.pruner = [self._resolved(index, pruner) for index, pruner in enumerate(pruners)]
        self.pruner_config = None
        as_metric_list(self.metrics)

    @property
    def pruners(self) -> list[Pruner]:
        """The pruners with the config's values filled in where they left a field as None."""
        return list(cast(list[Pruner], self.pruner))  # a list once __post_init__ has run

    @property
    def metric_list(self) -> list[Metric]:
        return as_metric_list(self.metrics)

    def _given(self) -> dict[str, Any]:
        """The config's own values for the inherited fields, the ones given (not None)."""
        return {name: getattr(self, name) for name in INHERITED_DEFAULTS if getattr(self, name) is not None}

    def _check_own_values(self) -> None:
        """The config's values, checked as a pruner would check them, named as the config's fields."""
        try:
            Pruner(**self._given())
        except ValueError as error:
            raise ValueError(str(error).replace("Pruner.", "PruningConfig.", 1)) from None

    def _resolved(self, index: int, pruner: Pruner) -> Pruner:
        """``pruner`` with its None fields taken from the config; config values it overrides are warned about."""
        given = self._given()
        overridden = [
            f"{name}={getattr(pruner, name)!r} (the config's {given[name]!r} is not used)"
            for name in given
            if name not in pruner.inherited_fields and getattr(pruner, name) != given[name]
        ]
        if overridden:
            warnings.warn(
                f"PruningConfig.pruner[{index}] sets its own {', '.join(overridden)}: a pruner's own values win; "
                "leave the pruner's field as None to take the PruningConfig's",
                stacklevel=4,
            )
        still_unset: dict[str, Any] = {name: None for name in pruner.inherited_fields if name not in given}
        inherited = {name: given[name] for name in pruner.inherited_fields if name in given}
        try:
            return dataclasses.replace(pruner, **inherited, **still_unset)
        except ValueError as error:
            names = ", ".join(f"{name}={value!r}" for name, value in inherited.items())
            raise ValueError(f"PruningConfig.pruner[{index}] with the config's {names}: {error}") from None


#: A default epoch ramp too long for the run becomes a step ramp over this fraction of its optimizer steps.
FITTED_RAMP_FRACTION = 0.75
#: ... with this many mask updates (fewer on a run with fewer steps).
FITTED_RAMP_UPDATES = 10


def fitted_to_run(pruners: list[Pruner], max_epochs: int, max_steps: int) -> list[Pruner]:
    """The pruners with ramps that finish within a run of ``max_epochs`` epochs and ``max_steps`` optimizer steps.

    A ramp nobody set (``epoch_range`` left None in the pruner and the config) that does not finish in time
    becomes a step ramp over the first ``FITTED_RAMP_FRACTION`` of the run; a ramp someone set that does not
    finish raises a ``ValueError`` naming the fix, before any training.
    """
    fitted = []
    for index, pruner in enumerate(pruners):
        epoch_range = cast(list[int], pruner.epoch_range)  # a Pruner fills it in when left None
        if pruner.prune_type == "PatternLock":
            fitted.append(pruner)
        elif pruner.step_range is not None:
            if pruner.step_range[1] > max_steps:
                raise ValueError(
                    f"PruningConfig.pruner[{index}].step_range={pruner.step_range} ends after the run's last "
                    f"optimizer step ({max_steps}): the target would not be reached; end step_range at most at "
                    f"{max_steps}, or raise max_steps / num_train_epochs"
                )
            fitted.append(pruner)
        elif epoch_range[1] < max_epochs:  # the target is reached at the start of the last ramp epoch
            fitted.append(pruner)
        elif "epoch_range" in pruner.inherited_fields:
            last = max(1, int(FITTED_RAMP_FRACTION * max_steps))
            frequency = max(1, last // FITTED_RAMP_UPDATES)
            fitted.append(dataclasses.replace(pruner, step_range=[0, last], update_frequency=frequency))
        else:
            raise ValueError(
                f"PruningConfig.pruner[{index}].epoch_range={epoch_range} does not finish in this run of "
                f"{max_epochs} epoch(s) ({max_steps} optimizer steps; the target is reached at the start of epoch "
                f"{epoch_range[1]}): end epoch_range at most at {max_epochs - 1}, raise num_train_epochs to "
                f"{epoch_range[1] + 1}, give step_range=[first, last] in optimizer steps, or leave "
                "epoch_range as None to have the ramp fitted to the run"
            )
    return fitted


def _as_pruner_list(pruners: Union[Pruner, list[Pruner]]) -> list[Pruner]:
    pruner_list = [pruners] if isinstance(pruners, Pruner) else list(pruners)
    if not pruner_list:
        raise ValueError("PruningConfig.pruner is empty: give at least one Pruner, or None for the default")
    for index, pruner in enumerate(pruner_list):
        if not isinstance(pruner, Pruner):
            raise ValueError(f"PruningConfig.pruner[{index}] must be a Pruner, got {type(pruner).__name__}")
    return pruner_list
